package postgres_test

import (
	"os"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestConformance runs the storage conformance suite, each subtest on a
// table of its own.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, _ := newBackend(t)
		return b
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
