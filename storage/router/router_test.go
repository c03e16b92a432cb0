package router_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/router"
)

func dk(name string) storage.Key { return storage.Key{Kind: storage.Default, Name: name} }

func set(t *testing.T, b storage.Backend, subject string) {
	t.Helper()
	if _, _, err := b.Set(context.Background(), subject, dk("x"), storage.Mutation{Value: subject}); err != nil {
		t.Fatal(err)
	}
}

func has(t *testing.T, b storage.Backend, subject string) bool {
	t.Helper()
	_, err := b.Get(context.Background(), subject, dk("x"))
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func list(t *testing.T, b storage.Lister, prefix string) []string {
	t.Helper()
	var out []string
	for name, err := range b.List(context.Background(), prefix) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func TestRoutesByLongestPrefix(t *testing.T) {
	cache, hot, rest := memory.New(), memory.New(), memory.New()
	r, err := router.New([]router.Route{{Prefix: "cache-", Backend: cache}, {Prefix: "cache-hot-", Backend: hot}}, rest)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"cache-1", "cache-hot-1", "user-1", "cach", "cache"} {
		set(t, r, s)
	}
	for _, c := range []struct {
		subject string
		in      storage.Backend
	}{{"cache-1", cache}, {"cache-hot-1", hot}, {"user-1", rest}, {"cach", rest}, {"cache", rest}} {
		for _, m := range []storage.Backend{cache, hot, rest} {
			if got, want := has(t, m, c.subject), m == c.in; got != want {
				t.Errorf("%s in %p: %v, want %v", c.subject, m, got, want)
			}
		}
		if !has(t, r, c.subject) {
			t.Errorf("router does not read back %s", c.subject)
		}
	}
	if err := r.Flush(context.Background(), "cache-hot-1"); err != nil {
		t.Fatal(err)
	}
	if has(t, hot, "cache-hot-1") {
		t.Error("flush did not reach the routed backend")
	}
}

func TestListMergesOnlyOwnedNames(t *testing.T) {
	ctx := context.Background()
	shared := memory.New()
	cache := memory.New()
	r, err := router.New([]router.Route{{Prefix: "cache-", Backend: cache}, {Prefix: "tmp-", Backend: shared}}, shared)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"cache-a", "cache-b", "tmp-1", "user-1", "user-2"} {
		set(t, r, s)
	}
	// Written directly to the wrong member: not the router's subject.
	set(t, cache, "user-stray")
	set(t, shared, "cache-stray")

	if got, want := list(t, r, ""), []string{"cache-a", "cache-b", "tmp-1", "user-1", "user-2"}; !slices.Equal(got, want) {
		t.Fatalf("List(\"\") = %v, want %v", got, want)
	}
	if got, want := list(t, r, "cache-a"), []string{"cache-a"}; !slices.Equal(got, want) {
		t.Fatalf("List(cache-a) = %v, want %v", got, want)
	}
	if got, want := list(t, r, "c"), []string{"cache-a", "cache-b"}; !slices.Equal(got, want) {
		t.Fatalf("List(c) = %v, want %v", got, want)
	}
	if got, want := list(t, r, "user-"), []string{"user-1", "user-2"}; !slices.Equal(got, want) {
		t.Fatalf("List(user-) = %v, want %v", got, want)
	}
	// Early stop.
	for range r.List(ctx, "") {
		break
	}
}

type noList struct{ storage.Backend }

func TestListUnsupportedMember(t *testing.T) {
	r, err := router.New(nil, noList{memory.New()})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range r.List(context.Background(), "") {
		if !errors.Is(err, router.ErrListUnsupported) {
			t.Fatalf("err = %v", err)
		}
		return
	}
	t.Fatal("no error from a member that cannot list")
}

func TestCapabilitiesAreTheWeakest(t *testing.T) {
	b, err := bolt.Open(filepath.Join(t.TempDir(), "r.db"), bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r, _ := router.New(nil, b)
	if !r.Capabilities().Persistent {
		t.Fatal("bolt alone should be persistent")
	}
	r, _ = router.New([]router.Route{{Prefix: "cache-", Backend: memory.New()}}, b)
	if c := r.Capabilities(); c.Persistent || c.Shared || !c.ServerSideOps {
		t.Fatalf("capabilities %+v", c)
	}
}

func TestNewRejectsBadRoutes(t *testing.T) {
	m := memory.New()
	for name, c := range map[string]struct {
		routes   []router.Route
		fallback storage.Backend
	}{
		"nil fallback":  {nil, nil},
		"empty prefix":  {[]router.Route{{Prefix: "", Backend: m}}, m},
		"nil backend":   {[]router.Route{{Prefix: "a", Backend: nil}}, m},
		"double prefix": {[]router.Route{{Prefix: "a", Backend: m}, {Prefix: "a", Backend: m}}, m},
	} {
		if _, err := router.New(c.routes, c.fallback); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
