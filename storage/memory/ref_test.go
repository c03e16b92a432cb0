package memory_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"
	"weak"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

func TestRefActsAsTheBackend(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	var r memory.Ref
	if r.Bound() {
		t.Fatal("the zero Ref reports bound")
	}
	b.InitRef(&r, "s")
	if !r.Bound() {
		t.Fatal("InitRef did not bind")
	}
	if _, err := r.Get(ctx, pk("x")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get on a missing subject = %v, want ErrNotFound", err)
	}
	if nv, old, err := r.Set(ctx, pk("x"), storage.Mutation{Value: int64(1)}); err != nil || nv != int64(1) || old != nil {
		t.Fatalf("Set = %v, %v, %v", nv, old, err)
	}
	if v, err := b.Get(ctx, "s", pk("x")); err != nil || v != int64(1) {
		t.Fatalf("the backend sees %v, %v after the Ref's Set", v, err)
	}
	// The last property deleted: the subject is gone, and the Ref's next
	// Set makes a new entry that the backend (and List) see.
	if old, err := r.Delete(ctx, pk("x")); err != nil || old != int64(1) {
		t.Fatalf("Delete = %v, %v", old, err)
	}
	if _, err := r.Delete(ctx, pk("x")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	if _, _, err := r.Set(ctx, pk("y"), storage.Mutation{Value: "a"}); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, "s", pk("y")); err != nil || v != "a" {
		t.Fatalf("after the subject was dropped the Ref wrote %v, %v where the backend does not see it", v, err)
	}
	// Flushed through the backend: the Ref re-resolves.
	if err := b.Flush(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, pk("y")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get after Flush = %v, want ErrNotFound", err)
	}
	if _, _, err := r.Set(ctx, pk("z"), storage.Mutation{Value: true}); err != nil {
		t.Fatal(err)
	}
	snap, err := b.Load(ctx, "s")
	if err != nil || len(snap.Props) != 1 || snap.Props[0].Name != "z" {
		t.Fatalf("Load after Flush and the Ref's Set = %v, %v", snap.Props, err)
	}
	// Bad input and a cancelled ctx: an error, nothing written.
	if _, _, err := r.Set(ctx, storage.Key{Kind: 9, Name: "w"}, storage.Mutation{Value: 1}); !errors.Is(err, storage.ErrInvalidName) {
		t.Fatalf("Set with a bad kind = %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := r.Set(cctx, pk("w"), storage.Mutation{Value: int64(1)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Set with a cancelled ctx = %v", err)
	}
	if _, err := b.Get(ctx, "s", pk("w")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a refused Set wrote: %v", err)
	}
}

// TestRefConcurrentWithFlush: Refs incrementing while the subject is
// flushed are race-free (run with -race), and a Ref whose entry was
// flushed writes where the backend reads.
func TestRefConcurrentWithFlush(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	inc, err := storage.NewOp(storage.OpInc, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r memory.Ref
			b.InitRef(&r, "s")
			for range 300 {
				if _, _, err := r.Set(ctx, pk("n"), storage.Mutation{Op: inc}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 50 {
		if err := b.Flush(ctx, "s"); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := b.Flush(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	var r memory.Ref
	b.InitRef(&r, "s")
	for range 10 {
		if _, _, err := r.Set(ctx, pk("n"), storage.Mutation{Op: inc}); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := b.Get(ctx, "s", pk("n")); err != nil || v != int64(10) {
		t.Fatalf("n = %v, %v after 10 increments following the last Flush, want 10", v, err)
	}
}

// TestRefDoesNotKeepAFlushedSubjectsData: a Ref that is not called again
// after its subject is flushed does not keep the subject's
// properties reachable.
func TestRefDoesNotKeepAFlushedSubjectsData(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		gone func(b *memory.Backend, r *memory.Ref) error
	}{
		{"flush", func(b *memory.Backend, _ *memory.Ref) error { return b.Flush(ctx, "s") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.New()
			var r memory.Ref
			b.InitRef(&r, "s")
			big := strings.Repeat("x", 1<<20) // stored as is: strings are not copied
			wp := weak.Make(unsafe.StringData(big))
			if _, _, err := r.Set(ctx, pk("big"), storage.Mutation{Value: big}); err != nil {
				t.Fatal(err)
			}
			big = ""
			if err := tc.gone(b, &r); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				runtime.GC()
			}
			if wp.Value() != nil {
				t.Fatal("the flushed subject's value is still reachable through the Ref")
			}
			runtime.KeepAlive(&r)
			runtime.KeepAlive(b)
		})
	}
}
