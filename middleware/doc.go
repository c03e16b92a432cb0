// Package middleware provides ready-made krules middleware for the patterns
// the KRules advanced guide asks users to hand-write: panic recovery,
// logging, timing, per-handler timeouts, retries with exponential backoff
// and jitter, circuit breakers, dead-letter events and subjects, an event
// dump for debugging, concurrency and rate limits, and subject partitioning.
// It depends on the standard library and krules only; Prometheus metrics
// and OpenTelemetry tracing live in the sub-packages middleware/prom and
// middleware/otel.
//
// # How middleware runs
//
// A krules.Middleware wraps every matching, non-filtered handler of an
// event, once per handler; the first registered (App.Use) is the outermost.
// What a middleware returns is the handler's outcome: the App passes a
// non-nil error to its error handler (krules.WithErrorHandler) and never to
// the emitter. krules.HandlerName(ctx) names the wrapped handler, which is
// what ByHandler keys on.
//
// # A resilient app in a few lines
//
//	app := krules.New()
//	app.Use(
//		middleware.Logging(middleware.LoggingConfig{}),
//		middleware.Resilient(middleware.ResilientConfig{
//			Timeout:    10 * time.Second,
//			Retry:      middleware.RetryConfig{MaxAttempts: 4, InitialBackoff: 200 * time.Millisecond},
//			Breaker:    middleware.BreakerConfig{FailureThreshold: 5, CoolDown: time.Minute},
//			DeadLetter: middleware.DeadLetterConfig{Store: true},
//		}),
//	)
//	app.On("error.handler_failed").Do(func(ctx context.Context, ev *krules.Event) error {
//		slog.Warn("dead letter", "event", ev.Payload()["original_event"], "dlq", ev.Payload()["dlq_subject"])
//		return nil
//	})
//
// Resilient builds, outermost first, Recover → DeadLetter → Timeout →
// CircuitBreaker → Retry → Recover → handler; its documentation explains
// the order. Every stage is also available alone, and Chain composes any
// list.
//
// # Outcomes
//
// Middleware that refuse or give up return errors wrapping sentinel errors,
// so callers (error handlers, DeadLetter's Match, Retry's Retryable, the
// prom outcome label) tell outcomes apart with errors.Is: ErrTimeout,
// ErrRetriesExhausted (also *RetryError with the attempt count),
// ErrCircuitOpen, ErrConcurrencyLimit, ErrRateLimited. Handler panics
// recovered by Recover are *krules.PanicError. Permanent marks an error a
// handler knows is not worth retrying.
//
// # Defaults
//
// Every configuration struct is usable as its zero value; its fields
// document their defaults (Retry: 3 attempts, 100ms doubling to at most
// 10s, 20% jitter; breaker: per subject, opens after 5 consecutive
// failures, 30s cool-down, 1 trial call; dead letter: "error.handler_failed",
// no subject; Resilient: 30s timeout).
//
// # Time
//
// Everything time-based uses the time package only (time.Now, timers), so
// it runs unchanged, and without real waits, under testing/synctest.
//
// # Partitioning
//
// PartitionOf maps a subject name to a partition with 32-bit FNV-1a, a hash
// that is stable across processes and languages. A Partitioner (from
// PARTITION_ID / PARTITION_COUNT with PartitionerFromEnv) gives a Filter
// for the handlers an instance should run for its share of the subjects,
// or the guide's Middleware.
package middleware
