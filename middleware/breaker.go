package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/krules-go/krules"
)

// Defaults of BreakerConfig.
const (
	DefaultFailureThreshold = 5
	DefaultCoolDown         = 30 * time.Second
	DefaultHalfOpenMaxCalls = 1
	DefaultSuccessThreshold = 1
)

// State is the state of one circuit.
type State int

// Circuit states.
const (
	// StateClosed: calls go through; consecutive failures are counted.
	StateClosed State = iota
	// StateOpen: calls are skipped with ErrCircuitOpen until the cool-down
	// has passed.
	StateOpen
	// StateHalfOpen: after the cool-down, up to HalfOpenMaxCalls trial calls
	// go through; SuccessThreshold successes close the circuit, one failure
	// opens it again.
	StateHalfOpen
)

// String returns "closed", "open" or "half-open".
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateOpen:
		return "open"
	case StateHalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// BreakerConfig configures a circuit breaker. The zero value gives the
// defaults.
type BreakerConfig struct {
	// Key selects the circuit of an invocation. Default BySubject (one
	// circuit per subject, as in the KRules guide: the failures of all the
	// subject's handlers count together, and any of them succeeding resets
	// the count); ByHandler and BySubjectAndHandler are the alternatives.
	Key KeyFunc
	// FailureThreshold is the number of consecutive failures that opens a
	// closed circuit. Default DefaultFailureThreshold (5); < 1 means default.
	FailureThreshold int
	// CoolDown is how long an open circuit stays open before it lets trial
	// calls through (half-open). Default DefaultCoolDown (30s).
	CoolDown time.Duration
	// HalfOpenMaxCalls is how many trial calls may run at once in the
	// half-open state; more are skipped as if open.
	// Default DefaultHalfOpenMaxCalls (1).
	HalfOpenMaxCalls int
	// SuccessThreshold is the number of successful trial calls that closes a
	// half-open circuit. Default DefaultSuccessThreshold (1).
	SuccessThreshold int
	// IsFailure decides which errors count against the circuit. Default: any
	// error except context.Canceled (the caller went away, the handler did
	// not fail) and the refusals of this package (ErrCircuitOpen,
	// ErrConcurrencyLimit, ErrRateLimited). Errors that do not count leave
	// the circuit as it was.
	IsFailure func(error) bool
	// OnStateChange, if set, is called after every transition, outside the
	// breaker's lock (so it may call Breaker.State). It must be safe for
	// concurrent use.
	OnStateChange func(key string, from, to State)
	// OnReject, if set, is called for every skipped invocation, before the
	// middleware returns its ErrCircuitOpen error.
	OnReject func(ctx context.Context, ev *krules.Event, key string)
}

// Breaker is a set of circuit breakers, one per key (see BreakerConfig.Key).
// It is safe for concurrent use.
//
// Memory: a key is kept only while its circuit is not closed or has
// failures; a success in the closed state forgets it at once. Idle keys are
// swept when a new key is added and either the number of keys has doubled
// since the last sweep or a CoolDown has passed since it: a sweep forgets
// every circuit with no trial call running and no activity (failure,
// opening, trial call) for at least CoolDown, so keying by subject keeps
// about as many keys as were active within one CoolDown. Forgetting a
// closed circuit drops its failure count (the failures were not
// consecutive within a CoolDown); forgetting an open or half-open one closes
// it, reported to OnStateChange as a transition to StateClosed, and its next
// call runs as in a closed circuit rather than as a trial.
type Breaker struct {
	cfg       BreakerConfig
	mu        sync.Mutex
	circuits  map[string]*circuit
	gen       uint64
	sweepAt   int       // sweep when a new key makes len(circuits) reach this
	lastSweep time.Time // or when a CoolDown has passed since this
}

// breakerSweepMin is the number of keys under which Breaker sweeps only by
// time.
const breakerSweepMin = 1024

type circuit struct {
	state     State
	failures  int       // consecutive failures (closed)
	openedAt  time.Time // when it opened (open)
	last      time.Time // last activity: failure, opening, trial start or end
	inFlight  int       // trial calls running (half-open)
	successes int       // successful trial calls (half-open)
	gen       uint64    // half-open period the trial calls belong to
}

// NewBreaker returns a Breaker with cfg (defaults filled in).
func NewBreaker(cfg BreakerConfig) *Breaker {
	if cfg.Key == nil {
		cfg.Key = BySubject
	}
	if cfg.FailureThreshold < 1 {
		cfg.FailureThreshold = DefaultFailureThreshold
	}
	if cfg.CoolDown <= 0 {
		cfg.CoolDown = DefaultCoolDown
	}
	if cfg.HalfOpenMaxCalls < 1 {
		cfg.HalfOpenMaxCalls = DefaultHalfOpenMaxCalls
	}
	if cfg.SuccessThreshold < 1 {
		cfg.SuccessThreshold = DefaultSuccessThreshold
	}
	if cfg.IsFailure == nil {
		cfg.IsFailure = defaultIsFailure
	}
	return &Breaker{cfg: cfg, circuits: map[string]*circuit{}, sweepAt: breakerSweepMin, lastSweep: time.Now()}
}

func defaultIsFailure(err error) bool {
	return err != nil && !errors.Is(err, context.Canceled) &&
		!errors.Is(err, ErrCircuitOpen) && !errors.Is(err, ErrConcurrencyLimit) && !errors.Is(err, ErrRateLimited)
}

// CircuitBreaker returns the middleware of a new Breaker with cfg; use
// NewBreaker when you need to read the state of the circuits.
func CircuitBreaker(cfg BreakerConfig) krules.Middleware { return NewBreaker(cfg).Middleware() }

// State returns the state of key's circuit (StateClosed for a key never
// seen or forgotten, see Breaker). An open circuit whose cool-down has passed is reported as
// StateHalfOpen only once a call has been let through; until then it is
// StateOpen.
func (b *Breaker) State(key string) State {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.circuits[key]; ok {
		return c.state
	}
	return StateClosed
}

// breakerHeld marks, in a call chain's ctx, a key held by an admitted call.
type breakerHeld struct {
	b   *Breaker
	key string
}

type transition struct {
	key      string
	from, to State
}

// Middleware returns the breaker's middleware. An invocation whose circuit
// is open (or half-open with all trial slots taken) does not run: the
// middleware calls OnReject and returns an error wrapping ErrCircuitOpen,
// naming the key and the handler, which the App's error handler receives
// (or DeadLetter dead-letters, under Resilient).
//
// The breaker is reentrant: a call it admitted holds its key for the rest
// of the call chain, and invocations that the call cascades into (the
// handler's own Set emits PropertyChanged on the same subject, for
// instance) with the same key pass straight through, neither counted nor
// refused. Only the outermost invocation of a key counts, so a handler that
// writes and then fails still opens the circuit, and a half-open trial's
// own cascade is not refused as a second trial.
func (b *Breaker) Middleware() krules.Middleware {
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		key := b.cfg.Key(ctx, ev)
		hk := breakerHeld{b, key}
		if ctx.Value(hk) != nil {
			return next(ctx) // reentrant: this call chain already holds key
		}
		gen, trial, ok, tr := b.allow(key)
		b.notify(tr)
		if !ok {
			if b.cfg.OnReject != nil {
				b.cfg.OnReject(ctx, ev, key)
			}
			return fmt.Errorf("krules/middleware: handler %q on %q (%s) skipped: %w (key %q)",
				krules.HandlerName(ctx), subjectName(ev), ev.Type, ErrCircuitOpen, key)
		}
		done := false
		defer func() {
			if !done { // a panic counts as a failure and keeps unwinding
				b.notifyAll(b.record(key, gen, trial, true))
			}
		}()
		err := next(context.WithValue(ctx, hk, true))
		done = true
		if err != nil && !b.cfg.IsFailure(err) {
			b.notify(b.release(key, gen, trial))
			return err
		}
		b.notifyAll(b.record(key, gen, trial, err != nil))
		return err
	}
}

func (b *Breaker) notify(tr *transition) {
	if tr != nil && b.cfg.OnStateChange != nil {
		b.cfg.OnStateChange(tr.key, tr.from, tr.to)
	}
}

func (b *Breaker) notifyAll(trs []transition) {
	for i := range trs {
		b.notify(&trs[i])
	}
}

// sweep forgets idle circuits (see Breaker) and returns the transitions of
// the open and half-open ones it closed; called with b.mu held.
func (b *Breaker) sweep(now time.Time) []transition {
	var trs []transition
	for k, c := range b.circuits {
		if c.inFlight > 0 || now.Sub(c.last) < b.cfg.CoolDown {
			continue
		}
		delete(b.circuits, k)
		if c.state != StateClosed {
			trs = append(trs, transition{k, c.state, StateClosed})
		}
	}
	b.sweepAt = max(breakerSweepMin, 2*len(b.circuits))
	b.lastSweep = now
	return trs
}

// allow decides whether a call may run; trial reports a half-open trial.
func (b *Breaker) allow(key string) (gen uint64, trial, ok bool, tr *transition) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, found := b.circuits[key]
	if !found {
		return 0, false, true, nil
	}
	switch c.state {
	case StateOpen:
		if time.Since(c.openedAt) < b.cfg.CoolDown {
			return 0, false, false, nil
		}
		b.gen++
		c.state, c.gen, c.inFlight, c.successes, c.last = StateHalfOpen, b.gen, 1, 0, time.Now()
		return c.gen, true, true, &transition{key, StateOpen, StateHalfOpen}
	case StateHalfOpen:
		if c.inFlight >= b.cfg.HalfOpenMaxCalls {
			return 0, false, false, nil
		}
		c.inFlight++
		c.last = time.Now()
		return c.gen, true, true, nil
	}
	return 0, false, true, nil
}

// record applies the outcome of a call admitted by allow and returns the
// transitions to report (its own, and those of a sweep it ran).
func (b *Breaker) record(key string, gen uint64, trial, failed bool) []transition {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	c, found := b.circuits[key]
	if trial {
		if !found || c.state != StateHalfOpen || c.gen != gen {
			return nil // stale trial
		}
		c.inFlight--
		c.last = now
		if failed {
			c.state, c.openedAt, c.failures = StateOpen, now, 0
			return []transition{{key, StateHalfOpen, StateOpen}}
		}
		c.successes++
		if c.successes >= b.cfg.SuccessThreshold {
			delete(b.circuits, key)
			return []transition{{key, StateHalfOpen, StateClosed}}
		}
		return nil
	}
	// A call admitted while closed: it counts only if still closed.
	if found && c.state != StateClosed {
		return nil
	}
	if !failed {
		delete(b.circuits, key)
		return nil
	}
	var trs []transition
	if !found {
		if len(b.circuits)+1 >= b.sweepAt || now.Sub(b.lastSweep) >= b.cfg.CoolDown {
			trs = b.sweep(now)
		}
		c = &circuit{state: StateClosed}
		b.circuits[key] = c
	}
	c.failures++
	c.last = now
	if c.failures >= b.cfg.FailureThreshold {
		c.state, c.openedAt, c.failures = StateOpen, now, 0
		trs = append(trs, transition{key, StateClosed, StateOpen})
	}
	return trs
}

// release frees a trial slot without counting the outcome.
func (b *Breaker) release(key string, gen uint64, trial bool) *transition {
	if !trial {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.circuits[key]; ok && c.state == StateHalfOpen && c.gen == gen {
		c.inFlight--
		c.last = time.Now()
	}
	return nil
}
