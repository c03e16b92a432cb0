package middleware

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/krules-go/krules"
)

// LimitConfig configures ConcurrencyLimit.
type LimitConfig struct {
	// Max is the number of invocations of one key that may run at once.
	// Default 1; values < 1 mean the default.
	Max int
	// Key selects the limit an invocation counts against. Default ByHandler
	// (one limit per handler).
	Key KeyFunc
	// FailFast makes an invocation that finds every slot taken return an
	// error wrapping ErrConcurrencyLimit at once, without running the
	// handler. Default false: it waits for a slot or for ctx to end (then
	// ctx's error is returned and the handler does not run).
	FailFast bool
}

// ConcurrencyLimit bounds how many invocations of one key (by default one
// handler) run at the same time across the goroutines that emit events
// (transport workers, HTTP requests, ...). It is reentrant: a handler that
// holds a slot and, through a cascade, reaches the same key again in the
// same call chain passes through, so a cascade cannot deadlock on its own
// limit. Keys with no invocation running are forgotten.
func ConcurrencyLimit(cfg LimitConfig) krules.Middleware {
	if cfg.Max < 1 {
		cfg.Max = 1
	}
	if cfg.Key == nil {
		cfg.Key = ByHandler
	}
	l := &limiter{cfg: cfg, sems: map[string]*semaphore{}}
	return l.middleware
}

type limiter struct {
	cfg  LimitConfig
	mu   sync.Mutex
	sems map[string]*semaphore
}

type semaphore struct {
	slots chan struct{}
	refs  int
}

type heldKey struct {
	l   *limiter
	key string
}

func (l *limiter) middleware(ctx context.Context, ev *krules.Event, next krules.Next) error {
	key := l.cfg.Key(ctx, ev)
	hk := heldKey{l, key}
	if ctx.Value(hk) != nil {
		return next(ctx) // reentrant: this call chain already holds a slot
	}
	l.mu.Lock()
	s := l.sems[key]
	if s == nil {
		s = &semaphore{slots: make(chan struct{}, l.cfg.Max)}
		l.sems[key] = s
	}
	s.refs++
	l.mu.Unlock()
	defer l.unref(key, s)

	if l.cfg.FailFast {
		select {
		case s.slots <- struct{}{}:
		default:
			return fmt.Errorf("krules/middleware: handler %q on %q (%s) skipped: %w (key %q, max %d)",
				krules.HandlerName(ctx), subjectName(ev), ev.Type, ErrConcurrencyLimit, key, l.cfg.Max)
		}
	} else {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer func() { <-s.slots }()
	return next(context.WithValue(ctx, hk, true))
}

func (l *limiter) unref(key string, s *semaphore) {
	l.mu.Lock()
	s.refs--
	if s.refs == 0 {
		delete(l.sems, key)
	}
	l.mu.Unlock()
}

// RateLimitConfig configures RateLimit.
type RateLimitConfig struct {
	// Rate is the sustained number of invocations per second allowed per
	// key. Required: RateLimit with Rate <= 0 (or NaN) is a pass-through.
	Rate float64
	// Burst is how many invocations may run back to back after a quiet
	// period (the bucket size). Default 1; values < 1 mean the default.
	Burst int
	// Key selects the bucket. Default ByHandler.
	Key KeyFunc
	// FailFast makes an invocation that finds no token return an error
	// wrapping ErrRateLimited at once, without running the handler. Default
	// false: it waits for its token (ctx permitting: if ctx ends first, or
	// ctx's deadline is earlier than the token, ctx's error is returned and
	// no token is spent).
	FailFast bool
}

// RateLimit is a token bucket per key (by default per handler): Rate
// invocations per second on average, at most Burst at once. Buckets that
// have refilled completely are dropped when the number of keys grows, so
// keying by subject does not grow without bound.
func RateLimit(cfg RateLimitConfig) krules.Middleware {
	if !(cfg.Rate > 0) || math.IsInf(cfg.Rate, 0) {
		return func(ctx context.Context, _ *krules.Event, next krules.Next) error { return next(ctx) }
	}
	if cfg.Burst < 1 {
		cfg.Burst = 1
	}
	if cfg.Key == nil {
		cfg.Key = ByHandler
	}
	r := &rateLimiter{cfg: cfg, buckets: map[string]*bucket{}, sweepAt: 1024}
	return r.middleware
}

type rateLimiter struct {
	cfg     RateLimitConfig
	mu      sync.Mutex
	buckets map[string]*bucket
	sweepAt int
}

type bucket struct {
	tokens float64
	last   time.Time
}

// reserve takes a token for key and returns how long to wait for it; with
// failFast it takes nothing and returns ok=false when no token is ready.
func (r *rateLimiter) reserve(key string, deadline time.Time) (wait time.Duration, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	b := r.buckets[key]
	if b == nil {
		if len(r.buckets) >= r.sweepAt {
			r.sweep(now)
		}
		b = &bucket{tokens: float64(r.cfg.Burst), last: now}
		r.buckets[key] = b
	}
	b.tokens = math.Min(float64(r.cfg.Burst), b.tokens+now.Sub(b.last).Seconds()*r.cfg.Rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	if r.cfg.FailFast {
		return 0, false
	}
	wait = time.Duration((1 - b.tokens) / r.cfg.Rate * float64(time.Second))
	if !deadline.IsZero() && now.Add(wait).After(deadline) {
		return wait, false
	}
	b.tokens--
	return wait, true
}

// sweep drops full buckets (idle keys); called with r.mu held.
func (r *rateLimiter) sweep(now time.Time) {
	for k, b := range r.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*r.cfg.Rate >= float64(r.cfg.Burst) {
			delete(r.buckets, k)
		}
	}
	r.sweepAt = max(1024, 2*len(r.buckets))
}

func (r *rateLimiter) giveBack(key string) {
	r.mu.Lock()
	if b := r.buckets[key]; b != nil {
		b.tokens = math.Min(float64(r.cfg.Burst), b.tokens+1)
	}
	r.mu.Unlock()
}

func (r *rateLimiter) middleware(ctx context.Context, ev *krules.Event, next krules.Next) error {
	key := r.cfg.Key(ctx, ev)
	deadline, _ := ctx.Deadline()
	wait, ok := r.reserve(key, deadline)
	if !ok {
		if r.cfg.FailFast {
			return fmt.Errorf("krules/middleware: handler %q on %q (%s) skipped: %w (key %q, %g/s)",
				krules.HandlerName(ctx), subjectName(ev), ev.Type, ErrRateLimited, key, r.cfg.Rate)
		}
		return fmt.Errorf("krules/middleware: handler %q on %q (%s): token in %v is past ctx deadline: %w",
			krules.HandlerName(ctx), subjectName(ev), ev.Type, wait, context.DeadlineExceeded)
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			r.giveBack(key)
			return ctx.Err()
		}
	}
	return next(ctx)
}
