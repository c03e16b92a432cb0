package middleware

import (
	"context"
	"errors"

	"github.com/krules-go/krules"
)

// Errors reported by the middleware of this package. Test them with
// errors.Is: the returned errors wrap them with the handler, subject and
// key concerned, and (where there is one) the handler's own error.
var (
	// ErrTimeout: the handler did not finish within the Timeout middleware's
	// duration; its ctx was cancelled. The error also wraps the handler's own
	// error (usually context.DeadlineExceeded).
	ErrTimeout = errors.New("handler timed out")
	// ErrRetriesExhausted: Retry made its last allowed attempt and it failed.
	// The error also wraps the last attempt's error; see RetryError.
	ErrRetriesExhausted = errors.New("retries exhausted")
	// ErrCircuitOpen: a circuit breaker skipped the handler because the
	// circuit of its key is open (or half-open with its trial calls taken).
	ErrCircuitOpen = errors.New("circuit open")
	// ErrConcurrencyLimit: ConcurrencyLimit with FailFast found every slot of
	// the key taken; the handler was skipped.
	ErrConcurrencyLimit = errors.New("concurrency limit reached")
	// ErrRateLimited: RateLimit with FailFast found no token for the key; the
	// handler was skipped.
	ErrRateLimited = errors.New("rate limited")
	// ErrInvalidPartition: a partition configuration out of range (count < 1,
	// id outside [0, count)) or not a number.
	ErrInvalidPartition = errors.New("invalid partition configuration")
)

// Permanent marks err as not worth retrying: DefaultRetryable (and so Retry
// with its default predicate) gives up on it at once. errors.Is and
// errors.As see through the mark. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or an error it wraps) was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// DefaultRetryable is Retry's default predicate. It reports false (give up)
// for errors that another attempt cannot fix:
//
//   - errors marked with Permanent;
//   - panics (*krules.PanicError): a bug, not a transient fault;
//   - context.Canceled and context.DeadlineExceeded: the handler's ctx is
//     done, so every further attempt would fail the same way (but an error
//     wrapping ErrTimeout is retryable: it comes from a per-attempt deadline,
//     RetryConfig.AttemptTimeout or a Timeout placed inside Retry, and the
//     next attempt gets a fresh one);
//   - ErrCircuitOpen, ErrConcurrencyLimit, ErrRateLimited: a protection
//     middleware refused the call on purpose;
//   - krules.ErrInvalidValue, krules.ErrInvalidName, krules.ErrCascadeDepth:
//     bad input or a handler loop.
//
// Every other non-nil error (I/O errors, krules.ErrConflict, ...) is retryable.
func DefaultRetryable(err error) bool {
	if err == nil || IsPermanent(err) {
		return false
	}
	var pe *krules.PanicError
	if errors.As(err, &pe) {
		return false
	}
	if errors.Is(err, ErrTimeout) {
		return true
	}
	for _, target := range []error{
		context.Canceled, context.DeadlineExceeded,
		ErrCircuitOpen, ErrConcurrencyLimit, ErrRateLimited,
		krules.ErrInvalidValue, krules.ErrInvalidName, krules.ErrCascadeDepth,
	} {
		if errors.Is(err, target) {
			return false
		}
	}
	return true
}
