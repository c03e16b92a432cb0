package krules_test

// The core patterns of the advanced guide (ADVANCED_PATTERNS.md of Python
// KRules), in Go: event cascades, the three ways to avoid handler loops, error
// events and a dead-letter subject, the retry counter, and the cascade depth
// limit that turns an accidental loop into an error.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/krules-go/krules"
)

// Event flows are best designed as a DAG: every handler reacts to one step
// and emits the next, so the chain always ends.
//
//	order.submitted → order.validated → payment.completed → order.shipped
//
// Dispatch is depth first: each emit returns after the whole rest of the
// chain ran.
func Example_eventCascade() {
	ctx := context.Background()
	app := krules.New()

	// A tracer on every event (registered first, so it prints each event
	// before the event's other handlers run).
	app.On("*").Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Printf("  %s on %s\n", ev.Type, ev.Subject)
		return nil
	})
	app.On("order.submitted").Do(func(ctx context.Context, ev *krules.Event) error {
		total, err := krules.GetAs[float64](ctx, ev.Subject, "total", krules.Default(0))
		if err != nil {
			return err
		}
		if total > 0 {
			return ev.Emit(ctx, "order.validated", nil)
		}
		return nil
	})
	app.On("order.validated").Do(func(ctx context.Context, ev *krules.Event) error {
		// Process the payment...
		return ev.Emit(ctx, "payment.completed", nil)
	})
	app.On("payment.completed").Do(func(ctx context.Context, ev *krules.Event) error {
		if _, _, err := ev.Subject.Set(ctx, "status", "shipped"); err != nil {
			return err
		}
		return ev.Emit(ctx, "order.shipped", nil)
	})

	for _, o := range []struct {
		name  string
		total int
	}{{"order-1", 120}, {"order-2", 0}} {
		order := app.Subject(o.name)
		order.Set(ctx, "total", o.total, krules.Muted())
		fmt.Println(o.name + ":")
		if err := app.Emit(ctx, "order.submitted", order, nil); err != nil {
			fmt.Println("emit:", err)
		}
		status, _ := order.Get(ctx, "status", krules.Default("not shipped"))
		fmt.Println("  status:", status)
	}
	// Output:
	// order-1:
	//   order.submitted on order-1
	//   order.validated on order-1
	//   payment.completed on order-1
	//   subject-property-changed on order-1
	//   order.shipped on order-1
	//   status: shipped
	// order-2:
	//   order.submitted on order-2
	//   status: not shipped
}

// A handler that sets, on every property change, a property whose change it
// hears again would loop. Solution 1: set it Muted, which writes without
// emitting an event.
func Example_avoidLoopsMuted() {
	ctx := context.Background()
	app := krules.New()
	runs := 0
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		runs++
		_, _, err := ev.Subject.Set(ctx, "counter", krules.Inc(1), krules.Muted())
		return err
	})

	user := app.Subject("user-1")
	user.Set(ctx, "name", "John")
	user.Set(ctx, "email", "john@example.com")
	counter, _ := user.Get(ctx, "counter")
	fmt.Printf("handler runs: %d, counter: %v\n", runs, counter)
	// Output:
	// handler runs: 2, counter: 2
}

// Solution 2: a filter that ignores the handler's own property. The change of
// "counter" is still an event (other handlers may want it); this handler just
// does not react to it.
func Example_avoidLoopsFilter() {
	ctx := context.Background()
	app := krules.New()
	runs := 0
	var seen []string
	app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
		seen = append(seen, ev.PropertyName)
		return nil
	})
	app.On(krules.PropertyChanged).
		When(func(_ context.Context, ev *krules.Event) bool { return ev.PropertyName != "counter" }).
		Do(func(ctx context.Context, ev *krules.Event) error {
			runs++
			_, _, err := ev.Subject.Set(ctx, "counter", krules.Inc(1))
			return err
		})

	user := app.Subject("user-1")
	user.Set(ctx, "name", "John")
	user.Set(ctx, "email", "john@example.com")
	counter, _ := user.Get(ctx, "counter")
	fmt.Printf("handler runs: %d, counter: %v\n", runs, counter)
	fmt.Println("change events:", seen)
	// Output:
	// handler runs: 2, counter: 2
	// change events: [name counter email counter]
}

// Solution 3: keep the handler's bookkeeping in an extended property, which
// never emits.
func Example_avoidLoopsExtended() {
	ctx := context.Background()
	app := krules.New()
	runs := 0
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		runs++
		_, _, err := ev.Subject.SetExt(ctx, "internal_counter", krules.Update(func(n int64) int64 {
			return n + 1 // missing counts as 0
		}))
		return err
	})

	user := app.Subject("user-1")
	user.Set(ctx, "name", "John")
	user.Set(ctx, "email", "john@example.com")
	counter, _ := user.GetExt(ctx, "internal_counter")
	keys, _ := user.Keys(ctx)
	fmt.Printf("handler runs: %d, internal_counter: %v, properties: %v\n", runs, counter, keys)
	// Output:
	// handler runs: 2, internal_counter: 2, properties: [name email]
}

// The loop the three solutions avoid. KRules Go bounds how deeply emits may
// nest: past the limit the write is refused with ErrCascadeDepth, which
// reaches the error handler, and the loop ends instead of overflowing the
// stack. Every write made below the limit stays.
func ExampleWithCascadeLimit() {
	ctx := context.Background()
	app := krules.New(
		krules.WithCascadeLimit(5),
		krules.WithLogger(slog.New(slog.DiscardHandler)), // the limit is also logged
		krules.WithErrorHandler(func(_ context.Context, ev *krules.Event, handler string, err error) {
			fmt.Printf("handler %s failed on %s %q: cascade depth exceeded: %t\n",
				handler, ev.Type, ev.PropertyName, errors.Is(err, krules.ErrCascadeDepth))
		}),
	)
	// ❌ Sets "counter" on every change, including its own.
	app.On(krules.PropertyChanged).Named("bad_handler").Do(func(ctx context.Context, ev *krules.Event) error {
		_, _, err := ev.Subject.Set(ctx, "counter", krules.Inc(1))
		return err
	})

	user := app.Subject("user-1")
	_, _, err := user.Set(ctx, "name", "John")
	fmt.Println("Set:", err)
	counter, _ := user.Get(ctx, "counter")
	fmt.Println("counter:", counter)
	// Output:
	// handler bad_handler failed on subject-property-changed "counter": cascade depth exceeded: true
	// Set: <nil>
	// counter: 4
}

// Errors in one handler never stop the others. A global error middleware
// turns a handler's error into an "error.handler_failed" event, and a handler
// of that event keeps the failure in a dead-letter subject. The dead-letter
// names come from an atomic counter in the store (dlq-1, dlq-2, ...).
func Example_deadLetter() {
	ctx := context.Background()
	app := krules.New()

	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		err := next(ctx)
		if err == nil || ev.Type == "error.handler_failed" {
			return err // never turn a failing error handler into a loop
		}
		return ev.Emit(ctx, "error.handler_failed", krules.Payload{
			"original_event": ev.Type,
			"handler":        krules.HandlerName(ctx),
			"error":          err.Error(),
			"subject":        ev.Subject.Name(),
		})
	})

	app.On("error.handler_failed").Named("send_to_dlq").Do(func(ctx context.Context, ev *krules.Event) error {
		seq, _, err := ev.App().Subject("dlq").Set(ctx, "seq", krules.Inc(1), krules.NoCache())
		if err != nil {
			return err
		}
		dlq := ev.App().Subject(fmt.Sprintf("dlq-%v", seq))
		for _, k := range []string{"original_event", "handler", "error", "subject"} {
			if _, _, err := dlq.Set(ctx, k, ev.Payload()[k]); err != nil {
				return err
			}
		}
		return dlq.Store(ctx) // one write
	})

	app.On("user.action").Named("charge").Do(func(_ context.Context, ev *krules.Event) error {
		return fmt.Errorf("payment gateway: timeout for %s", ev.Subject)
	})
	app.On("user.action").Named("audit").Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Println("audit: still runs for", ev.Subject)
		return nil
	})

	for _, u := range []string{"user-1", "user-2"} {
		if err := app.Emit(ctx, "user.action", app.Subject(u), nil); err != nil {
			fmt.Println("emit:", err) // never a handler's error
		}
	}

	for _, name := range []string{"dlq-1", "dlq-2"} {
		d, _ := app.Subject(name).Dict(ctx) // a new handle: read from the store
		keys := make([]string, 0, len(d))
		for k := range d {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Println(name + ":")
		for _, k := range keys {
			fmt.Printf("  %s: %v\n", k, d[k])
		}
	}
	// Output:
	// audit: still runs for user-1
	// audit: still runs for user-2
	// dlq-1:
	//   error: payment gateway: timeout for user-1
	//   ext: map[]
	//   handler: charge
	//   name: dlq-1
	//   original_event: user.action
	//   subject: user-1
	// dlq-2:
	//   error: payment gateway: timeout for user-2
	//   ext: map[]
	//   handler: charge
	//   name: dlq-2
	//   original_event: user.action
	//   subject: user-2
}

// The retry pattern: a muted retry_count on the subject, a filter that stops
// after 3 attempts, a re-emit of the event while attempts remain and an
// "api.call_failed" event once they are spent. (A real handler would wait
// with backoff before re-emitting, or hand the retry to a scheduler.)
func Example_retryCounter() {
	ctx := context.Background()
	app := krules.New()

	// fakeAPI fails the first failures[subject] calls for that subject.
	failures := map[string]int{"job-1": 2, "job-2": 10}
	calls := map[string]int{}
	fakeAPI := func(subject string) error {
		calls[subject]++
		if calls[subject] <= failures[subject] {
			return errors.New("API error: status 503")
		}
		return nil
	}

	app.On("api.call").
		When(func(ctx context.Context, ev *krules.Event) bool {
			n, err := krules.GetAs[int](ctx, ev.Subject, "retry_count", krules.Default(0))
			return err == nil && n < 3
		}).
		Do(func(ctx context.Context, ev *krules.Event) error {
			job := ev.Subject
			apiErr := fakeAPI(job.Name())
			if apiErr == nil {
				fmt.Printf("%s: attempt %d ok\n", job, calls[job.Name()])
				if _, _, err := job.Set(ctx, "retry_count", 0, krules.Muted()); err != nil {
					return err
				}
				_, _, err := job.Set(ctx, "last_success", calls[job.Name()])
				return err
			}
			retries, _, err := job.Set(ctx, "retry_count", krules.Inc(1), krules.Muted())
			if err != nil {
				return err
			}
			fmt.Printf("%s: attempt %d failed: %v\n", job, calls[job.Name()], apiErr)
			if retries.(int64) < 3 {
				return ev.Emit(ctx, "api.call", nil) // retry
			}
			return ev.Emit(ctx, "api.call_failed", krules.Payload{"error": apiErr.Error(), "retries": retries})
		})
	app.On("api.call_failed").Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Printf("%s: gave up after %v retries (%v)\n", ev.Subject, ev.Payload()["retries"], ev.Payload()["error"])
		return nil
	})

	for _, name := range []string{"job-1", "job-2"} {
		app.Emit(ctx, "api.call", app.Subject(name), nil)
	}
	// Output:
	// job-1: attempt 1 failed: API error: status 503
	// job-1: attempt 2 failed: API error: status 503
	// job-1: attempt 3 ok
	// job-2: attempt 1 failed: API error: status 503
	// job-2: attempt 2 failed: API error: status 503
	// job-2: attempt 3 failed: API error: status 503
	// job-2: gave up after 3 retries (API error: status 503)
}
