package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// TestRunMemory runs the suite on the reference backend.
func TestRunMemory(t *testing.T) {
	Run(t, func(t *testing.T) storage.Backend { return memory.New() })
}

// TestRunFileStore runs the suite on the file store, which round-trips
// every value through JSON text like the persistent backends. Each subtest
// has a directory of its own, so up to 4 run at once.
func TestRunFileStore(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: every operation rewrites a file")
	}
	RunConfig(t, Config{Parallel: 4, ScaleDown: 25, New: func(t *testing.T) storage.Backend { return openFileStore(t, randomName("st_"), false) }})
}

// TestRunParallel: with Config.Parallel the subtests overlap (more than
// one backend from New is open at a time, never more than Parallel), and
// without it they run one after another.
func TestRunParallel(t *testing.T) {
	for _, parallel := range []int{0, 4} {
		t.Run(fmt.Sprintf("Parallel=%d", parallel), func(t *testing.T) {
			var mu sync.Mutex
			open, most, total := 0, 0, 0
			RunConfig(t, Config{Parallel: parallel, New: func(t *testing.T) storage.Backend {
				mu.Lock()
				defer mu.Unlock()
				open++
				total++
				most = max(most, open)
				t.Cleanup(func() {
					mu.Lock()
					defer mu.Unlock()
					open--
				})
				return memory.New()
			}})
			switch {
			case total < len(storageTests)+len(subjectTests):
				t.Errorf("New was called %d times, want one per subtest (%d)", total, len(storageTests)+len(subjectTests))
			case parallel <= 1 && most != 1:
				t.Errorf("one after another: %d backends were open at once, want 1", most)
			case parallel > 1 && (most < 2 || most > parallel):
				t.Errorf("Parallel=%d: at most %d backends were open at once, want 2..%d", parallel, most, parallel)
			}
		})
	}
}

// countingSets wraps the memory backend and counts the update-function
// Sets of subjects whose name ends with suffix.
type countingSets struct {
	*memory.Backend
	suffix string
	n      *atomic.Int64
}

func (c countingSets) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (any, any, error) {
	if m.Func != nil && strings.HasSuffix(subject, c.suffix) {
		c.n.Add(1)
	}
	return c.Backend.Set(ctx, subject, k, m)
}

// TestRunScaleDown: Config.ScaleDown divides the rounds of the concurrent
// subtests (Concurrency/FuncExactTotal makes 2 × 32 × updates update-function
// Sets), keeping at least 5 updates per goroutine.
func TestRunScaleDown(t *testing.T) {
	full := 500
	switch {
	case testing.Short():
		full = 50
	case testenv.Race:
		full = 100
	}
	for _, scale := range []int{0, 20, 1000} {
		t.Run(fmt.Sprintf("ScaleDown=%d", scale), func(t *testing.T) {
			var n atomic.Int64
			RunConfig(t, Config{Parallel: 4, ScaleDown: scale, New: func(t *testing.T) storage.Backend {
				return countingSets{Backend: memory.New(), suffix: "-conc-func", n: &n}
			}})
			want := 2 * 32 * max(full/max(scale, 1), 5)
			if got := n.Load(); got != int64(want) {
				t.Errorf("ScaleDown=%d: Concurrency/FuncExactTotal made %d update-function Sets, want %d", scale, got, want)
			}
		})
	}
}

// broken wraps the memory backend and breaks one rule of the contract.
type broken struct {
	*memory.Backend
	variant string
}

func toFloats(v any) any {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case []any:
		for i := range x {
			x[i] = toFloats(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = toFloats(x[k])
		}
	}
	return v
}

func (b *broken) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (any, any, error) {
	switch b.variant {
	case "nonatomic-set": // read, compute, write: lost updates
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		old, err := b.Backend.Get(ctx, subject, k)
		exists := err == nil
		if !exists {
			old = nil
		}
		runtime.Gosched() // widen the race window
		nv, err := m.Apply(storage.Clone(old), exists)
		if err != nil {
			return nil, nil, err
		}
		err = b.Backend.Store(ctx, subject, storage.Batch{Puts: []storage.Write{{Key: k, Value: nv}}})
		return nv, old, err
	case "ignores-ctx":
		ctx = context.Background()
	case "func-error-writes":
		nv, ov, err := b.Backend.Set(ctx, subject, k, m)
		if err != nil {
			b.Backend.Set(ctx, subject, k, storage.Mutation{Value: nil})
		}
		return nv, ov, err
	case "kinds-shared":
		k.Kind = storage.Default
	}
	return b.Backend.Set(ctx, subject, k, m)
}

func (b *broken) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	switch b.variant {
	case "float-numbers":
		v, err := b.Backend.Get(ctx, subject, k)
		return toFloats(v), err
	case "ignores-ctx":
		ctx = context.Background()
	case "kinds-shared":
		k.Kind = storage.Default
	}
	return b.Backend.Get(ctx, subject, k)
}

func (b *broken) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	switch b.variant {
	case "float-numbers":
		snap, err := b.Backend.Load(ctx, subject)
		for _, ps := range [][]storage.Property{snap.Props, snap.Ext} {
			for i := range ps {
				ps[i].Value = toFloats(ps[i].Value)
			}
		}
		return snap, err
	case "ignores-ctx":
		ctx = context.Background()
	}
	return b.Backend.Load(ctx, subject)
}

func (b *broken) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	switch b.variant {
	case "delete-missing-ok":
		v, err := b.Backend.Delete(ctx, subject, k)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		return v, err
	case "ignores-ctx":
		ctx = context.Background()
	case "kinds-shared":
		k.Kind = storage.Default
	}
	return b.Backend.Delete(ctx, subject, k)
}

func (b *broken) Store(ctx context.Context, subject string, batch storage.Batch) error {
	switch b.variant {
	case "puts-then-deletes":
		if err := b.Backend.Store(ctx, subject, storage.Batch{Puts: batch.Puts}); err != nil {
			return err
		}
		return b.Backend.Store(ctx, subject, storage.Batch{Deletes: batch.Deletes})
	case "ignores-ctx":
		ctx = context.Background()
	}
	return b.Backend.Store(ctx, subject, batch)
}

func (b *broken) Flush(ctx context.Context, subject string) error {
	switch b.variant {
	case "glob-flush": // treats the name as a glob pattern, like an unescaped SCAN MATCH
		var names []string
		for n, err := range b.Backend.List(ctx, "") {
			if err != nil {
				return err
			}
			if ok, _ := path.Match(subject, n); ok || n == subject {
				names = append(names, n)
			}
		}
		for _, n := range names {
			if err := b.Backend.Flush(ctx, n); err != nil {
				return err
			}
		}
		return nil
	case "ignores-ctx":
		ctx = context.Background()
	}
	return b.Backend.Flush(ctx, subject)
}

const envBrokenVariant = "KRULES_STORAGETEST_BROKEN_VARIANT"

// TestBrokenBackend is run only by TestRunDetectsBrokenBackends, in its own
// process, with one broken variant.
func TestBrokenBackend(t *testing.T) {
	variant := os.Getenv(envBrokenVariant)
	if variant == "" {
		t.Skip("run by TestRunDetectsBrokenBackends")
	}
	parallel, _ := strconv.Atoi(os.Getenv(envBrokenParallel))
	RunConfig(t, Config{Parallel: parallel, New: func(t *testing.T) storage.Backend { return &broken{Backend: memory.New(), variant: variant} }})
}

// envBrokenParallel is Config.Parallel for TestBrokenBackend.
const envBrokenParallel = "KRULES_STORAGETEST_BROKEN_PARALLEL"

// TestRunDetectsBrokenBackends proves the suite can fail: each broken
// variant of the memory backend must fail the subtest that covers its rule,
// with the subtests run one after another and with Config.Parallel.
func TestRunDetectsBrokenBackends(t *testing.T) {
	if os.Getenv(envBrokenVariant) != "" || os.Getenv(envChild) != "" {
		t.Skip("nested run")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		variant string
		fails   []string // subtests that must fail
		anyOf   bool     // one of fails is enough (race-dependent detection)
	}{
		{"nonatomic-set", []string{"Concurrency/FuncExactTotal", "Concurrency/OpIncExactTotal", "Concurrency/OtherPropertiesNotLost"}, true},
		{"float-numbers", []string{"Values/RoundTrip", "Set/ReturnsNewAndOld", "Op/IncExactUpTo2^53", "Subject/CacheStoreReload", "Subject/ValuesAfterReload"}, false},
		{"ignores-ctx", []string{"Context/Cancelled"}, false},
		{"func-error-writes", []string{"Func/ErrorWritesNothing", "Func/PanicWritesNothing"}, false},
		{"kinds-shared", []string{"Kinds/IndependentNamespaces", "Get/MissingIsErrNotFound"}, false},
		{"delete-missing-ok", []string{"Delete/ReturnsOldValue"}, false},
		{"puts-then-deletes", []string{"Store/DeletesThenPuts", "Store/Atomic"}, false},
		{"glob-flush", []string{"Names/Subjects"}, false},
	} {
		for _, parallel := range []int{0, 8} {
			t.Run(fmt.Sprintf("%s/Parallel=%d", c.variant, parallel), func(t *testing.T) {
				t.Parallel()
				cmd := exec.CommandContext(t.Context(), exe, "-test.run=^TestBrokenBackend$", "-test.count=1", "-test.short", "-test.v")
				cmd.Env = append(os.Environ(), envBrokenVariant+"="+c.variant, envBrokenParallel+"="+strconv.Itoa(parallel))
				out, err := cmd.CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) {
					t.Fatalf("the suite passed a backend broken by %q (err %v)", c.variant, err)
				}
				failed := 0
				for _, sub := range c.fails {
					if bytes.Contains(out, []byte("--- FAIL: TestBrokenBackend/"+sub+" ")) {
						failed++
					} else if !c.anyOf {
						t.Errorf("broken backend %q: subtest %s did not fail; output:\n%s", c.variant, sub, tail(out, 60))
					}
				}
				if c.anyOf && failed == 0 {
					t.Errorf("broken backend %q: none of the subtests %q failed; output:\n%s", c.variant, c.fails, tail(out, 60))
				}
				if bytes.Contains(out, []byte("panic:")) {
					t.Errorf("broken backend %q made the suite panic:\n%s", c.variant, tail(out, 60))
				}
			})
		}
	}
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
