package krules

import (
	"context"
	"fmt"

	"github.com/krules-go/krules/storage"
)

// ErrIdempotencyKeyReused: an idempotency key (IdempotencyKey) already
// recorded on the subject for a different request (another property,
// operation or value). Nothing was written.
var ErrIdempotencyKeyReused = storage.ErrIdempotencyKeyReused

// ErrIdempotencyUnsupported: an idempotency key given to a cached write (no
// NoCache), to an update function (Update, UpdateAny), or with a backend
// that does not record keys (see storage.Idempotent). Nothing was written.
var ErrIdempotencyUnsupported = storage.ErrIdempotencyUnsupported

// IdempotencyKeyOption is the option returned by IdempotencyKey. It is a
// SetOption and a DeleteOption.
type IdempotencyKeyOption struct{ key string }

// IdempotencyKey makes a NoCache Set (plain value or built-in Op: Inc,
// Append, Max, Min) or Delete safe to retry: the write is applied at most
// once per subject and key within the backend's window (24 hours by
// default, storage.DefaultIdempotencyWindow; each backend has a setting).
// The key is recorded atomically with the write. A repeated call with the
// same key and the same request returns the first call's new and old value
// without writing and without emitting a second event; a call whose first
// attempt failed recorded nothing and is applied anew.
//
// A NoCache call that returns a timeout or network error may have been
// applied (the store got the command, the answer was lost): retry it with
// the same key, never without one.
//
//	_, _, err := user.Set(ctx, "n", krules.Inc(1), krules.NoCache(), krules.IdempotencyKey("req-42"))
//
// Keys are scoped to the subject. A key already used on the subject for
// another request (another property, operation or value) is refused with
// ErrIdempotencyKeyReused. A key given to a cached write (no NoCache),
// with an update function, or with a backend that does not record keys is
// refused with ErrIdempotencyUnsupported; an empty key, one over
// storage.MaxIdempotencyKeyLen bytes or not valid UTF-8 with ErrInvalidName.
// Nothing is written in each case.
func IdempotencyKey(key string) IdempotencyKeyOption { return IdempotencyKeyOption{key: key} }

func (IdempotencyKeyOption) setOption()    {}
func (IdempotencyKeyOption) deleteOption() {}

// idemKeyOf returns the key of the last IdempotencyKey option in opts.
func idemKeyOf[T any](opts []T) (string, bool) {
	key, ok := "", false
	for _, o := range opts {
		if x, is := any(o).(IdempotencyKeyOption); is {
			key, ok = x.key, true
		}
	}
	return key, ok
}

// directCtx returns the context for the backend call of a write given the
// idempotency key key: a context carrying the key, after checking that the
// key can be honoured (m is nil for Delete). Only the backend sees the key:
// handlers of the write's event get ctx.
func (s *Subject) directCtx(ctx context.Context, key string, noCache bool, m *storage.Mutation) (context.Context, error) {
	if err := storage.ValidateIdempotencyKey(key); err != nil {
		return nil, err
	}
	if !noCache {
		return nil, fmt.Errorf("%w: a cached write is only stored by Store; use NoCache", ErrIdempotencyUnsupported)
	}
	if m != nil && m.Func != nil {
		return nil, fmt.Errorf("%w: update functions cannot be made idempotent; use a plain value or a built-in Op", ErrIdempotencyUnsupported)
	}
	if _, ok := s.app.backend.(storage.Idempotent); !ok {
		return nil, fmt.Errorf("%w: backend %T does not record idempotency keys", ErrIdempotencyUnsupported, s.app.backend)
	}
	return storage.WithIdempotencyKey(ctx, key), nil
}
