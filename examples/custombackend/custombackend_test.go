//go:build unix

package custombackend_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/examples/custombackend"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/storagetest"
)

// Step 5: the conformance suite, on a fresh directory per subtest. The
// directories are independent, so up to 4 subtests run at once
// (storagetest.Config.Parallel). Every write takes a mutex and a flock(2)
// and rewrites a file, so the writers are serialised and the concurrent subtests
// make a quarter of their rounds (storagetest.Config.ScaleDown); the
// assertions are the same.
func TestConformance(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{Parallel: 4, ScaleDown: 4, New: func(t *testing.T) storage.Backend {
		b, err := custombackend.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}})
}

// contentionDirEnv hands the parent's directory to the child processes of
// TestContention (they inherit the environment).
const contentionDirEnv = "CUSTOMBACKEND_CONTENTION_DIR"

// Step 6: the store is Shared, so prove it across processes: 2 processes ×
// 8 goroutines × 100 updates of one subject.
func TestContention(t *testing.T) {
	if os.Getenv(contentionDirEnv) == "" { // the parent
		t.Setenv(contentionDirEnv, t.TempDir())
	}
	dir := os.Getenv(contentionDirEnv)
	storagetest.Contention(t, storagetest.ContentionConfig{
		Procs: 2, Goroutines: 8, Updates: 100,
		Open: func(t testing.TB, namespace string) storage.Backend {
			b, err := custombackend.Open(filepath.Join(dir, namespace))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
	})
}

// Step 7: an App on the backend.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "custombackend")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	backend, err := custombackend.Open(dir)
	if err != nil {
		panic(err)
	}
	app := krules.New(krules.WithStorage(backend))
	user := app.Subject("user-123")
	user.Set(ctx, "email", "john@example.com")
	user.Set(ctx, "logins", 0)
	if err := user.Store(ctx); err != nil {
		panic(err)
	}
	user.Set(ctx, "logins", krules.Inc(1), krules.NoCache()) // one locked read-modify-write

	// Another App on the same directory (another process would do the same).
	backend2, _ := custombackend.Open(dir)
	other := krules.New(krules.WithStorage(backend2)).Subject("user-123")
	email, _ := other.Get(ctx, "email")
	logins, _ := other.Get(ctx, "logins")
	fmt.Println(email, logins)
	// Output: john@example.com 1
}
