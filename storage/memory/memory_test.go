package memory_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

func names(ps []storage.Property) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}

func pk(n string) storage.Key { return storage.Key{Kind: storage.Default, Name: n} }
func ek(n string) storage.Key { return storage.Key{Kind: storage.Extended, Name: n} }

// TestInsertionOrder: the memory backend keeps insertion order (which the
// conformance suite does not require of every backend).
func TestInsertionOrder(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	for _, n := range []string{"c", "a", "b"} {
		if _, _, err := b.Set(ctx, "s", pk(n), storage.Mutation{Value: n}); err != nil {
			t.Fatal(err)
		}
	}
	err := b.Store(ctx, "s", storage.Batch{
		Deletes: []storage.Key{pk("a")},
		Puts: []storage.Write{
			{Key: pk("d"), Value: int64(1)},
			{Key: pk("c"), Value: "c2"}, // update: keeps its place
			{Key: pk("a"), Value: "a2"}, // deleted then put: goes last
			{Key: ek("z"), Value: true},
			{Key: ek("y"), Value: true},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := b.Load(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(snap.Props), []string{"c", "b", "d", "a"}; !slices.Equal(got, want) {
		t.Errorf("Load order = %q, want %q", got, want)
	}
	if got, want := names(snap.Ext), []string{"z", "y"}; !slices.Equal(got, want) {
		t.Errorf("extended order = %q, want %q", got, want)
	}
	ext, err := b.ExtProps(ctx, "s")
	if err != nil || !slices.Equal(names(ext), []string{"z", "y"}) {
		t.Errorf("ExtProps = (%q, %v), want ([z y], nil)", names(ext), err)
	}
}

func TestInvalidKind(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	bad := storage.Key{Kind: 'x', Name: "a"}
	if _, _, err := b.Set(ctx, "s", bad, storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("Set with kind 'x' = %v, want ErrInvalidName", err)
	}
	if _, err := b.Get(ctx, "s", bad); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("Get with kind 'x' = %v, want ErrInvalidName", err)
	}
	if _, err := b.Delete(ctx, "s", bad); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("Delete with kind 'x' = %v, want ErrInvalidName", err)
	}
	err := b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{{Key: pk("ok"), Value: int64(1)}, {Key: bad, Value: int64(1)}}})
	if !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("Store with kind 'x' = %v, want ErrInvalidName", err)
	}
	snap, _ := b.Load(ctx, "s")
	if len(snap.Props)+len(snap.Ext) != 0 {
		t.Errorf("a refused Store wrote %+v", snap)
	}
}

func TestListSortedAndPrefixed(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	for _, s := range []string{"user:2", "order:1", "user:10", "user:1", "user"} {
		if _, _, err := b.Set(ctx, s, pk("v"), storage.Mutation{Value: int64(1)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for n, err := range b.List(ctx, "user:") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	if want := []string{"user:1", "user:10", "user:2"}; !slices.Equal(got, want) {
		t.Errorf("List(user:) = %q, want %q", got, want)
	}
}

func TestCapabilities(t *testing.T) {
	c := memory.New().Capabilities()
	if c.Persistent || c.Shared || !c.ServerSideOps {
		t.Errorf("Capabilities = %+v, want only ServerSideOps", c)
	}
}

// TestFlushDuringUpdates: Set and Get stay consistent while Flushes of the
// same subject run: when no Flush was in flight between a Set and the Get
// that follows it, the Get sees exactly the value set.
func TestFlushDuringUpdates(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	var started, finished atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			started.Add(1)
			if err := b.Flush(ctx, "s"); err != nil {
				t.Error(err)
			}
			finished.Add(1)
		}
	})
	checked := 0
	for i := range int64(20000) {
		s0 := started.Load()
		quiet := s0 == finished.Load()
		if _, _, err := b.Set(ctx, "s", pk("n"), storage.Mutation{Value: i}); err != nil {
			t.Fatal(err)
		}
		v, err := b.Get(ctx, "s", pk("n"))
		if !quiet || started.Load() != s0 {
			continue // a Flush overlapped: either outcome is fine
		}
		checked++
		if err != nil || v != i {
			t.Fatalf("Set(%d) then Get with no Flush in between = (%v, %v): the write went to a flushed subject", i, v, err)
		}
	}
	close(stop)
	wg.Wait()
	if checked == 0 {
		t.Log("no Set ran without an overlapping Flush; nothing checked")
	}
}

func ExampleBackend() {
	ctx := context.Background()
	b := memory.New()
	b.Set(ctx, "user-1", storage.Key{Kind: storage.Default, Name: "name"}, storage.Mutation{Value: "Ada"})
	inc, _ := storage.NewOp(storage.OpInc, 1)
	b.Set(ctx, "user-1", storage.Key{Kind: storage.Default, Name: "logins"}, storage.Mutation{Op: inc})
	nv, old, _ := b.Set(ctx, "user-1", storage.Key{Kind: storage.Default, Name: "logins"}, storage.Mutation{Op: inc})
	fmt.Println(nv, old)
	snap, _ := b.Load(ctx, "user-1")
	for _, p := range snap.Props {
		fmt.Printf("%s=%v (%T)\n", p.Name, p.Value, p.Value)
	}
	// Output:
	// 2 1
	// name=Ada (string)
	// logins=2 (int64)
}
