// Package router is a storage backend that sends each subject to one of
// several backends by the prefix of its name: the multi-backend pattern of
// the KRules storage guide ("cache-*" subjects in memory, everything else in
// Redis).
//
//	mem := memory.New()
//	rdb, _ := redis.Open(ctx, "redis://127.0.0.1:6379/0", redis.Config{Prefix: "app:"})
//	b, err := router.New([]router.Route{{Prefix: "cache-", Backend: mem}}, rdb)
//	app := krules.New(krules.WithStorage(b))
//	app.Subject("cache-session-1") // kept in memory
//	app.Subject("user-123")        // kept in Redis
//
// A subject goes to the route with the longest matching prefix, or to the
// fallback when none matches. Every operation concerns one subject, so it is
// forwarded whole to that subject's backend and keeps that backend's
// atomicity. The router does not own its members: Close closes nothing, the
// caller closes the backends it opened.
package router

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sort"
	"strings"

	"github.com/krules-go/krules/storage"
)

// ErrListUnsupported reports that List reached a member backend that does not
// implement storage.Lister.
var ErrListUnsupported = errors.New("router: backend cannot list subjects")

// Route sends the subjects whose name starts with Prefix to Backend.
type Route struct {
	// Prefix of the subject names; must not be empty (use the fallback for
	// "everything else").
	Prefix string
	// Backend that stores those subjects.
	Backend storage.Backend
}

// Backend routes each subject to a member backend. It is safe for
// concurrent use when its members are; the routes cannot change after New.
type Backend struct {
	routes   []Route // longest prefix first
	fallback storage.Backend
}

var (
	_ storage.Backend  = (*Backend)(nil)
	_ storage.Lister   = (*Backend)(nil)
	_ storage.BlindOps = (*Backend)(nil)
)

// New builds a router. fallback stores every subject no route matches. It is
// an error to give a nil backend, an empty prefix or the same prefix twice.
// The same backend may appear in several routes and as the fallback.
func New(routes []Route, fallback storage.Backend) (*Backend, error) {
	if fallback == nil {
		return nil, errors.New("router: nil fallback backend")
	}
	rs := make([]Route, len(routes))
	copy(rs, routes)
	seen := make(map[string]bool, len(rs))
	for _, r := range rs {
		switch {
		case r.Prefix == "":
			return nil, errors.New("router: route with an empty prefix (use the fallback backend)")
		case r.Backend == nil:
			return nil, fmt.Errorf("router: route %q has a nil backend", r.Prefix)
		case seen[r.Prefix]:
			return nil, fmt.Errorf("router: prefix %q routed twice", r.Prefix)
		}
		seen[r.Prefix] = true
	}
	sort.SliceStable(rs, func(i, j int) bool { return len(rs[i].Prefix) > len(rs[j].Prefix) })
	return &Backend{routes: rs, fallback: fallback}, nil
}

// route returns the index of the member that stores subject: a route index,
// or len(routes) for the fallback.
func (b *Backend) route(subject string) int {
	for i, r := range b.routes {
		if strings.HasPrefix(subject, r.Prefix) {
			return i
		}
	}
	return len(b.routes)
}

func (b *Backend) member(i int) storage.Backend {
	if i == len(b.routes) {
		return b.fallback
	}
	return b.routes[i].Backend
}

// For returns the backend that stores subject.
func (b *Backend) For(subject string) storage.Backend { return b.member(b.route(subject)) }

// Load implements storage.Backend.
func (b *Backend) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	return b.For(subject).Load(ctx, subject)
}

// Store implements storage.Backend.
func (b *Backend) Store(ctx context.Context, subject string, batch storage.Batch) error {
	return b.For(subject).Store(ctx, subject, batch)
}

// Set implements storage.Backend.
func (b *Backend) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (any, any, error) {
	mb, err := b.forWrite(ctx, subject)
	if err != nil {
		return nil, nil, err
	}
	return mb.Set(ctx, subject, k, m)
}

// SetBlind implements storage.BlindOps: it runs the member's SetBlind when
// the member implements storage.BlindOps, else the member's Set, whose old
// value is dropped (the same result, see storage.BlindOps).
func (b *Backend) SetBlind(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, error) {
	mb, err := b.forWrite(ctx, subject)
	if err != nil {
		return nil, err
	}
	if bo, ok := mb.(storage.BlindOps); ok {
		return bo.SetBlind(ctx, subject, k, op)
	}
	nv, _, err := mb.Set(ctx, subject, k, storage.Mutation{Op: op})
	return nv, err
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	return b.For(subject).Get(ctx, subject, k)
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	mb, err := b.forWrite(ctx, subject)
	if err != nil {
		return nil, err
	}
	return mb.Delete(ctx, subject, k)
}

// Flush implements storage.Backend.
func (b *Backend) Flush(ctx context.Context, subject string) error {
	return b.For(subject).Flush(ctx, subject)
}

// ExtProps implements storage.Backend.
func (b *Backend) ExtProps(ctx context.Context, subject string) ([]storage.Property, error) {
	return b.For(subject).ExtProps(ctx, subject)
}

// Capabilities implements storage.Backend: the weakest of the members (a
// guarantee holds only if it holds for every subject).
func (b *Backend) Capabilities() storage.Capabilities {
	c := b.fallback.Capabilities()
	for _, r := range b.routes {
		rc := r.Backend.Capabilities()
		c.Persistent = c.Persistent && rc.Persistent
		c.Shared = c.Shared && rc.Shared
		c.ServerSideOps = c.ServerSideOps && rc.ServerSideOps
	}
	return c
}

// List implements storage.Lister. It lists each member in turn (routes by
// decreasing prefix length, then the fallback) and keeps only the names that
// belong to that member by the routing rule, so a name stored in the wrong
// backend (written there directly) is not reported, and a backend shared by
// several routes never yields a name twice. Members whose prefix cannot match
// prefix are skipped. A member that is not a storage.Lister ends the
// sequence with an error wrapping ErrListUnsupported.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		for i := 0; i <= len(b.routes); i++ {
			q := prefix
			if i < len(b.routes) {
				p := b.routes[i].Prefix
				switch {
				case strings.HasPrefix(p, prefix):
					q = p // narrower: list only the route's subjects
				case strings.HasPrefix(prefix, p):
				default:
					continue // disjoint: no name can match both
				}
			}
			m := b.member(i)
			l, ok := m.(storage.Lister)
			if !ok {
				yield("", fmt.Errorf("%w: %T", ErrListUnsupported, m))
				return
			}
			for name, err := range l.List(ctx, q) {
				if err != nil {
					yield("", err)
					return
				}
				if b.route(name) != i {
					continue
				}
				if !yield(name, nil) {
					return
				}
			}
		}
	}
}
