package sqlite_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/sqlite"
	"github.com/krules-go/krules/storage/storagetest"
)

// open opens a backend on path, closed when t ends.
func open(t testing.TB, path string, cfg sqlite.Config) *sqlite.Backend {
	t.Helper()
	b, err := sqlite.Open(context.Background(), path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestConformance runs the storage contract on a fresh file per subtest,
// up to 4 subtests at once (their files are independent; SQLite serialises
// the writers of one file, so one subtest alone keeps one core busy). Under
// the race detector the concurrent subtests make a quarter of their rounds
// (raceScaleDown): the Backend serialises this process's writers with one
// mutex, so more rounds repeat the same interleavings, and each write costs
// about 1 ms of CPU in modernc's translated C under the race detector.
// TestContention checks exact totals across processes, where SQLite's own
// locking serialises the writers.
func TestConformance(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{
		Parallel:  4,
		ScaleDown: raceScaleDown(),
		New: func(t *testing.T) storage.Backend {
			return open(t, filepath.Join(t.TempDir(), "conformance.db"), sqlite.Config{})
		},
		RawPut: rawPut,
	})
}

// contentionDirEnv passes the parent's temporary directory to the child
// processes of TestContention (they inherit the environment).
const contentionDirEnv = "KRULES_SQLITE_TEST_CONTENTION_DIR"

// TestContention: 2 processes × 8 goroutines × 200 updates (100 under the
// race detector; the totals are exact either way) of one subject in one
// file, with update functions and with Inc, beside writers of other
// properties.
func TestContention(t *testing.T) {
	updates := 200
	if testenv.Race {
		updates = 100
	}
	if os.Getenv(contentionDirEnv) == "" {
		// Parent: the directory outlives the children and is removed at the end.
		t.Setenv(contentionDirEnv, t.TempDir())
	}
	dir := os.Getenv(contentionDirEnv)
	storagetest.Contention(t, storagetest.ContentionConfig{
		Procs: 2, Goroutines: 8, Updates: updates,
		Open: func(t testing.TB, namespace string) storage.Backend {
			return open(t, filepath.Join(dir, namespace+".db"), sqlite.Config{})
		},
	})
}

// rawPut plants a property's JSON text as another writer could: spliced
// into the row's JSON column text as is (SQLite's JSON functions would
// rewrite NaN and Infinity).
func rawPut(t *testing.T, b storage.Backend, subject string, k storage.Key, raw string) bool {
	db := b.(*sqlite.Backend).DB()
	col := "properties"
	if k.Kind == storage.Extended {
		col = "ext_properties"
	}
	ctx := t.Context()
	if _, err := db.ExecContext(ctx, `INSERT INTO subjects (subject_name) VALUES (?1) ON CONFLICT (subject_name) DO NOTHING`, subject); err != nil {
		t.Fatal(err)
	}
	var cur string
	if err := db.QueryRowContext(ctx, `SELECT `+col+` FROM subjects WHERE subject_name = ?1`, subject).Scan(&cur); err != nil {
		t.Fatal(err)
	}
	key, _ := json.Marshal(k.Name)
	i := strings.IndexByte(cur, '{') + 1
	sep := ","
	if strings.HasPrefix(strings.TrimSpace(cur[i:]), "}") {
		sep = ""
	}
	text := cur[:i] + string(key) + ":" + raw + sep + cur[i:]
	if _, err := db.ExecContext(ctx, `UPDATE subjects SET `+col+` = ?2 WHERE subject_name = ?1`, subject, text); err != nil {
		t.Fatal(err)
	}
	return true
}

// TestIdempotencyConformance runs the idempotency-key conformance tests.
func TestIdempotencyConformance(t *testing.T) {
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
		return open(t, filepath.Join(t.TempDir(), "idem.db"), sqlite.Config{})
	})
}

// raceScaleDown is storagetest.Config.ScaleDown for the suites here that
// run a quarter of the concurrent rounds under the race detector, where
// every write costs an order of magnitude more; without it (CI's full-size
// step) they run the full counts.
func raceScaleDown() int {
	if testenv.Race {
		return 4
	}
	return 1
}
