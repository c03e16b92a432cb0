package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

func TestTimeout(t *testing.T) {
	cases := []struct {
		name        string
		d           time.Duration
		parent      time.Duration // 0: no parent deadline
		handler     func(ctx context.Context) error
		elapsed     time.Duration
		wantTimeout bool
		wantErr     error
	}{
		{name: "honours ctx", d: 5 * time.Second, handler: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}, elapsed: 5 * time.Second, wantTimeout: true, wantErr: context.DeadlineExceeded},
		{name: "fast", d: 5 * time.Second, handler: func(ctx context.Context) error {
			time.Sleep(time.Second)
			return ctx.Err()
		}, elapsed: time.Second},
		{name: "fast error", d: 5 * time.Second, handler: func(context.Context) error { return errTransient },
			wantErr: errTransient},
		{name: "late success", d: time.Second, handler: func(context.Context) error {
			time.Sleep(2 * time.Second) // ignores ctx but finishes its work
			return nil
		}, elapsed: 2 * time.Second},
		{name: "late error", d: time.Second, handler: func(context.Context) error {
			time.Sleep(2 * time.Second)
			return errTransient
		}, elapsed: 2 * time.Second, wantTimeout: true, wantErr: errTransient},
		{name: "parent deadline first", d: 5 * time.Second, parent: time.Second, handler: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}, elapsed: time.Second, wantErr: context.DeadlineExceeded},
		{name: "disabled", d: 0, handler: func(ctx context.Context) error {
			if _, ok := ctx.Deadline(); ok {
				return errors.New("unexpected deadline")
			}
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, middleware.Timeout(c.d))
				h.app.On("job").Do(func(ctx context.Context, _ *krules.Event) error { return c.handler(ctx) })
				ctx := t.Context()
				if c.parent > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, c.parent)
					defer cancel()
				}
				start := time.Now()
				h.emit(t, ctx, "job", "s", nil)
				if got := time.Since(start); got != c.elapsed {
					t.Errorf("elapsed %v, want %v", got, c.elapsed)
				}
				fs := h.failures()
				if c.wantErr == nil {
					if len(fs) != 0 {
						t.Fatalf("errors %v", fs)
					}
					return
				}
				if len(fs) != 1 {
					t.Fatalf("got %v, want one error", fs)
				}
				if !errors.Is(fs[0].err, c.wantErr) {
					t.Errorf("err %v does not wrap %v", fs[0].err, c.wantErr)
				}
				if got := errors.Is(fs[0].err, middleware.ErrTimeout); got != c.wantTimeout {
					t.Errorf("errors.Is(err, ErrTimeout) = %v, want %v (%v)", got, c.wantTimeout, fs[0].err)
				}
			})
		})
	}
}

// breakerRig is an App with one breaker; the handler's outcome per call is
// set by the test.
type breakerRig struct {
	*harness
	b    *middleware.Breaker
	mu   sync.Mutex
	tr   []string
	ran  []string // "handler@subject" per run
	fail map[string]error
}

func newBreakerRig(t *testing.T, cfg middleware.BreakerConfig) *breakerRig {
	r := &breakerRig{fail: map[string]error{}}
	cfg.OnStateChange = func(key string, from, to middleware.State) {
		r.mu.Lock()
		r.tr = append(r.tr, fmt.Sprintf("%s:%s->%s", key, from, to))
		r.mu.Unlock()
	}
	r.b = middleware.NewBreaker(cfg)
	r.harness = newHarness(t, r.b.Middleware())
	for _, name := range []string{"a", "b"} {
		r.app.On("job").Named(name).Do(func(_ context.Context, ev *krules.Event) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.ran = append(r.ran, name+"@"+ev.Subject.Name())
			return r.fail[name+"@"+ev.Subject.Name()]
		})
	}
	return r
}

func (r *breakerRig) transitions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.tr
	r.tr = nil
	return out
}

func (r *breakerRig) runs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.ran
	r.ran = nil
	return out
}

func TestBreakerTransitions(t *testing.T) {
	type step struct {
		wait    time.Duration
		subject string
		fail    []string // "handler@subject" that fail in this step
		ran     []string // want
		open    int      // want: number of ErrCircuitOpen errors
		tr      []string // want transitions
		state   map[string]middleware.State
	}
	cases := []struct {
		name  string
		cfg   middleware.BreakerConfig
		steps []step
	}{
		{
			name: "per subject",
			cfg:  middleware.BreakerConfig{FailureThreshold: 2, CoolDown: 10 * time.Second},
			steps: []step{
				{subject: "s1", fail: []string{"a@s1"}, ran: []string{"a@s1", "b@s1"}, state: map[string]middleware.State{"s1": middleware.StateClosed}},
				// b's success resets the consecutive count: per-subject key, shared by handlers.
				{subject: "s1", fail: []string{"a@s1"}, ran: []string{"a@s1", "b@s1"}, state: map[string]middleware.State{"s1": middleware.StateClosed}},
				{subject: "s1", fail: []string{"a@s1", "b@s1"}, ran: []string{"a@s1", "b@s1"}, tr: []string{"s1:closed->open"},
					state: map[string]middleware.State{"s1": middleware.StateOpen}},
				{subject: "s1", open: 2},
				{subject: "s2", ran: []string{"a@s2", "b@s2"}, state: map[string]middleware.State{"s1": middleware.StateOpen, "s2": middleware.StateClosed}},
				{wait: 9 * time.Second, subject: "s1", open: 2},
				// cool-down over: a is the trial and fails -> open again; b is refused.
				{wait: time.Second, subject: "s1", fail: []string{"a@s1"}, ran: []string{"a@s1"}, open: 1,
					tr: []string{"s1:open->half-open", "s1:half-open->open"}, state: map[string]middleware.State{"s1": middleware.StateOpen}},
				{wait: 9 * time.Second, subject: "s1", open: 2},
				// trial succeeds -> closed; b runs too.
				{wait: time.Second, subject: "s1", ran: []string{"a@s1", "b@s1"},
					tr: []string{"s1:open->half-open", "s1:half-open->closed"}, state: map[string]middleware.State{"s1": middleware.StateClosed}},
			},
		},
		{
			name: "per handler",
			cfg:  middleware.BreakerConfig{Key: middleware.ByHandler, FailureThreshold: 3, CoolDown: time.Minute},
			steps: []step{
				{subject: "s1", fail: []string{"a@s1"}, ran: []string{"a@s1", "b@s1"}},
				{subject: "s2", fail: []string{"a@s2"}, ran: []string{"a@s2", "b@s2"}},
				{subject: "s3", fail: []string{"a@s3"}, ran: []string{"a@s3", "b@s3"}, tr: []string{"a:closed->open"},
					state: map[string]middleware.State{"a": middleware.StateOpen, "b": middleware.StateClosed}},
				{subject: "s4", ran: []string{"b@s4"}, open: 1},
				{wait: time.Minute, subject: "s4", ran: []string{"a@s4", "b@s4"}, tr: []string{"a:open->half-open", "a:half-open->closed"}},
			},
		},
		{
			name: "success threshold 2",
			cfg:  middleware.BreakerConfig{Key: middleware.ByHandler, FailureThreshold: 1, CoolDown: time.Second, SuccessThreshold: 2, HalfOpenMaxCalls: 2},
			steps: []step{
				{subject: "s", fail: []string{"a@s"}, ran: []string{"a@s", "b@s"}, tr: []string{"a:closed->open"}},
				{wait: time.Second, subject: "s", ran: []string{"a@s", "b@s"}, tr: []string{"a:open->half-open"},
					state: map[string]middleware.State{"a": middleware.StateHalfOpen}},
				{subject: "s", ran: []string{"a@s", "b@s"}, tr: []string{"a:half-open->closed"}, state: map[string]middleware.State{"a": middleware.StateClosed}},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newBreakerRig(t, c.cfg)
				for i, s := range c.steps {
					time.Sleep(s.wait)
					r.mu.Lock()
					r.fail = map[string]error{}
					for _, f := range s.fail {
						r.fail[f] = errTransient
					}
					r.mu.Unlock()
					r.emit(t, t.Context(), "job", s.subject, nil)
					if got := r.runs(); !slices.Equal(got, s.ran) {
						t.Errorf("step %d: ran %v, want %v", i, got, s.ran)
					}
					open := 0
					for _, f := range r.failures() {
						switch {
						case errors.Is(f.err, middleware.ErrCircuitOpen):
							open++
						case !errors.Is(f.err, errTransient):
							t.Errorf("step %d: unexpected error %v", i, f.err)
						}
					}
					if open != s.open {
						t.Errorf("step %d: %d ErrCircuitOpen, want %d", i, open, s.open)
					}
					if got := r.transitions(); !slices.Equal(got, s.tr) {
						t.Errorf("step %d: transitions %v, want %v", i, got, s.tr)
					}
					for k, want := range s.state {
						if got := r.b.State(k); got != want {
							t.Errorf("step %d: State(%q) = %v, want %v", i, k, got, want)
						}
					}
				}
			})
		})
	}
}

// TestBreakerHalfOpenLimit: while the single trial call runs, a concurrent
// call is refused; errors that are not failures leave the circuit alone.
func TestBreakerHalfOpenLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rejected counter
		b := middleware.NewBreaker(middleware.BreakerConfig{
			Key: middleware.ByHandler, FailureThreshold: 1, CoolDown: time.Second,
			OnReject: func(context.Context, *krules.Event, string) { rejected.inc() },
		})
		h := newHarness(t, b.Middleware())
		release := make(chan struct{})
		var calls counter
		h.app.On("job").Named("h").Do(func(ctx context.Context, ev *krules.Event) error {
			switch n := calls.inc(); n {
			case 1:
				return errTransient // opens
			case 2:
				<-release // the trial, held open
				return nil
			case 3:
				return context.Canceled // not a failure
			}
			return nil
		})
		h.emit(t, t.Context(), "job", "s", nil)
		if b.State("h") != middleware.StateOpen {
			t.Fatalf("state %v, want open", b.State("h"))
		}
		time.Sleep(time.Second)
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.emit(t, t.Context(), "job", "s", nil)
		}()
		synctest.Wait() // the trial is blocked in the handler
		if b.State("h") != middleware.StateHalfOpen {
			t.Fatalf("state %v, want half-open", b.State("h"))
		}
		h.emit(t, t.Context(), "job", "s", nil) // refused: the trial slot is taken
		if calls.get() != 2 || rejected.get() != 1 {
			t.Fatalf("calls %d rejected %d, want 2 and 1", calls.get(), rejected.get())
		}
		close(release)
		<-done
		if b.State("h") != middleware.StateClosed {
			t.Fatalf("state %v, want closed", b.State("h"))
		}
		h.emit(t, t.Context(), "job", "s", nil) // canceled: not counted
		if b.State("h") != middleware.StateClosed {
			t.Fatalf("state after a canceled call %v, want closed", b.State("h"))
		}
		if calls.get() != 3 {
			t.Fatalf("calls %d", calls.get())
		}
	})
}

// TestBreakerPanic: a panic counts as a failure and keeps unwinding to the
// App (which recovers it).
func TestBreakerPanic(t *testing.T) {
	b := middleware.NewBreaker(middleware.BreakerConfig{Key: middleware.ByHandler, FailureThreshold: 1})
	h := newHarness(t, b.Middleware())
	h.app.On("job").Named("p").Do(func(context.Context, *krules.Event) error { panic("boom") })
	h.emit(t, t.Context(), "job", "s", nil)
	var pe *krules.PanicError
	if err := h.lastErr(t); !errors.As(err, &pe) {
		t.Fatalf("err %v, want *krules.PanicError", err)
	}
	if b.State("p") != middleware.StateOpen {
		t.Fatalf("state %v, want open", b.State("p"))
	}
}

// TestBreakerCascadeStillOpens: with the default per-subject key, a handler
// that writes (its Set cascades PropertyChanged to a succeeding handler on
// the same subject, through the same breaker) and then fails must still
// open the circuit: the nested success is not counted.
func TestBreakerCascadeStillOpens(t *testing.T) {
	b := middleware.NewBreaker(middleware.BreakerConfig{FailureThreshold: 3})
	h := newHarness(t, b.Middleware())
	var calls, changed counter
	h.app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
		n := calls.inc()
		if _, _, err := ev.Subject.Set(ctx, "attempt", n); err != nil { // emits PropertyChanged
			return err
		}
		return errTransient
	})
	h.app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { changed.inc(); return nil })
	for range 10 {
		h.emit(t, t.Context(), "order.created", "o-1", nil)
	}
	if got := b.State("o-1"); got != middleware.StateOpen {
		t.Fatalf("state %v after 10 consecutive failures (threshold 3), want open", got)
	}
	if calls.get() != 3 || changed.get() != 3 {
		t.Fatalf("handler ran %d times, cascade %d, want 3 and 3", calls.get(), changed.get())
	}
	open := 0
	for _, f := range h.failures() {
		if errors.Is(f.err, middleware.ErrCircuitOpen) {
			open++
		}
	}
	if open != 7 {
		t.Fatalf("%d ErrCircuitOpen, want 7", open)
	}
}

// TestBreakerHalfOpenTrialCascade: the half-open trial call's own cascade on
// the same subject runs (it is not refused as a second trial), and the
// trial's success closes the circuit.
func TestBreakerHalfOpenTrialCascade(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := middleware.NewBreaker(middleware.BreakerConfig{FailureThreshold: 1, CoolDown: time.Second})
		h := newHarness(t, b.Middleware())
		var fail atomic.Bool
		fail.Store(true)
		var cascaded counter
		h.app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
			if fail.Load() {
				return errTransient
			}
			_, _, err := ev.Subject.Set(ctx, "status", "ok")
			return err
		})
		h.app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { cascaded.inc(); return nil })
		h.emit(t, t.Context(), "order.created", "o-1", nil) // opens
		if got := b.State("o-1"); got != middleware.StateOpen {
			t.Fatalf("state %v, want open", got)
		}
		h.failures()
		time.Sleep(time.Second)
		fail.Store(false)
		h.emit(t, t.Context(), "order.created", "o-1", nil) // the trial
		if fs := h.failures(); len(fs) != 0 {
			t.Fatalf("trial call errors: %v", fs)
		}
		if cascaded.get() != 1 {
			t.Fatalf("PropertyChanged handler of the trial's own Set ran %d times, want 1", cascaded.get())
		}
		if got := b.State("o-1"); got != middleware.StateClosed {
			t.Fatalf("state %v after a successful trial, want closed", got)
		}
	})
}
