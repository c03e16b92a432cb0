package router_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/router"
	"github.com/krules-go/krules/storage/storagetest"
)

// The suite's subjects all take the fallback unless a route matches their
// names, so run it with the routes on both sides: once with a route that
// matches nothing the suite writes (every subject in the fallback), and once
// with the fallback catching nothing but a route per first character (every
// subject routed), mixing memory and bolt members.
//
// Every subtest has a backend of its own (a bolt file and memory members),
// so up to 4 run at once. Under the race detector the concurrent subtests
// make a quarter of their rounds (raceScaleDown): the router takes no lock
// of its own, every write goes to one member, and the members' own suites
// run the full counts.
func TestConformanceFallback(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{Parallel: 4, ScaleDown: raceScaleDown(), New: func(t *testing.T) storage.Backend {
		b, err := bolt.Open(filepath.Join(t.TempDir(), "r.db"), bolt.Config{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		r, err := router.New([]router.Route{{Prefix: "\U0010FFFFnever-", Backend: memory.New()}}, b)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}})
}

func TestConformanceSplit(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{Parallel: 4, ScaleDown: raceScaleDown(), New: func(t *testing.T) storage.Backend {
		b, err := bolt.Open(filepath.Join(t.TempDir(), "r.db"), bolt.Config{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		mem := memory.New()
		// Alternate members by the first byte of the name. The suite names
		// its subjects "st-" + a random tag of [a-z0-9] per subtest + "-" +
		// name, so routing by the first byte alone sent every suite subject
		// to bolt ('s'); the longer "st-<c>" routes send each subtest to one
		// member by its tag's first byte, half of them to each.
		var routes []router.Route
		for c := 0x20; c < 0x7f; c++ {
			m := storage.Backend(mem)
			if c%2 == 1 {
				m = b
			}
			routes = append(routes, router.Route{Prefix: string(rune(c)), Backend: m})
		}
		for i, c := range "abcdefghijklmnopqrstuvwxyz0123456789" {
			m := storage.Backend(mem)
			if i%2 == 1 {
				m = b
			}
			routes = append(routes, router.Route{Prefix: "st-" + string(c), Backend: m})
		}
		r, err := router.New(routes, memory.New())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}})
}

// TestIdempotencyConformance runs the idempotency-key tests with subjects
// split between a memory and a bolt member.
func TestIdempotencyConformance(t *testing.T) {
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
		b, err := bolt.Open(filepath.Join(t.TempDir(), "r.db"), bolt.Config{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		var routes []router.Route
		for c := 0x20; c < 0x7f; c++ {
			m := storage.Backend(memory.New())
			if c%2 == 1 {
				m = b
			}
			routes = append(routes, router.Route{Prefix: string(rune(c)), Backend: m})
		}
		r, err := router.New(routes, memory.New())
		if err != nil {
			t.Fatal(err)
		}
		return r
	})
}

// noKeys hides a member's storage.Idempotent implementation.
type noKeys struct{ storage.Backend }

func TestIdempotencyMemberWithoutKeys(t *testing.T) {
	r, err := router.New([]router.Route{{Prefix: "plain-", Backend: noKeys{memory.New()}}}, memory.New())
	if err != nil {
		t.Fatal(err)
	}
	ctx := storage.WithIdempotencyKey(t.Context(), "k")
	k := storage.Key{Kind: storage.Default, Name: "x"}
	if _, _, err := r.Set(ctx, "plain-1", k, storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrIdempotencyUnsupported) {
		t.Errorf("keyed Set on a member without keys: %v, want ErrIdempotencyUnsupported", err)
	}
	if _, err := r.Delete(ctx, "plain-1", k); !errors.Is(err, storage.ErrIdempotencyUnsupported) {
		t.Errorf("keyed Delete on a member without keys: %v, want ErrIdempotencyUnsupported", err)
	}
	if _, err := r.Get(t.Context(), "plain-1", k); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("refused Set wrote: Get = %v", err)
	}
	if _, _, err := r.Set(ctx, "other", k, storage.Mutation{Value: int64(1)}); err != nil {
		t.Errorf("keyed Set on the fallback: %v", err)
	}
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
