package middleware

import (
	"cmp"
	"context"
	"time"

	"github.com/krules-go/krules"
)

// DefaultTimeout is ResilientConfig's default Timeout.
const DefaultTimeout = 30 * time.Second

// ResilientConfig configures Resilient. The zero value enables every stage
// with its defaults.
type ResilientConfig struct {
	// DeadLetter configures the dead-letter stage; NoDeadLetter removes it.
	DeadLetter   DeadLetterConfig
	NoDeadLetter bool
	// Timeout bounds each handler invocation, all attempts and backoff waits
	// included. Default DefaultTimeout (30s); a negative value removes the
	// stage. For a bound per attempt use Retry.AttemptTimeout.
	Timeout time.Duration
	// Breaker configures the circuit breaker; NoBreaker removes it.
	Breaker   BreakerConfig
	NoBreaker bool
	// Retry configures the retries; NoRetry removes them.
	Retry   RetryConfig
	NoRetry bool
}

// Resilient composes the production stack in this order, outermost first:
//
//	Recover → DeadLetter → Timeout → CircuitBreaker → Retry → Recover → handler
//
// Why this order:
//   - the outer Recover turns a panic in any stage into an error;
//   - DeadLetter sees only the final outcome (after every retry, or the
//     breaker's refusal), once per invocation, and runs outside the timeout so
//     its own emit is not cut short;
//   - Timeout bounds the whole invocation, retries and waits included, and
//     Retry never starts a wait that would end past it;
//   - the breaker counts one outcome per invocation (after its retries), and
//     an open circuit skips the retries altogether (ErrCircuitOpen, which is
//     then dead-lettered);
//   - the inner Recover makes a handler panic an error that the stages see:
//     it is not retried (DefaultRetryable), counts against the circuit and is
//     dead-lettered.
//
// Dead-letter events (DeadLetter.EventType) bypass the circuit breaker: they
// are emitted on the failing subject, and with the default per-subject key a
// dead-letter handler's success would otherwise reset the very circuit that
// is counting the subject's failures.
//
// Each call builds new state (a new breaker): call it once per App.
func Resilient(cfg ResilientConfig) krules.Middleware {
	mws := []krules.Middleware{Recover()}
	if !cfg.NoDeadLetter {
		mws = append(mws, DeadLetter(cfg.DeadLetter))
	}
	switch {
	case cfg.Timeout == 0:
		mws = append(mws, Timeout(DefaultTimeout))
	case cfg.Timeout > 0:
		mws = append(mws, Timeout(cfg.Timeout))
	}
	if !cfg.NoBreaker {
		cb := CircuitBreaker(cfg.Breaker)
		dlType := cmp.Or(cfg.DeadLetter.EventType, DefaultDeadLetterEvent)
		mws = append(mws, func(ctx context.Context, ev *krules.Event, next krules.Next) error {
			if ev.Type == dlType {
				return next(ctx) // see "Dead-letter events" above
			}
			return cb(ctx, ev, next)
		})
	}
	if !cfg.NoRetry {
		mws = append(mws, Retry(cfg.Retry))
	}
	mws = append(mws, Recover())
	return Chain(mws...)
}
