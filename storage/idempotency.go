package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Idempotency keys make a direct write (Backend.Set with a plain value or a
// built-in Op, and Backend.Delete) safe to retry after a timeout: a call
// whose context carries a key (WithIdempotencyKey) is applied at most once
// per subject and key within the backend's window. The backend records the
// key, a fingerprint of the request and the call's result atomically with
// the write (same Lua script, transaction or lock). A later call with the
// same key on the same subject and the same request returns the recorded
// new and old value without writing, and marks its context as replayed
// (Replayed), so callers emit no second event. A key recorded for another
// request on the subject (another property, kind, operation or value) is
// refused with ErrIdempotencyKeyReused. Keys are scoped to the subject: the
// same key on two subjects names two requests (a Redis Cluster script can
// only touch the subject's slot). A failed call records nothing.
//
// Backends that honour keys implement Idempotent; the others must not be
// given one (krules refuses the call with ErrIdempotencyUnsupported).
// Update functions (Mutation.Func) are not covered: they may run more than
// once and their request cannot be fingerprinted.

// DefaultIdempotencyWindow is how long a backend remembers an idempotency
// key unless configured otherwise: 24 hours.
const DefaultIdempotencyWindow = 24 * time.Hour

// MaxIdempotencyKeyLen is the longest idempotency key, in bytes.
const MaxIdempotencyKeyLen = 256

var (
	// ErrIdempotencyKeyReused reports an idempotency key already recorded on
	// the subject for a different request (another property, kind,
	// operation or value). Nothing was written.
	ErrIdempotencyKeyReused = errors.New("idempotency key reused for a different request")

	// ErrIdempotencyUnsupported reports an idempotency key given where it
	// cannot be honoured: a cached (not NoCache) write, an update function,
	// or a backend that does not implement Idempotent. Nothing was written.
	ErrIdempotencyUnsupported = errors.New("idempotency key not supported here")
)

// Idempotent is implemented by backends that honour idempotency keys on Set
// (plain values and Ops) and Delete.
type Idempotent interface {
	// IdempotencyWindow is how long a recorded key is remembered.
	IdempotencyWindow() time.Duration
}

type idemKey struct{}

type idemReq struct {
	key      string
	replayed atomic.Bool
}

// WithIdempotencyKey returns a context that carries an idempotency key for
// the next Set or Delete made with it. Use a fresh context per call: the
// replay mark (see Replayed) is shared by every call made with it.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idemKey{}, &idemReq{key: key})
}

// IdempotencyKeyFrom returns the idempotency key ctx carries, if any.
func IdempotencyKeyFrom(ctx context.Context) (string, bool) {
	r, ok := ctx.Value(idemKey{}).(*idemReq)
	if !ok {
		return "", false
	}
	return r.key, true
}

// MarkReplayed is called by a backend that answered a call from a recorded
// idempotency key instead of writing. It does nothing when ctx carries no
// key. Safe for concurrent use.
func MarkReplayed(ctx context.Context) {
	if r, ok := ctx.Value(idemKey{}).(*idemReq); ok {
		r.replayed.Store(true)
	}
}

// Replayed reports whether a call made with ctx was answered from a
// recorded idempotency key (nothing was written).
func Replayed(ctx context.Context) bool {
	r, ok := ctx.Value(idemKey{}).(*idemReq)
	return ok && r.replayed.Load()
}

// ValidateIdempotencyKey checks a key: non-empty, valid UTF-8, no NUL, at
// most MaxIdempotencyKeyLen bytes. Errors wrap ErrInvalidName.
func ValidateIdempotencyKey(key string) error {
	if err := ValidateName("idempotency key", key); err != nil {
		return err
	}
	if len(key) > MaxIdempotencyKeyLen {
		return fmt.Errorf("%w: idempotency key is %d bytes, the limit is %d", ErrInvalidName, len(key), MaxIdempotencyKeyLen)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("%w: idempotency key is not valid UTF-8", ErrInvalidName)
	}
	return nil
}

// Fingerprint identifies the request a key is recorded for: the operation
// ("set" or "delete"), the property key and, for Set, the mutation (plain
// value or Op with its argument). m is nil for Delete. It is a hex string.
// A mutation with an update function has no fingerprint: the error wraps
// ErrIdempotencyUnsupported.
func Fingerprint(op string, k Key, m *Mutation) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%c\x00%d:%s\x00", op, k.Kind, len(k.Name), k.Name)
	if m != nil {
		var v any
		switch {
		case m.Func != nil:
			return "", fmt.Errorf("%w: update functions cannot be made idempotent", ErrIdempotencyUnsupported)
		case m.Op != nil:
			fmt.Fprintf(h, "op %d\x00", m.Op.Kind)
			v = m.Op.Arg
		default:
			h.Write([]byte("value\x00"))
			v = m.Value
		}
		b, err := Marshal(v)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// IdempotencyError is the error for a key recorded for another request.
func IdempotencyError(subject, key string) error {
	return fmt.Errorf("idempotency key %.64q on subject %.64q: %w", key, subject, ErrIdempotencyKeyReused)
}
