package middleware

import (
	"context"
	"runtime/debug"

	"github.com/krules-go/krules"
)

// KeyFunc picks the key a stateful middleware (CircuitBreaker,
// ConcurrencyLimit, RateLimit) keeps its state under, for one handler
// invocation. It must be safe for concurrent use.
type KeyFunc func(ctx context.Context, ev *krules.Event) string

// BySubject keys state by the event's subject name: one circuit (or limit)
// per subject, shared by all handlers.
func BySubject(_ context.Context, ev *krules.Event) string { return subjectName(ev) }

// ByHandler keys state by the wrapped handler's name (krules.HandlerName):
// one circuit (or limit) per handler, shared by all subjects.
func ByHandler(ctx context.Context, _ *krules.Event) string { return krules.HandlerName(ctx) }

// BySubjectAndHandler keys state by handler and subject ("handler|subject").
func BySubjectAndHandler(ctx context.Context, ev *krules.Event) string {
	return krules.HandlerName(ctx) + "|" + subjectName(ev)
}

func subjectName(ev *krules.Event) string {
	if ev == nil || ev.Subject == nil {
		return ""
	}
	return ev.Subject.Name()
}

// Chain composes middleware into one: the first is the outermost, as with
// App.Use. Nil entries are skipped; Chain() is a pass-through.
func Chain(mws ...krules.Middleware) krules.Middleware {
	var list []krules.Middleware
	for _, m := range mws {
		if m != nil {
			list = append(list, m)
		}
	}
	switch len(list) {
	case 0:
		return func(ctx context.Context, _ *krules.Event, next krules.Next) error { return next(ctx) }
	case 1:
		return list[0]
	}
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		return runChain(ctx, ev, list, next)
	}
}

func runChain(ctx context.Context, ev *krules.Event, list []krules.Middleware, next krules.Next) error {
	if len(list) == 0 {
		return next(ctx)
	}
	return list[0](ctx, ev, func(ctx context.Context) error {
		return runChain(ctx, ev, list[1:], next)
	})
}

// Recover turns a panic in the rest of the chain (inner middleware and the
// handler) into an error, a *krules.PanicError carrying the panic value and
// the stack, which it returns. The App already recovers every handler, so
// Recover matters where outer middleware must see a panic as an ordinary
// error: place it inside Logging, DeadLetter, prom or otel to have panics
// logged, dead-lettered or counted. errors.Is/As reach the panic value when
// it is an error.
func Recover() krules.Middleware {
	return func(ctx context.Context, _ *krules.Event, next krules.Next) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = &krules.PanicError{Value: r, Stack: debug.Stack()}
			}
		}()
		return next(ctx)
	}
}
