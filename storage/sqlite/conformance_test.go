package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

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

// TestConformance runs the storage contract on a fresh file per subtest.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return open(t, filepath.Join(t.TempDir(), "conformance.db"), sqlite.Config{})
	})
}

// contentionDirEnv passes the parent's temporary directory to the child
// processes of TestContention (they inherit the environment).
const contentionDirEnv = "KRULES_SQLITE_TEST_CONTENTION_DIR"

// TestContention: 2 processes × 8 goroutines × 200 updates of one subject in
// one file, with update functions and with Inc, beside writers of other
// properties.
func TestContention(t *testing.T) {
	if os.Getenv(contentionDirEnv) == "" {
		// Parent: the directory outlives the children and is removed at the end.
		t.Setenv(contentionDirEnv, t.TempDir())
	}
	dir := os.Getenv(contentionDirEnv)
	storagetest.Contention(t, storagetest.ContentionConfig{
		Procs: 2, Goroutines: 8, Updates: 200,
		Open: func(t testing.TB, namespace string) storage.Backend {
			return open(t, filepath.Join(dir, namespace+".db"), sqlite.Config{})
		},
	})
}

// TestIdempotencyConformance runs the idempotency-key conformance tests.
func TestIdempotencyConformance(t *testing.T) {
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
		return open(t, filepath.Join(t.TempDir(), "idem.db"), sqlite.Config{})
	})
}
