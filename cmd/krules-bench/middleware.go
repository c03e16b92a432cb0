package main

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

func init() {
	register(Group{Name: "middleware", Setup: middlewareRows})
}

// middlewareRows measures one Emit with one handler through each
// middleware, against the same Emit without middleware.
func middlewareRows() ([]Row, func(), error) {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	emitWith := func(mws ...krules.Middleware) func(b *testing.B) {
		app := krules.New(krules.WithLogger(discard))
		app.Use(mws...)
		app.On("bench.event").Named("h").Do(func(context.Context, *krules.Event) error { return nil })
		s := app.Subject("bench-subject")
		ctx := context.Background()
		return func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := app.Emit(ctx, "bench.event", s, nil); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	base := emitWith()
	row := func(name string, mws ...krules.Middleware) Row {
		return Row{Name: "middleware/" + name, Run: emitWith(mws...), Baseline: "emit without middleware", Base: base}
	}
	return []Row{
		row("recover", middleware.Recover()),
		row("logging-text-discard", middleware.Logging(middleware.LoggingConfig{Logger: discard})),
		row("logging-disabled", middleware.Logging(middleware.LoggingConfig{Logger: slog.New(slog.DiscardHandler)})),
		row("breaker", middleware.CircuitBreaker(middleware.BreakerConfig{})),
		row("resilient", middleware.Resilient(middleware.ResilientConfig{})),
		row("resilient-no-timeout", middleware.Resilient(middleware.ResilientConfig{Timeout: -1})),
	}, nil, nil
}
