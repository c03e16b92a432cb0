package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/krules-go/krules"
)

// Timeout gives every handler invocation (with the inner middleware) a ctx
// that is cancelled d after it starts. Go cannot stop a goroutine, so the
// handler must honour ctx (every krules and storage call does); Timeout waits
// for it to return and keeps dispatch depth-first.
//
// When the handler returns an error after its deadline passed, Timeout
// returns an error wrapping both ErrTimeout and the handler's error (usually
// context.DeadlineExceeded). When the handler returns nil, even late, its
// work is done and Timeout returns nil. A deadline of the caller's ctx that
// is earlier than d is the caller's, not a timeout of this middleware: the
// handler's error is then returned unchanged. d <= 0 gives a pass-through.
func Timeout(d time.Duration) krules.Middleware {
	if d <= 0 {
		return func(ctx context.Context, _ *krules.Event, next krules.Next) error { return next(ctx) }
	}
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		tctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		err := next(tctx)
		if err != nil && errors.Is(tctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			return fmt.Errorf("krules/middleware: handler %q on %q (%s): %w after %v: %w",
				krules.HandlerName(ctx), subjectName(ev), ev.Type, ErrTimeout, d, err)
		}
		return err
	}
}
