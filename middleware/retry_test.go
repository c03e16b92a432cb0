package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

var errTransient = errors.New("transient")

func TestDefaultRetryable(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errTransient, true},
		{"wrapped", fmt.Errorf("call: %w", errTransient), true},
		{"conflict", fmt.Errorf("x: %w", krules.ErrConflict), true},
		{"permanent", middleware.Permanent(errTransient), false},
		{"wrapped permanent", fmt.Errorf("x: %w", middleware.Permanent(errTransient)), false},
		{"panic", &krules.PanicError{Value: "boom"}, false},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), false},
		{"deadline", context.DeadlineExceeded, false},
		{"attempt timeout", fmt.Errorf("x: %w: %w", middleware.ErrTimeout, context.DeadlineExceeded), true},
		{"circuit open", fmt.Errorf("x: %w", middleware.ErrCircuitOpen), false},
		{"concurrency", middleware.ErrConcurrencyLimit, false},
		{"rate", middleware.ErrRateLimited, false},
		{"invalid value", fmt.Errorf("x: %w", krules.ErrInvalidValue), false},
		{"invalid name", krules.ErrInvalidName, false},
		{"cascade", krules.ErrCascadeDepth, false},
	}
	for _, c := range cases {
		if got := middleware.DefaultRetryable(c.err); got != c.want {
			t.Errorf("%s: DefaultRetryable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
	if !errors.Is(middleware.Permanent(errTransient), errTransient) {
		t.Error("Permanent hides the wrapped error from errors.Is")
	}
	if middleware.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
}

// TestRetryAttempts checks the exact number of attempts per failure class,
// the error returned, and (jitter off) the time spent waiting.
func TestRetryAttempts(t *testing.T) {
	cases := []struct {
		name      string
		cfg       middleware.RetryConfig
		fail      func(attempt int) error // the handler's outcome; may panic
		attempts  int
		wantErr   error // nil: success
		exhausted bool
		retryErr  bool // the error is a *RetryError
		elapsed   time.Duration
	}{
		{name: "success first", fail: func(int) error { return nil }, attempts: 1},
		{name: "transient always", fail: func(int) error { return errTransient },
			attempts: 3, wantErr: errTransient, exhausted: true, retryErr: true, elapsed: 300 * time.Millisecond},
		{name: "transient twice then ok", fail: func(n int) error {
			if n < 3 {
				return errTransient
			}
			return nil
		}, attempts: 3, elapsed: 300 * time.Millisecond},
		{name: "permanent", fail: func(int) error { return middleware.Permanent(errTransient) },
			attempts: 1, wantErr: errTransient},
		{name: "invalid value", fail: func(int) error { return fmt.Errorf("set: %w", krules.ErrInvalidValue) },
			attempts: 1, wantErr: krules.ErrInvalidValue},
		{name: "canceled", fail: func(int) error { return context.Canceled },
			attempts: 1, wantErr: context.Canceled},
		{name: "panic", fail: func(int) error { panic("boom") }, attempts: 1, wantErr: nil /* checked below */},
		{name: "transient then permanent", fail: func(n int) error {
			if n == 1 {
				return errTransient
			}
			return middleware.Permanent(krules.ErrConflict)
		}, attempts: 2, wantErr: krules.ErrConflict, retryErr: true, elapsed: 100 * time.Millisecond},
		{name: "max attempts 1", cfg: middleware.RetryConfig{MaxAttempts: 1}, fail: func(int) error { return errTransient },
			attempts: 1, wantErr: errTransient, exhausted: true, retryErr: true},
		{name: "max attempts 5", cfg: middleware.RetryConfig{MaxAttempts: 5}, fail: func(int) error { return errTransient },
			attempts: 5, wantErr: errTransient, exhausted: true, retryErr: true, elapsed: 1500 * time.Millisecond},
		{name: "custom predicate", cfg: middleware.RetryConfig{MaxAttempts: 4, Retryable: func(error) bool { return true }},
			fail: func(int) error { return middleware.Permanent(errTransient) }, attempts: 4, wantErr: errTransient,
			exhausted: true, retryErr: true, elapsed: 700 * time.Millisecond},
		{name: "custom backoff", cfg: middleware.RetryConfig{InitialBackoff: time.Second, Multiplier: 3, MaxBackoff: 2 * time.Second, MaxAttempts: 4},
			fail: func(int) error { return errTransient }, attempts: 4, wantErr: errTransient,
			exhausted: true, retryErr: true, elapsed: 5 * time.Second}, // 1s + 2s (capped) + 2s
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := c.cfg
				cfg.Jitter = -1
				h := newHarness(t, middleware.Retry(cfg), middleware.Recover())
				var calls counter
				h.app.On("job").Named("job").Do(func(context.Context, *krules.Event) error {
					return c.fail(calls.inc())
				})
				start := time.Now()
				h.emit(t, t.Context(), "job", "s", nil)
				if got := time.Since(start); got != c.elapsed {
					t.Errorf("elapsed %v, want %v", got, c.elapsed)
				}
				if calls.get() != c.attempts {
					t.Errorf("attempts = %d, want %d", calls.get(), c.attempts)
				}
				fs := h.failures()
				if c.name == "panic" {
					var pe *krules.PanicError
					if len(fs) != 1 || !errors.As(fs[0].err, &pe) || pe.Value != "boom" {
						t.Fatalf("want one *krules.PanicError(boom), got %v", fs)
					}
					return
				}
				if c.wantErr == nil {
					if len(fs) != 0 {
						t.Fatalf("unexpected errors %v", fs)
					}
					return
				}
				if len(fs) != 1 {
					t.Fatalf("got %d errors, want 1: %v", len(fs), fs)
				}
				err := fs[0].err
				if !errors.Is(err, c.wantErr) {
					t.Errorf("error %v does not wrap %v", err, c.wantErr)
				}
				if got := errors.Is(err, middleware.ErrRetriesExhausted); got != c.exhausted {
					t.Errorf("errors.Is(err, ErrRetriesExhausted) = %v, want %v (%v)", got, c.exhausted, err)
				}
				var re *middleware.RetryError
				if got := errors.As(err, &re); got != c.retryErr {
					t.Fatalf("RetryError = %v, want %v (%v)", got, c.retryErr, err)
				}
				if middleware.Attempts(err) != c.attempts {
					t.Errorf("Attempts(err) = %d, want %d", middleware.Attempts(err), c.attempts)
				}
				if re != nil && re.Handler != "job" {
					t.Errorf("RetryError.Handler = %q", re.Handler)
				}
			})
		})
	}
}

func TestRetryJitterBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var delays []time.Duration
		var slept []time.Duration
		last := time.Now()
		cfg := middleware.RetryConfig{
			MaxAttempts: 6, InitialBackoff: time.Second, MaxBackoff: 8 * time.Second, Jitter: 0.5,
			OnRetry: func(_ context.Context, _ *krules.Event, _ int, _ error, d time.Duration) { delays = append(delays, d) },
		}
		h := newHarness(t, middleware.Retry(cfg))
		h.app.On("job").Do(func(context.Context, *krules.Event) error {
			slept = append(slept, time.Since(last))
			last = time.Now()
			return errTransient
		})
		h.emit(t, t.Context(), "job", "s", nil)
		base := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
		if len(delays) != len(base) {
			t.Fatalf("%d waits, want %d", len(delays), len(base))
		}
		for i, d := range delays {
			if d < base[i]/2 || d > base[i] {
				t.Errorf("delay %d = %v, want within [%v, %v]", i+1, d, base[i]/2, base[i])
			}
			if slept[i+1] != d {
				t.Errorf("attempt %d started %v after the previous one, announced delay %v", i+2, slept[i+1], d)
			}
		}
	})
}

// TestRetryContext: waits end with ctx, and Retry does not start a wait that
// would end past ctx's deadline.
func TestRetryContext(t *testing.T) {
	t.Run("deadline ahead", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newHarness(t, middleware.Timeout(250*time.Millisecond), middleware.Retry(middleware.RetryConfig{MaxAttempts: 10, Jitter: -1}))
			var calls counter
			h.app.On("job").Do(func(context.Context, *krules.Event) error { calls.inc(); return errTransient })
			start := time.Now()
			h.emit(t, t.Context(), "job", "s", nil)
			// attempt at 0 and 100ms; the next wait (200ms) would end at 300ms > 250ms.
			if calls.get() != 2 || time.Since(start) != 100*time.Millisecond {
				t.Fatalf("attempts %d after %v, want 2 after 100ms", calls.get(), time.Since(start))
			}
			err := h.lastErr(t)
			if !errors.Is(err, errTransient) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, middleware.ErrRetriesExhausted) {
				t.Fatalf("err = %v", err)
			}
		})
	})
	t.Run("cancel during wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			h := newHarness(t, middleware.Retry(middleware.RetryConfig{MaxAttempts: 10, InitialBackoff: time.Hour, Jitter: -1}))
			var calls counter
			h.app.On("job").Do(func(context.Context, *krules.Event) error { calls.inc(); return errTransient })
			go func() {
				time.Sleep(time.Minute)
				cancel()
			}()
			start := time.Now()
			h.emit(t, ctx, "job", "s", nil)
			if calls.get() != 1 || time.Since(start) != time.Minute {
				t.Fatalf("attempts %d after %v, want 1 after 1m", calls.get(), time.Since(start))
			}
			err := h.lastErr(t)
			if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) {
				t.Fatalf("err = %v", err)
			}
		})
	})
	t.Run("attempt timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newHarness(t, middleware.Retry(middleware.RetryConfig{AttemptTimeout: time.Second, Jitter: -1}))
			var calls counter
			h.app.On("job").Do(func(ctx context.Context, _ *krules.Event) error {
				if calls.inc() < 3 {
					<-ctx.Done() // hangs until the attempt's deadline
					return ctx.Err()
				}
				return nil
			})
			start := time.Now()
			h.emit(t, t.Context(), "job", "s", nil)
			if calls.get() != 3 || time.Since(start) != 2*time.Second+300*time.Millisecond {
				t.Fatalf("attempts %d after %v, want 3 after 2.3s", calls.get(), time.Since(start))
			}
			if fs := h.failures(); len(fs) != 0 {
				t.Fatalf("errors %v", fs)
			}
		})
	})
}
