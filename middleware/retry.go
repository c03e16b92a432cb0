package middleware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/krules-go/krules"
)

// Defaults of RetryConfig.
const (
	DefaultMaxAttempts    = 3
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
	DefaultMultiplier     = 2.0
	DefaultJitter         = 0.2
)

// RetryConfig configures Retry. The zero value gives the defaults.
type RetryConfig struct {
	// MaxAttempts is the number of attempts, the first included.
	// Default DefaultMaxAttempts (3); values < 1 mean the default.
	MaxAttempts int
	// InitialBackoff is the delay before the second attempt.
	// Default DefaultInitialBackoff (100ms); values <= 0 mean the default.
	InitialBackoff time.Duration
	// MaxBackoff caps every delay. Default DefaultMaxBackoff (10s).
	MaxBackoff time.Duration
	// Multiplier grows the delay after each attempt: the delay before attempt
	// n+1 is InitialBackoff * Multiplier^(n-1), capped at MaxBackoff.
	// Default DefaultMultiplier (2); values < 1 mean the default.
	Multiplier float64
	// Jitter is the fraction of each delay that is random: the delay d
	// becomes a uniform value in [d*(1-Jitter), d]. Jitter spreads the
	// retries of many failing handlers so they do not hit a recovering
	// dependency in step. Default DefaultJitter (0.2); values > 1 mean 1;
	// a negative value disables jitter.
	Jitter float64
	// Retryable decides whether an error is worth another attempt.
	// Default DefaultRetryable.
	Retryable func(error) bool
	// AttemptTimeout, when > 0, gives each attempt its own deadline (as the
	// Timeout middleware does); an attempt that overruns fails with an error
	// wrapping ErrTimeout, which is retried. Default 0: none.
	AttemptTimeout time.Duration
	// OnRetry, if set, is called before each wait with the attempt that just
	// failed (1-based), its error and the delay before the next attempt.
	OnRetry func(ctx context.Context, ev *krules.Event, attempt int, err error, delay time.Duration)
}

// RetryError is the error Retry returns when it gave up after more than one
// attempt, or because its retries were exhausted: errors.Is(err,
// ErrRetriesExhausted) tells the two apart, and the last attempt's error is
// wrapped too (errors.Is/As reach it). If ctx ended during a wait, ctx's
// error is wrapped as well.
type RetryError struct {
	// Handler is the retried handler's name, Attempts the attempts made.
	Handler  string
	Attempts int
	// Exhausted reports that the last allowed attempt failed.
	Exhausted bool
	// Err is the last attempt's error; Ctx is ctx's error when a wait was
	// cut short (else nil).
	Err error
	Ctx error
}

// Error implements error.
func (e *RetryError) Error() string {
	msg := fmt.Sprintf("krules/middleware: handler %q failed after %d attempts", e.Handler, e.Attempts)
	switch {
	case e.Exhausted:
		msg += " (" + ErrRetriesExhausted.Error() + ")"
	case e.Ctx != nil:
		msg += " (gave up: " + e.Ctx.Error() + ")"
	}
	return msg + ": " + e.Err.Error()
}

// Unwrap returns the last attempt's error, ErrRetriesExhausted when
// exhausted, and ctx's error when a wait was cut short.
func (e *RetryError) Unwrap() []error {
	errs := []error{e.Err}
	if e.Exhausted {
		errs = append(errs, ErrRetriesExhausted)
	}
	if e.Ctx != nil {
		errs = append(errs, e.Ctx)
	}
	return errs
}

// Attempts returns how many times the handler ran before the chain
// returned err: RetryError.Attempts when err wraps one; 0 when a protection
// middleware refused the call (ErrCircuitOpen, ErrConcurrencyLimit,
// ErrRateLimited); else 1.
func Attempts(err error) int {
	var re *RetryError
	switch {
	case errors.As(err, &re):
		return re.Attempts
	case errors.Is(err, ErrCircuitOpen), errors.Is(err, ErrConcurrencyLimit), errors.Is(err, ErrRateLimited):
		return 0
	}
	return 1
}

// Retry runs the handler again when it fails with a retryable error, up to
// MaxAttempts attempts, waiting an exponentially growing, jittered delay
// between attempts (see RetryConfig). Every attempt runs the rest of the
// chain with the same Event, so a handler that is retried must be
// idempotent (or use Subject updates that are).
//
// Retry stops at the first success (returning nil), at the first error the
// Retryable predicate refuses (returned unchanged if it was the first
// attempt, else in a *RetryError), when the attempts are exhausted (a
// *RetryError wrapping ErrRetriesExhausted and the last error), and when
// ctx ends: it never waits past ctx's deadline, and gives up at once when
// the next delay would end after it. A panic is never retried: it unwinds
// through Retry, or, with Recover inside Retry (as Resilient does), becomes
// a *krules.PanicError that DefaultRetryable refuses.
func Retry(cfg RetryConfig) krules.Middleware {
	if cfg.MaxAttempts < 1 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = DefaultInitialBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.InitialBackoff {
		cfg.MaxBackoff = cfg.InitialBackoff
	}
	if cfg.Multiplier < 1 {
		cfg.Multiplier = DefaultMultiplier
	}
	switch {
	case cfg.Jitter == 0:
		cfg.Jitter = DefaultJitter
	case cfg.Jitter < 0:
		cfg.Jitter = 0
	case cfg.Jitter > 1:
		cfg.Jitter = 1
	}
	if cfg.Retryable == nil {
		cfg.Retryable = DefaultRetryable
	}
	attempt := func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		if cfg.AttemptTimeout <= 0 {
			return next(ctx)
		}
		actx, cancel := context.WithTimeout(ctx, cfg.AttemptTimeout)
		defer cancel()
		err := next(actx)
		if err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("krules/middleware: attempt of handler %q on %q (%s): %w after %v: %w",
				krules.HandlerName(ctx), subjectName(ev), ev.Type, ErrTimeout, cfg.AttemptTimeout, err)
		}
		return err
	}
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		for n := 1; ; n++ {
			err := attempt(ctx, ev, next)
			if err == nil {
				return nil
			}
			if !cfg.Retryable(err) || ctx.Err() != nil {
				if n == 1 {
					return err
				}
				return &RetryError{Handler: krules.HandlerName(ctx), Attempts: n, Err: err, Ctx: ctx.Err()}
			}
			if n >= cfg.MaxAttempts {
				return &RetryError{Handler: krules.HandlerName(ctx), Attempts: n, Exhausted: true, Err: err}
			}
			delay := cfg.backoff(n)
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
				return &RetryError{Handler: krules.HandlerName(ctx), Attempts: n, Err: err, Ctx: context.DeadlineExceeded}
			}
			if cfg.OnRetry != nil {
				cfg.OnRetry(ctx, ev, n, err, delay)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return &RetryError{Handler: krules.HandlerName(ctx), Attempts: n, Err: err, Ctx: ctx.Err()}
			}
		}
	}
}

// backoff returns the delay after failed attempt n (1-based).
func (cfg *RetryConfig) backoff(n int) time.Duration {
	d := float64(cfg.InitialBackoff) * math.Pow(cfg.Multiplier, float64(n-1))
	if d > float64(cfg.MaxBackoff) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(cfg.MaxBackoff)
	}
	if cfg.Jitter > 0 {
		d -= d * cfg.Jitter * rand.Float64()
	}
	return time.Duration(d)
}
