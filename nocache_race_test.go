package krules_test

import (
	"context"
	"errors"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// gateStore holds a direct Set or Delete after it has written to the store
// and before it returns, while the test makes a cached write on the same
// handle: the window of the NoCache-vs-cached race, opened on purpose.
type gateStore struct {
	storage.Backend
	armed   bool          // the next direct Set/Delete/Store blocks (set before the call, read by it)
	entered chan struct{} // closed when the blocked call has written
	release chan struct{} // closed by the test to let it return
}

func newGateStore() *gateStore {
	return &gateStore{Backend: memory.New(), entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gateStore) gate() {
	if g.armed {
		g.armed = false
		close(g.entered)
		<-g.release
	}
}

func (g *gateStore) Set(ctx context.Context, name string, k storage.Key, m storage.Mutation) (any, any, error) {
	nv, old, err := g.Backend.Set(ctx, name, k, m)
	g.gate()
	return nv, old, err
}

// Store gates too: the NoCache Set of a plain value on a WriteOnly handle
// is a blind Store.
func (g *gateStore) Store(ctx context.Context, name string, b storage.Batch) error {
	err := g.Backend.Store(ctx, name, b)
	g.gate()
	return err
}

func (g *gateStore) Delete(ctx context.Context, name string, k storage.Key) (any, error) {
	old, err := g.Backend.Delete(ctx, name, k)
	g.gate()
	return old, err
}

// stored reads prop as the store holds it (nil, false when missing).
func stored(t *testing.T, b storage.Backend, subject, prop string) (any, bool) {
	t.Helper()
	v, err := b.Get(ctx, subject, storage.Key{Kind: storage.Default, Name: prop})
	if errors.Is(err, storage.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// TestNoCacheWriteKeepsCachedWriteMadeInFlight: a cached write of P made on
// the handle while a NoCache write of P on the same handle is between its
// store write and its return is later than the NoCache write, so it stays
// pending and Store writes it.
func TestNoCacheWriteKeepsCachedWriteMadeInFlight(t *testing.T) {
	type cachedWrite struct {
		name string
		do   func(s *krules.Subject) error
		want any // the value after Store; nil: deleted
	}
	cached := []cachedWrite{
		{"set", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", "cached"); return err }, "cached"},
		{"op", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", krules.Inc(5)); return err }, nil},
		{"delete", func(s *krules.Subject) error { return s.Delete(ctx, "p") }, nil},
	}
	direct := []struct {
		name string
		do   func(s *krules.Subject) error
	}{
		{"direct-set", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", int64(100), krules.NoCache()); return err }},
		{"direct-delete", func(s *krules.Subject) error { return s.Delete(ctx, "p", krules.NoCache()) }},
	}
	for _, d := range direct {
		for _, c := range cached {
			t.Run(d.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				g := newGateStore()
				app, _ := newApp(t, krules.WithStorage(g))
				if _, _, err := app.Subject("s", krules.NoCache()).Set(ctx, "p", int64(1)); err != nil {
					t.Fatal(err)
				}
				s := app.Subject("s")
				if _, err := s.Get(ctx, "p"); err != nil { // load the cache: p = 1, clean
					t.Fatal(err)
				}
				g.armed = true
				done := make(chan error, 1)
				go func() { done <- d.do(s) }()
				<-g.entered // the direct write is in the store, not yet back
				if err := c.do(s); err != nil {
					t.Fatal(err)
				}
				// An op applies to the cached value (1), read before the direct write patched anything.
				want := c.want
				if c.name == "op" {
					want = int64(6)
				}
				close(g.release)
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				v, err := s.Get(ctx, "p")
				switch {
				case want == nil && !errors.Is(err, krules.ErrNotFound):
					t.Fatalf("cached read after the direct write = %v, %v; want the pending delete", v, err)
				case want != nil && v != want:
					t.Fatalf("cached read after the direct write = %v, %v; want the pending %v", v, err, want)
				}
				if err := s.Store(ctx); err != nil {
					t.Fatal(err)
				}
				sv, ok := stored(t, g.Backend, "s", "p")
				if want == nil && ok || want != nil && sv != want {
					t.Fatalf("stored p = %v (present %v) after Store; want %v: the cached write was lost", sv, ok, want)
				}
			})
		}
	}
	t.Run("writeonly", func(t *testing.T) {
		t.Parallel()
		g := newGateStore()
		app, _ := newApp(t, krules.WithStorage(g))
		s := app.Subject("s", krules.WriteOnly())
		g.armed = true
		done := make(chan error, 1)
		go func() { _, _, err := s.Set(ctx, "p", int64(100), krules.NoCache()); done <- err }()
		<-g.entered
		if _, _, err := s.Set(ctx, "p", "blind"); err != nil { // unloaded cached write
			t.Fatal(err)
		}
		close(g.release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := s.Store(ctx); err != nil {
			t.Fatal(err)
		}
		if sv, _ := stored(t, g.Backend, "s", "p"); sv != "blind" {
			t.Fatalf("stored p = %v, want the blind write made in flight", sv)
		}
	})
}

// TestNoCacheWriteSupersedesEarlierCachedWrite: a NoCache write replaces a
// cached change of the same property made before it, so Store does not
// write the older value over it.
func TestNoCacheWriteSupersedesEarlierCachedWrite(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cached func(s *krules.Subject) error
	}{
		{"set", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", "cached"); return err }},
		{"op", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", krules.Inc(5)); return err }},
		{"delete", func(s *krules.Subject) error { return s.Delete(ctx, "p") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			app, _ := newApp(t)
			if _, _, err := app.Subject("s").Set(ctx, "p", int64(1), krules.NoCache()); err != nil {
				t.Fatal(err)
			}
			s := app.Subject("s")
			if err := tc.cached(s); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.Set(ctx, "q", "other"); err != nil { // a second pending change keeps the cache
				t.Fatal(err)
			}
			if _, _, err := s.Set(ctx, "p", int64(100), krules.NoCache()); err != nil {
				t.Fatal(err)
			}
			if v, err := s.Get(ctx, "p"); v != int64(100) {
				t.Fatalf("cached read = %v, %v; want the NoCache write's 100", v, err)
			}
			if err := s.Store(ctx); err != nil {
				t.Fatal(err)
			}
			if v, _ := stored(t, app.Storage(), "s", "p"); v != int64(100) {
				t.Fatalf("stored p = %v after Store; want 100 (the earlier cached write must not win)", v)
			}
			if v, _ := stored(t, app.Storage(), "s", "q"); v != "other" {
				t.Fatalf("stored q = %v, want the other pending change", v)
			}
		})
	}
}
