package krules_test

import (
	"context"
	"errors"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// getGateStore is a gateStore whose gate can also hold a direct Get after
// it has read the store and before it returns (armedGet).
type getGateStore struct {
	*gateStore
	armedGet bool
}

func (g *getGateStore) Get(ctx context.Context, name string, k storage.Key) (any, error) {
	v, err := g.gateStore.Backend.Get(ctx, name, k)
	if g.armedGet {
		g.armedGet = false
		close(g.entered)
		<-g.release
	}
	return v, err
}

// cacheMatchesStore checks that the handle's cached p is the stored p, and
// that a cached update of p made afterwards reaches the store as computed
// from the stored value.
func cacheMatchesStore(t *testing.T, s *krules.Subject, b storage.Backend, want int64) {
	t.Helper()
	if v, err := s.Get(ctx, "p"); v != want {
		t.Fatalf("cached p = %v, %v; the store holds %d", v, err, want)
	}
	if _, _, err := s.Set(ctx, "p", krules.Inc(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := stored(t, b, "s", "p"); v != want+1 {
		t.Fatalf("stored p = %v after a cached Inc(1) and Store; want %d", v, want+1)
	}
}

// TestNoCacheWriteDoesNotPatchAReloadedCache: a NoCache write of p in
// flight while the same handle stores a cached write of p and reloads must
// not patch the reloaded cache with its older value: the store holds the
// cached write, which came later.
func TestNoCacheWriteDoesNotPatchAReloadedCache(t *testing.T) {
	for _, direct := range []struct {
		name string
		do   func(s *krules.Subject) error
	}{
		{"set", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", int64(100), krules.NoCache()); return err }},
		{"delete", func(s *krules.Subject) error { return s.Delete(ctx, "p", krules.NoCache()) }},
	} {
		t.Run(direct.name, func(t *testing.T) {
			t.Parallel()
			g := newGateStore()
			app, _ := newApp(t, krules.WithStorage(g))
			if _, _, err := app.Subject("s", krules.NoCache()).Set(ctx, "p", int64(1)); err != nil {
				t.Fatal(err)
			}
			s := app.Subject("s")
			if _, err := s.Get(ctx, "p"); err != nil { // loaded: p = 1
				t.Fatal(err)
			}
			g.armed = true
			done := make(chan error, 1)
			go func() { done <- direct.do(s) }()
			<-g.entered // the direct write is in the store, not yet back
			if _, _, err := s.Set(ctx, "p", int64(7)); err != nil {
				t.Fatal(err)
			}
			if err := s.Store(ctx); err != nil { // the store now holds p = 7, written after the direct write
				t.Fatal(err)
			}
			if _, _, err := s.Set(ctx, "q", "pending"); err != nil { // reloads; a pending change keeps the cache
				t.Fatal(err)
			}
			close(g.release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			cacheMatchesStore(t, s, g.Backend, 7)
			if v, _ := stored(t, g.Backend, "s", "q"); v != "pending" {
				t.Fatalf("stored q = %v, want the pending change", v)
			}
		})
	}
}

// TestOverlappingNoCacheCallsLeaveTheCacheRight: NoCache calls on one
// handle that overlap in time (a slow read, or a slow write, and a later
// write of the same property) must not leave the cache with the value of
// the one that reached the store first.
func TestOverlappingNoCacheCallsLeaveTheCacheRight(t *testing.T) {
	for _, tc := range []struct {
		name string
		slow func(s *krules.Subject) error // gated after its store call
		get  bool                          // slow is a Get (gate the Get)
		fast func(s *krules.Subject) error // runs whole while slow is held
		want int64
	}{
		{"slow-get/set", func(s *krules.Subject) error { _, err := s.Get(ctx, "p", krules.NoCache()); return err }, true,
			func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", int64(2), krules.NoCache()); return err }, 2},
		{"slow-get/inc", func(s *krules.Subject) error { _, err := s.Get(ctx, "p", krules.NoCache()); return err }, true,
			func(s *krules.Subject) error {
				_, _, err := s.Set(ctx, "p", krules.Inc(10), krules.NoCache())
				return err
			}, 11},
		{"slow-set/set", func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", int64(5), krules.NoCache()); return err }, false,
			func(s *krules.Subject) error { _, _, err := s.Set(ctx, "p", int64(2), krules.NoCache()); return err }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := &getGateStore{gateStore: newGateStore()}
			app, _ := newApp(t, krules.WithStorage(g))
			if _, _, err := app.Subject("s", krules.NoCache()).Set(ctx, "p", int64(1)); err != nil {
				t.Fatal(err)
			}
			s := app.Subject("s")
			if _, _, err := s.Set(ctx, "q", "pending"); err != nil { // loaded (p = 1), with a pending change
				t.Fatal(err)
			}
			if tc.get {
				g.armedGet = true
			} else {
				g.armed = true
			}
			done := make(chan error, 1)
			go func() { done <- tc.slow(s) }()
			<-g.entered // the slow call has been to the store
			if err := tc.fast(s); err != nil {
				t.Fatal(err)
			}
			close(g.release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			cacheMatchesStore(t, s, g.Backend, tc.want)
		})
	}
}

// TestOverlappingNoCacheCallsKeepPendingChanges: when overlapping NoCache
// calls make the handle reload instead of patching its cache, its unsaved
// changes (a put and a delete) survive the reload, and Store writes them.
// It guards the unload/reload path (loadLocked's merge of pending deletes),
// not the stale check itself, which the two tests above cover.
func TestOverlappingNoCacheCallsKeepPendingChanges(t *testing.T) {
	g := &getGateStore{gateStore: newGateStore()}
	app, _ := newApp(t, krules.WithStorage(g))
	w := app.Subject("s", krules.NoCache())
	for _, p := range []string{"p", "r"} {
		if _, _, err := w.Set(ctx, p, int64(1)); err != nil {
			t.Fatal(err)
		}
	}
	s := app.Subject("s")
	if _, _, err := s.Set(ctx, "q", "pending"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	g.armed = true
	done := make(chan error, 1)
	go func() { _, _, err := s.Set(ctx, "p", int64(5), krules.NoCache()); done <- err }()
	<-g.entered
	if _, _, err := s.Set(ctx, "p", int64(2), krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(ctx, "q"); v != "pending" {
		t.Fatalf("cached q = %v, %v; want the pending put", v, err)
	}
	if ok, err := s.Has(ctx, "r"); ok || err != nil {
		t.Fatalf("cached Has(r) = %v, %v; want the pending delete", ok, err)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := stored(t, g.Backend, "s", "r"); ok {
		t.Fatal("r is still stored: the pending delete was lost")
	}
	if v, _ := stored(t, g.Backend, "s", "q"); v != "pending" {
		t.Fatalf("stored q = %v, want the pending put", v)
	}
	if v, _ := stored(t, g.Backend, "s", "p"); v != int64(2) {
		t.Fatalf("stored p = %v, want 2", v)
	}
}

// failAfterWriteStore: an armed Set blocks until released, then writes and
// returns an error, as a store whose reply was lost after it wrote.
type failAfterWriteStore struct {
	*gateStore
	armed bool
}

func (g *failAfterWriteStore) Set(ctx context.Context, name string, k storage.Key, m storage.Mutation) (any, any, error) {
	if g.armed {
		g.armed = false
		close(g.entered)
		<-g.release
		g.gateStore.Backend.Set(ctx, name, k, m)
		return nil, nil, context.DeadlineExceeded // applied, reply lost
	}
	return g.gateStore.Backend.Set(ctx, name, k, m)
}

// TestFailedNoCacheWriteLeavesTheCacheRight: a NoCache write that fails may
// have been applied, so the handle's cache must not keep an older value
// (alone, and when another NoCache call patched the cache meanwhile).
func TestFailedNoCacheWriteLeavesTheCacheRight(t *testing.T) {
	for _, overlap := range []bool{false, true} {
		g := &failAfterWriteStore{gateStore: newGateStore()}
		app, _ := newApp(t, krules.WithStorage(g))
		if _, _, err := app.Subject("s", krules.NoCache()).Set(ctx, "p", int64(1)); err != nil {
			t.Fatal(err)
		}
		s := app.Subject("s")
		if _, _, err := s.Set(ctx, "q", "pending"); err != nil { // loads the cache
			t.Fatal(err)
		}
		g.armed = true
		done := make(chan error, 1)
		go func() { _, _, err := s.Set(ctx, "p", int64(5), krules.NoCache()); done <- err }()
		<-g.entered
		if overlap {
			if _, _, err := s.Set(ctx, "p", int64(2), krules.NoCache()); err != nil {
				t.Fatal(err)
			}
		}
		close(g.release)
		if err := <-done; err == nil {
			t.Fatal("the armed Set did not fail")
		}
		v, _ := s.Get(ctx, "p")
		sv, _ := stored(t, g.Backend, "s", "p")
		if v != sv {
			t.Fatalf("overlap %v: cached p = %v, stored p = %v", overlap, v, sv)
		}
		if q, _ := s.Get(ctx, "q"); q != "pending" {
			t.Fatalf("overlap %v: pending q = %v, want it kept", overlap, q)
		}
	}
}

// TestNoCacheDeleteOfMissingPropertyUpdatesTheCache: a NoCache Delete that
// finds the property gone (another process deleted it) drops it from the
// handle's loaded cache too.
func TestNoCacheDeleteOfMissingPropertyUpdatesTheCache(t *testing.T) {
	b := memory.New()
	app, _ := newApp(t, krules.WithStorage(b))
	if _, _, err := app.Subject("s", krules.NoCache()).Set(ctx, "p", 1); err != nil {
		t.Fatal(err)
	}
	s := app.Subject("s")
	if _, err := s.Get(ctx, "p"); err != nil { // loads the cache
		t.Fatal(err)
	}
	if _, err := b.Delete(ctx, "s", storage.Key{Kind: storage.Default, Name: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "p", krules.NoCache()); !errors.Is(err, krules.ErrNotFound) {
		t.Fatalf("delete: %v, want ErrNotFound", err)
	}
	if ok, err := s.Has(ctx, "p"); err != nil || ok {
		t.Fatalf("Has(p) = %v, %v after the store lost it", ok, err)
	}
}
