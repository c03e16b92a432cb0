package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

// printErrors is an App error handler that prints what reaches it.
func printErrors(_ context.Context, ev *krules.Event, handler string, err error) {
	fmt.Printf("error handler: %s: %v\n", handler, err)
}

func ExampleChain() {
	app := krules.New()
	tag := func(name string) krules.Middleware {
		return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
			fmt.Println(name, "before")
			defer fmt.Println(name, "after")
			return next(ctx)
		}
	}
	app.Use(middleware.Chain(tag("outer"), tag("inner")))
	app.On("ping").Do(func(context.Context, *krules.Event) error { fmt.Println("handler"); return nil })
	app.Emit(context.Background(), "ping", app.Subject("s"), nil)
	// Output:
	// outer before
	// inner before
	// handler
	// inner after
	// outer after
}

func ExampleRecover() {
	app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, handler string, err error) {
		var pe *krules.PanicError
		fmt.Println(handler, errors.As(err, &pe), pe.Value)
	}))
	// Outer middleware (here: counting failures) see the panic as an error
	// only with Recover inside them.
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		err := next(ctx)
		fmt.Println("outer saw:", err)
		return err
	}, middleware.Recover())
	app.On("x").Named("fragile").Do(func(context.Context, *krules.Event) error { panic("nil map") })
	app.Emit(context.Background(), "x", app.Subject("s"), nil)
	// Output:
	// outer saw: panic: nil map
	// fragile true nil map
}

func ExampleLogging() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "duration" {
				return slog.Attr{} // keep the output stable
			}
			return a
		},
	}))
	app := krules.New(krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	app.Use(middleware.Logging(middleware.LoggingConfig{Logger: logger}))
	app.On("order.*").Named("ship").Do(func(_ context.Context, ev *krules.Event) error {
		if ev.Type == "order.cancelled" {
			return errors.New("already shipped")
		}
		return nil
	})
	app.Emit(context.Background(), "order.created", app.Subject("order-1"), nil)
	app.Emit(context.Background(), "order.cancelled", app.Subject("order-1"), nil)
	// Output:
	// level=INFO msg="krules: handler done" event=order.created subject=order-1 handler=ship
	// level=ERROR msg="krules: handler failed" event=order.cancelled subject=order-1 handler=ship error="already shipped"
}

func ExampleTiming() {
	app := krules.New()
	app.Use(middleware.Timing(func(_ context.Context, ev *krules.Event, handler string, took time.Duration, err error) {
		fmt.Printf("%s/%s took >= 0: %v, err: %v\n", ev.Type, handler, took >= 0, err)
	}))
	app.On("sensor.reading").Named("store").Do(func(context.Context, *krules.Event) error { return nil })
	app.Emit(context.Background(), "sensor.reading", app.Subject("sensor-1"), nil)
	// Output:
	// sensor.reading/store took >= 0: true, err: <nil>
}

func ExampleTimeout() {
	app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, h string, err error) {
		fmt.Println(h, errors.Is(err, middleware.ErrTimeout), errors.Is(err, context.DeadlineExceeded))
	}))
	app.Use(middleware.Timeout(time.Millisecond))
	app.On("report").Named("slow").Do(func(ctx context.Context, _ *krules.Event) error {
		<-ctx.Done() // a handler honouring ctx stops when its time is up
		return ctx.Err()
	})
	app.Emit(context.Background(), "report", app.Subject("r"), nil)
	// Output:
	// slow true true
}

func ExampleRetry() {
	app := krules.New(krules.WithErrorHandler(printErrors))
	app.Use(middleware.Retry(middleware.RetryConfig{
		MaxAttempts:    4,
		InitialBackoff: time.Microsecond, // 100ms by default
		OnRetry: func(_ context.Context, _ *krules.Event, attempt int, err error, _ time.Duration) {
			fmt.Printf("attempt %d failed: %v\n", attempt, err)
		},
	}))
	calls := 0
	app.On("api.call").Named("call").Do(func(context.Context, *krules.Event) error {
		calls++
		if calls < 3 {
			return errors.New("503")
		}
		fmt.Println("attempt", calls, "ok")
		return nil
	})
	app.On("api.call").Named("validate").Do(func(context.Context, *krules.Event) error {
		return middleware.Permanent(errors.New("bad request")) // never retried
	})
	app.Emit(context.Background(), "api.call", app.Subject("client-1"), nil)
	// Output:
	// attempt 1 failed: 503
	// attempt 2 failed: 503
	// attempt 3 ok
	// error handler: validate: bad request
}

func ExampleCircuitBreaker() {
	breaker := middleware.NewBreaker(middleware.BreakerConfig{
		FailureThreshold: 2,           // consecutive failures that open a subject's circuit
		CoolDown:         time.Minute, // before a trial call is let through
		OnStateChange: func(key string, from, to middleware.State) {
			fmt.Printf("circuit %s: %s -> %s\n", key, from, to)
		},
	})
	app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) {
		fmt.Println("skipped:", errors.Is(err, middleware.ErrCircuitOpen))
	}))
	app.Use(breaker.Middleware())
	app.On("payment.process").Do(func(context.Context, *krules.Event) error {
		fmt.Println("calling the gateway")
		return errors.New("gateway down")
	})
	for range 3 {
		app.Emit(context.Background(), "payment.process", app.Subject("order-7"), nil)
	}
	fmt.Println(breaker.State("order-7"), breaker.State("order-8"))
	// Output:
	// calling the gateway
	// skipped: false
	// calling the gateway
	// circuit order-7: closed -> open
	// skipped: false
	// skipped: true
	// open closed
}

func ExampleDeadLetter() {
	ctx := context.Background()
	app := krules.New(krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	app.Use(middleware.DeadLetter(middleware.DeadLetterConfig{
		Store:       true, // also keep the record in a dead-letter subject
		SubjectName: func(_ context.Context, ev *krules.Event) string { return "dlq-" + ev.Subject.Name() },
	}))
	app.On("order.ship").Named("ship").Do(func(context.Context, *krules.Event) error {
		return errors.New("carrier unavailable")
	})
	app.On("error.handler_failed").Do(func(ctx context.Context, ev *krules.Event) error {
		p := ev.Payload()
		fmt.Printf("%s on %s failed in %s: %s (stored in %s)\n",
			p["original_event"], p["subject"], p["handler"], p["error"], p["dlq_subject"])
		return nil
	})
	app.Emit(ctx, "order.ship", app.Subject("order-1"), krules.Payload{"carrier": "ups"})

	v, _ := app.Subject("dlq-order-1").Get(ctx, "payload")
	fmt.Println("stored payload:", v)
	// Output:
	// order.ship on order-1 failed in ship: carrier unavailable (stored in dlq-order-1)
	// stored payload: map[carrier:ups]
}

func ExampleDebug() {
	// Normally switched on by DEBUG_EVENTS=true; Always forces it here.
	app := krules.New()
	app.Use(middleware.Debug(middleware.DebugConfig{
		Writer: os.Stdout,
		Always: true,
		Now:    func() time.Time { return time.Time{} }, // stable durations for the example
	}))
	app.On("user.created").Named("welcome").Do(func(context.Context, *krules.Event) error { return nil })
	app.Emit(context.Background(), "user.created", app.Subject("user-1"), krules.Payload{"email": "a@b.c"})
	// Output:
	// === Event: user.created ===
	// Subject: user-1
	// Handler: welcome
	// Payload: {
	//   "email": "a@b.c"
	// }
	// Duration: 0.000s
	// ==================================================
}

func ExampleConcurrencyLimit() {
	app := krules.New(krules.WithErrorHandler(printErrors))
	// At most one "export" at a time across all goroutines; the others are
	// refused instead of queued (FailFast).
	app.Use(middleware.ConcurrencyLimit(middleware.LimitConfig{Max: 1, FailFast: true}))
	app.On("export").Named("export").Do(func(ctx context.Context, ev *krules.Event) error {
		if ev.Payload()["nested"] == nil {
			// A cascade back into the same handler keeps its slot: no deadlock.
			return ev.Emit(ctx, "export", krules.Payload{"nested": true})
		}
		fmt.Println("nested export ran")
		return nil
	})
	app.Emit(context.Background(), "export", app.Subject("report-1"), nil)
	// Output:
	// nested export ran
}

func ExampleRateLimit() {
	app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, h string, err error) {
		fmt.Println(h, "rate limited:", errors.Is(err, middleware.ErrRateLimited))
	}))
	// One notification per second per handler, bursts of 2; refuse the rest.
	app.Use(middleware.RateLimit(middleware.RateLimitConfig{Rate: 1, Burst: 2, FailFast: true}))
	app.On("alert.*").Named("notify").Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Println("notify", ev.Payload()["n"])
		return nil
	})
	for n := range 3 {
		app.Emit(context.Background(), "alert.critical", app.Subject("svc"), krules.Payload{"n": n})
	}
	// Output:
	// notify 0
	// notify 1
	// notify rate limited: true
}

func ExamplePartitioner() {
	// Instance 1 of 3 (normally: middleware.PartitionerFromEnv() reading
	// PARTITION_ID and PARTITION_COUNT).
	p, err := middleware.NewPartitioner(1, 3)
	if err != nil {
		panic(err)
	}
	app := krules.New()
	app.On("device.reading").When(p.Filter()).Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Println("instance 1 handles", ev.Subject.Name())
		return nil
	})
	for _, d := range []string{"device-1", "device-2", "device-3", "device-4"} {
		fmt.Println(d, "-> partition", middleware.PartitionOf(d, 3))
		app.Emit(context.Background(), "device.reading", app.Subject(d), nil)
	}
	// Output:
	// device-1 -> partition 1
	// instance 1 handles device-1
	// device-2 -> partition 1
	// instance 1 handles device-2
	// device-3 -> partition 0
	// device-4 -> partition 1
	// instance 1 handles device-4
}

func ExampleResilient() {
	ctx := context.Background()
	app := krules.New(krules.WithErrorHandler(printErrors))
	app.Use(middleware.Resilient(middleware.ResilientConfig{
		Timeout:    10 * time.Second,
		Retry:      middleware.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Microsecond},
		Breaker:    middleware.BreakerConfig{FailureThreshold: 1, CoolDown: time.Minute},
		DeadLetter: middleware.DeadLetterConfig{Absorb: true}, // recorded once, as a dead letter
	}))
	attempts := 0
	app.On("invoice.send").Named("send").Do(func(context.Context, *krules.Event) error {
		attempts++
		return errors.New("smtp timeout")
	})
	app.On("error.handler_failed").Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Printf("dead letter: %s after %v attempts: %s\n", ev.Payload()["original_event"], ev.Payload()["attempts"], ev.Payload()["error"])
		return nil
	})
	app.Emit(ctx, "invoice.send", app.Subject("inv-1"), nil) // 3 attempts, circuit opens
	app.Emit(ctx, "invoice.send", app.Subject("inv-1"), nil) // skipped by the open circuit
	fmt.Println("handler ran", attempts, "times")
	// Output:
	// dead letter: invoice.send after 3 attempts: krules/middleware: handler "send" failed after 3 attempts (retries exhausted): smtp timeout
	// dead letter: invoice.send after 0 attempts: krules/middleware: handler "send" on "inv-1" (invoice.send) skipped: circuit open (key "inv-1")
	// handler ran 3 times
}
