package memory

import (
	"context"
	"sync/atomic"

	"github.com/krules-go/krules/storage"
)

// Ref is a resolved reference to one subject of a Backend, for a caller
// that makes many calls on the same subject (each krules.Subject handle on
// an in-memory store embeds one): it keeps the subject's entry, so a call
// skips the name lookup and the store-wide lock. Its Set, Get and Delete
// behave exactly as the Backend's methods of the same name called with the
// Ref's subject name (same atomicity, idempotency, change feed and errors).
//
// Bind it with Backend.InitRef before use; the zero Ref is unbound
// (Bound reports false) and its methods must not be called. After InitRef,
// a Ref is safe for concurrent use. A flushed or emptied subject leaves
// its entry: the Ref notices and resolves the name again on its next call,
// so it never writes to a subject that is gone. Until that call the Ref
// keeps the old entry (a few dozen bytes), never the subject's properties:
// the backend drops them when the subject goes.
type Ref struct {
	b    *Backend
	name string
	s    atomic.Pointer[subject]
}

// InitRef binds r to the subject name of b. It must not run concurrently
// with r's other methods; rebinding a Ref that is in use is a race.
func (b *Backend) InitRef(r *Ref, name string) {
	r.b, r.name = b, name
	r.s.Store(nil)
}

// Bound reports whether r was bound by InitRef.
func (r *Ref) Bound() bool { return r.b != nil }

// lock returns the subject's entry, locked; create makes it if missing. A
// nil result (create false) means the subject does not exist.
func (r *Ref) lock(create bool) *subject {
	if s := r.s.Load(); s != nil {
		s.mu.Lock()
		if !s.gone {
			return s
		}
		s.mu.Unlock()
	}
	s := r.b.lookup(r.name, create)
	if s != nil {
		r.s.Store(s)
	}
	return s
}

// Set is Backend.Set on the Ref's subject.
func (r *Ref) Set(ctx context.Context, k storage.Key, m storage.Mutation) (any, any, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := checkKey(k); err != nil {
		return nil, nil, err
	}
	return r.b.set(ctx, r.name, r.lock(true), k, m)
}

// Get is Backend.Get on the Ref's subject.
func (r *Ref) Get(ctx context.Context, k storage.Key) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(k); err != nil {
		return nil, err
	}
	return get(r.name, r.lock(false), k)
}

// Delete is Backend.Delete on the Ref's subject.
func (r *Ref) Delete(ctx context.Context, k storage.Key) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(k); err != nil {
		return nil, err
	}
	return r.b.del(ctx, r.name, r.lock(true), k)
}
