package krules

import (
	"context"

	"github.com/krules-go/krules/storage"
)

// setBlind is the store call of a blind write (see WriteOnly): a NoCache
// Set of a plain value or a built-in Op on a WriteOnly handle, without a
// change feed or an idempotency key. It returns the new value only.
//
//   - A plain value is one write without a read: Backend.Store with one
//     Put (Redis HSET, a PostgreSQL upsert).
//   - An Op goes to the backend's storage.BlindOps when it has one (Redis
//     HINCRBY, one PostgreSQL UPDATE), else to Backend.Set, whose old value
//     is dropped: the results are the same on every backend.
//
// The memory store, bound directly, has nothing to skip: its Set is used.
func (s *Subject) setBlind(ctx context.Context, key storage.Key, mut storage.Mutation) (any, error) {
	if s.mem.Bound() { // the memory store checks ctx itself
		nv, _, err := s.mem.Set(ctx, key, mut)
		return nv, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if mut.Op == nil {
		puts := [1]storage.Write{{Key: key, Value: mut.Value}}
		if err := s.app.backend.Store(ctx, s.name, storage.Batch{Puts: puts[:]}); err != nil {
			return nil, err
		}
		return mut.Value, nil
	}
	if s.app.blind != nil {
		return s.app.blind.SetBlind(ctx, s.name, key, mut.Op)
	}
	nv, _, err := s.app.backend.Set(ctx, s.name, key, mut)
	return nv, err
}
