package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

func TestChainOrder(t *testing.T) {
	var trace []string
	mw := func(name string) krules.Middleware {
		return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
			trace = append(trace, name+"-before:"+krules.HandlerName(ctx))
			err := next(ctx)
			trace = append(trace, name+"-after")
			return err
		}
	}
	h := newHarness(t, middleware.Chain(mw("a"), nil, middleware.Chain(mw("b"), mw("c"))), mw("d"))
	h.app.On("x").Named("h").Do(func(context.Context, *krules.Event) error { trace = append(trace, "handler"); return nil })
	h.emit(t, t.Context(), "x", "s", nil)
	want := []string{"a-before:h", "b-before:h", "c-before:h", "d-before:h", "handler", "d-after", "c-after", "b-after", "a-after"}
	if !slices.Equal(trace, want) {
		t.Fatalf("order %v\nwant %v", trace, want)
	}
	trace = nil
	h2 := newHarness(t, middleware.Chain())
	h2.app.On("x").Do(func(context.Context, *krules.Event) error { trace = append(trace, "handler"); return nil })
	h2.emit(t, t.Context(), "x", "s", nil)
	if !slices.Equal(trace, []string{"handler"}) {
		t.Fatalf("empty chain: %v", trace)
	}
}

func TestRecover(t *testing.T) {
	// An outer middleware sees the panic as an error only with Recover inside.
	var seen error
	observe := func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		seen = next(ctx)
		return seen
	}
	h := newHarness(t, observe, middleware.Recover())
	h.app.On("x").Do(func(context.Context, *krules.Event) error { panic(errTransient) })
	h.emit(t, t.Context(), "x", "s", nil)
	var pe *krules.PanicError
	if !errors.As(seen, &pe) || !errors.Is(seen, errTransient) || len(pe.Stack) == 0 {
		t.Fatalf("outer middleware saw %v, want *krules.PanicError wrapping the panic value with a stack", seen)
	}
	if err := h.lastErr(t); err != seen {
		t.Fatalf("error handler got %v, want %v", err, seen)
	}
}

// TestResilient checks the documented order Recover → DeadLetter → Timeout
// → CircuitBreaker → Retry → Recover through its observable consequences.
func TestResilient(t *testing.T) {
	type run struct {
		attempts int   // handler calls in this emit
		dead     bool  // a dead letter was emitted
		errIs    error // the error handler's error wraps this
		elapsed  time.Duration
	}
	cases := []struct {
		name    string
		cfg     middleware.ResilientConfig
		handler func(ctx context.Context, attempt int) error
		runs    []run
	}{
		{
			// Retries are inside the breaker: one failed invocation (3 attempts)
			// counts once; after 2 the circuit is open and the retries are
			// skipped altogether; the refusal is dead-lettered with 0 attempts.
			name: "retry inside breaker inside dead letter",
			cfg: middleware.ResilientConfig{
				Breaker: middleware.BreakerConfig{FailureThreshold: 2, CoolDown: time.Minute},
				Retry:   middleware.RetryConfig{Jitter: -1},
			},
			handler: func(context.Context, int) error { return errTransient },
			runs: []run{
				{attempts: 3, dead: true, errIs: middleware.ErrRetriesExhausted, elapsed: 300 * time.Millisecond},
				{attempts: 3, dead: true, errIs: middleware.ErrRetriesExhausted, elapsed: 300 * time.Millisecond},
				{attempts: 0, dead: true, errIs: middleware.ErrCircuitOpen},
			},
		},
		{
			// The inner Recover: a panic is an error for the stages, not
			// retried, dead-lettered.
			name:    "panic",
			handler: func(context.Context, int) error { panic("boom") },
			runs:    []run{{attempts: 1, dead: true, errIs: nil /* *krules.PanicError, checked below */}},
		},
		{
			// Timeout is outside Retry: it bounds all attempts and waits.
			// 0s fail, wait 1s, 1s fail, wait 2s -> 3s fail, next wait (4s)
			// would pass the 5s deadline: give up at 3s.
			name: "timeout bounds the retries",
			cfg: middleware.ResilientConfig{
				Timeout: 5 * time.Second,
				Retry:   middleware.RetryConfig{MaxAttempts: 10, InitialBackoff: time.Second, Jitter: -1},
			},
			handler: func(context.Context, int) error { return errTransient },
			runs:    []run{{attempts: 3, dead: true, errIs: context.DeadlineExceeded, elapsed: 3 * time.Second}},
		},
		{
			// A hanging handler is cancelled by the timeout; the deadline error
			// is not retried; the dead letter (outside the timeout) still fires.
			name:    "timeout cancels a hanging handler",
			cfg:     middleware.ResilientConfig{Timeout: 2 * time.Second},
			handler: func(ctx context.Context, _ int) error { <-ctx.Done(); return ctx.Err() },
			runs:    []run{{attempts: 1, dead: true, errIs: middleware.ErrTimeout, elapsed: 2 * time.Second}},
		},
		{
			name:    "success after a retry",
			cfg:     middleware.ResilientConfig{Retry: middleware.RetryConfig{Jitter: -1}},
			handler: func(_ context.Context, n int) error { return map[bool]error{true: errTransient}[n == 1] },
			runs:    []run{{attempts: 2, elapsed: 100 * time.Millisecond}},
		},
		{
			name: "stages disabled",
			cfg:  middleware.ResilientConfig{NoDeadLetter: true, NoRetry: true, NoBreaker: true, Timeout: -1},
			handler: func(ctx context.Context, _ int) error {
				_, ok := ctx.Deadline()
				return fmt.Errorf("deadline %v: %w", ok, errTransient)
			},
			runs: []run{{attempts: 1, errIs: errTransient}, {attempts: 1, errIs: errTransient}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, middleware.Resilient(c.cfg))
				j := &journal{}
				watchDeadLetters(h.app, j)
				var calls counter
				h.app.On("job").Named("job").Do(func(ctx context.Context, _ *krules.Event) error {
					return c.handler(ctx, calls.inc())
				})
				for i, r := range c.runs {
					before, deadBefore := calls.get(), len(j.dead())
					start := time.Now()
					h.emit(t, t.Context(), "job", "s", nil)
					if got := time.Since(start); got != r.elapsed {
						t.Errorf("run %d: elapsed %v, want %v", i, got, r.elapsed)
					}
					if got := calls.get() - before; got != r.attempts {
						t.Errorf("run %d: %d attempts, want %d", i, got, r.attempts)
					}
					dead := len(j.dead()) - deadBefore
					if want := map[bool]int{true: 1}[r.dead]; dead != want {
						t.Errorf("run %d: %d dead letters, want %d", i, dead, want)
					}
					if r.dead {
						if got := j.dead()[len(j.dead())-1][middleware.DLAttempts]; got != r.attempts {
							t.Errorf("run %d: dead letter attempts %v, want %d", i, got, r.attempts)
						}
					}
					fs := h.failures()
					if r.errIs == nil && !r.dead {
						if len(fs) != 0 {
							t.Errorf("run %d: errors %v", i, fs)
						}
						continue
					}
					if len(fs) != 1 {
						t.Fatalf("run %d: errors %v, want 1", i, fs)
					}
					if r.errIs != nil && !errors.Is(fs[0].err, r.errIs) {
						t.Errorf("run %d: err %v does not wrap %v", i, fs[0].err, r.errIs)
					}
					if c.name == "panic" {
						var pe *krules.PanicError
						if !errors.As(fs[0].err, &pe) || pe.Value != "boom" {
							t.Errorf("run %d: err %v, want *krules.PanicError(boom)", i, fs[0].err)
						}
					}
				}
			})
		})
	}
}
