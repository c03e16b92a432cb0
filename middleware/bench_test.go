package middleware_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

// BenchmarkEmit measures one Emit with one matching handler, with each
// middleware alone, against no middleware at all.
func BenchmarkEmit(b *testing.B) {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	cases := []struct {
		name string
		mws  []krules.Middleware
	}{
		{"none", nil},
		{"recover", []krules.Middleware{middleware.Recover()}},
		{"logging-text-discard", []krules.Middleware{middleware.Logging(middleware.LoggingConfig{Logger: discard})}},
		{"logging-disabled", []krules.Middleware{middleware.Logging(middleware.LoggingConfig{Logger: slog.New(slog.DiscardHandler)})}},
		{"timeout", []krules.Middleware{middleware.Timeout(middleware.DefaultTimeout)}},
		{"retry", []krules.Middleware{middleware.Retry(middleware.RetryConfig{})}},
		{"breaker", []krules.Middleware{middleware.CircuitBreaker(middleware.BreakerConfig{})}},
		{"resilient", []krules.Middleware{middleware.Resilient(middleware.ResilientConfig{})}},
		{"resilient-no-timeout", []krules.Middleware{middleware.Resilient(middleware.ResilientConfig{Timeout: -1})}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			app := krules.New(krules.WithLogger(discard))
			app.Use(c.mws...)
			app.On("bench.event").Named("h").Do(func(context.Context, *krules.Event) error { return nil })
			s := app.Subject("bench-subject")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := app.Emit(ctx, "bench.event", s, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
