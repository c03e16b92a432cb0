package bolt_test

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestConformance runs the suite on NoSync files: the suite checks
// atomicity, isolation and value identity, not durability, and one fsync per
// write made its 32 × 500 concurrency subtests take minutes on a loaded
// machine. Durability keeps its own fsync'd tests (TestRestartInNewProcess,
// TestSIGKILLMidStoreLoop, TestDurableConcurrentIncrements).
//
// Each subtest has its own file, so up to fileParallel of them run at once.
func TestConformance(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{
		Parallel: fileParallel,
		New: func(t *testing.T) storage.Backend {
			b, err := bolt.Open(filepath.Join(t.TempDir(), "conformance.db"), bolt.Config{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		RawPut: func(t *testing.T, b storage.Backend, subject string, k storage.Key, raw string) bool {
			if err := bolt.RawPut(b.(*bolt.Backend), subject, k, raw); err != nil {
				t.Fatal(err)
			}
			return true
		},
	})
}

// fileParallel is storagetest.Config.Parallel for the suites here: every
// subtest has a file of its own, and bbolt serialises the writers of one
// file, so subtests side by side use both cores of a small machine.
const fileParallel = 4

// TestDurableConcurrentIncrements keeps a concurrent workload on a durable
// (fsync'd) file: 8 goroutines × 50 OpInc, exact total after a reopen.
func TestDurableConcurrentIncrements(t *testing.T) {
	path := filepath.Join(t.TempDir(), "durable.db")
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	k := storage.Key{Kind: storage.Default, Name: "n"}
	inc, err := storage.NewOp(storage.OpInc, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Op: inc}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	b.Close()
	b = open(t, path)
	if v, err := b.Get(ctx, "s", k); err != nil || v != int64(400) {
		t.Fatalf("after reopen: (%v, %v), want 400", v, err)
	}
}

// NoSync changes only bbolt's fsync; its data survives a clean reopen.
func TestNoSyncReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nosync.db")
	b, err := bolt.Open(path, bolt.Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	k := storage.Key{Kind: storage.Default, Name: "n"}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: int64(3)}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = open(t, path)
	if v, err := b.Get(ctx, "s", k); err != nil || v != int64(3) {
		t.Fatalf("after reopen: %v %v", v, err)
	}
}

// TestIdempotencyConformance runs the idempotency-key conformance tests.
func TestIdempotencyConformance(t *testing.T) {
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
		b, err := bolt.Open(filepath.Join(t.TempDir(), "idem.db"), bolt.Config{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	})
}
