package postgres_test

import (
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestConformance runs the storage conformance suite, each subtest on a
// table of its own.
func TestConformance(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{
		// Each subtest has its own table and pool; the time is round trips.
		Parallel: 4,
		New: func(t *testing.T) storage.Backend {
			b, _ := newBackend(t)
			return b
		},
		RawPut: rawPut,
	})
}

// TestContention runs 2 OS processes × 16 goroutines × 300 updates (100
// under the race detector; the totals are exact either way) of update
// functions and OpInc on one subject that does not exist at the start.
func TestContention(t *testing.T) {
	updates := 300
	if testenv.Race {
		updates = 100
	}
	storagetest.Contention(t, storagetest.ContentionConfig{
		Procs:      2,
		Goroutines: 16,
		Updates:    updates,
		Open: func(t testing.TB, namespace string) storage.Backend {
			pool := testPool(t)
			// Only the parent drops the table: a child that finishes first
			// must not remove it under the other one.
			if os.Getenv("KRULES_STORAGETEST_CONTENTION") == "" {
				dropTable(t, pool, "", namespace)
			}
			b, err := postgres.New(t.Context(), pool, postgres.Config{Table: namespace})
			if err != nil {
				t.Fatalf("postgres.New: %v", err)
			}
			t.Cleanup(b.Close)
			return b
		},
	})
}

// rawPut plants a property's JSON text as another writer (Python KRules)
// would: merged into the JSONB column. JSONB itself refuses NaN, ±Infinity
// and \u0000 (22P02, 22P05): then it reports false.
func rawPut(t *testing.T, b storage.Backend, subject string, k storage.Key, raw string) bool {
	pb := b.(*postgres.Backend)
	col, other := "properties", "ext_properties"
	if k.Kind == storage.Extended {
		col, other = other, col
	}
	_, err := pb.Pool().Exec(t.Context(), `INSERT INTO `+pb.Table()+` AS s (subject_name, `+col+`, `+other+`)
		VALUES ($1::text, jsonb_build_object($2::text, $3::jsonb), '{}')
		ON CONFLICT (subject_name) DO UPDATE SET `+col+` = s.`+col+` || EXCLUDED.`+col, subject, k.Name, raw)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "22P02" || pe.Code == "22P05") {
		return false
	}
	if err != nil {
		t.Fatalf("raw put %q: %v", raw, err)
	}
	return true
}
