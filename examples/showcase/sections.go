package main

import (
	"context"
	"time"

	"github.com/krules-go/krules"
)

// setup is the notebook's "Setup" cell.
func (nb *notebook) setup(context.Context) error {
	nb.o.println("✓ KRules Framework loaded successfully")
	return nil
}

// basicConcepts creates the App, the Go counterpart of KRulesContainer: it
// owns the storage, the event bus and the subjects. Its methods On (with
// Rule.When), Use and Emit are the notebook's on, when, middleware and emit.
func (nb *notebook) basicConcepts(context.Context) error {
	nb.app = newApp(nb.o)
	nb.o.println("✓ App created")
	nb.o.printf("✓ Handlers ready: %s %s %s %s\n", "app.On", "Rule.When", "app.Use", "app.Emit")
	return nil
}

func (nb *notebook) subjectsAndProperties(ctx context.Context) error {
	o := nb.o
	// Creating subjects: cheap handles, each with its own write cache.
	user := nb.app.Subject("user-123")
	device := nb.app.Subject("device-456")
	order := nb.app.Subject("order-789")
	nb.user = user
	o.printf("Created subjects: %s, %s, %s\n", user, device, order)
	o.println()

	// Setting properties: simple and complex values.
	sets := []struct {
		prop  string
		value any
	}{
		{"name", "John Doe"},
		{"email", "john@example.com"},
		{"age", 30},
		{"address", map[string]any{"street": "123 Main St", "city": "Boston", "zip": "02101"}},
		{"tags", []string{"premium", "verified"}},
	}
	for _, s := range sets {
		if _, _, err := user.Set(ctx, s.prop, s.value); err != nil {
			return err
		}
	}
	o.println("✓ Properties set")
	for _, p := range []struct{ label, prop string }{
		{"Name", "name"}, {"Email", "email"}, {"Age", "age"}, {"Address", "address"}, {"Tags", "tags"},
	} {
		v, err := user.Get(ctx, p.prop)
		if err != nil {
			return err
		}
		if s, ok := v.(string); ok {
			o.printf("%s: %s\n", p.label, s) // f"{x}" prints a str without quotes
		} else {
			o.printf("%s: %s\n", p.label, py(v, "street", "city", "zip"))
		}
	}
	return nil
}

func (nb *notebook) gettingProperties(ctx context.Context) error {
	o, user := nb.o, nb.user
	name, err := krules.GetAs[string](ctx, user, "name")
	if err != nil {
		return err
	}
	o.printf("Name: %s\n", name)

	status, err := user.Get(ctx, "status", krules.Default("inactive"))
	if err != nil {
		return err
	}
	o.printf("Status: %v\n", status)

	hasEmail, err := user.Has(ctx, "email")
	if err != nil {
		return err
	}
	hasPhone, err := user.Has(ctx, "phone")
	if err != nil {
		return err
	}
	o.printf("Has email: %s, Has phone: %s\n", py(hasEmail), py(hasPhone))

	keys, err := user.Keys(ctx)
	if err != nil {
		return err
	}
	o.printf("All properties: %s\n", py(keys))
	return nil
}

func (nb *notebook) lambdaValues(ctx context.Context) error {
	o, user := nb.o, nb.user

	// Counter pattern: three atomic increments, written three ways.
	counter := nb.app.Subject("counter-1")
	if _, _, err := counter.Set(ctx, "count", 0); err != nil {
		return err
	}
	count, err := counter.Get(ctx, "count")
	if err != nil {
		return err
	}
	o.printf("Initial count: %s\n", py(count))
	increments := []krules.Op{
		krules.Inc(1), // built-in op (server-side with NoCache on Redis/PostgreSQL)
		krules.UpdateAny(func(c any, _ bool) (any, error) { return c.(int64) + 1, nil }), // lambda c: c + 1 (integers are int64)
		krules.Update(func(c int) int { return c + 1 }),                                  // typed lambda
	}
	for _, inc := range increments {
		if _, _, err := counter.Set(ctx, "count", inc); err != nil {
			return err
		}
	}
	count, err = counter.Get(ctx, "count")
	if err != nil {
		return err
	}
	o.printf("After 3 increments: %s\n", py(count))

	// Atomic list append: a lambda, then the built-in Append.
	if _, _, err := user.Set(ctx, "login_history", []any{}); err != nil {
		return err
	}
	ts := now()
	if _, _, err := user.Set(ctx, "login_history", krules.Update(func(hist []any) []any {
		return append(hist, ts)
	})); err != nil {
		return err
	}
	if _, _, err := user.Set(ctx, "login_history", krules.Append(now())); err != nil {
		return err
	}
	hist, err := user.Get(ctx, "login_history")
	if err != nil {
		return err
	}
	o.printf("Login history: %s\n", py(hist))

	// Conditional update: max(current, x).
	if _, _, err := user.Set(ctx, "high_score", 100); err != nil {
		return err
	}
	if _, _, err := user.Set(ctx, "high_score", krules.Update(func(c int) int { return max(c, 150) })); err != nil {
		return err // updated to 150
	}
	if _, _, err := user.Set(ctx, "high_score", krules.Max(120)); err != nil {
		return err // no change (150 > 120)
	}
	score, err := user.Get(ctx, "high_score")
	if err != nil {
		return err
	}
	o.printf("High score: %s\n", py(score))
	return nil
}

func (nb *notebook) eventHandlers(ctx context.Context) error {
	o := nb.o
	app := newApp(o) // reset: a fresh App for clean handler registration

	// Simple handler.
	app.On("user.login").Named("handle_login").Do(func(ctx context.Context, ev *krules.Event) error {
		o.printf("[Handler] User logged in: %s\n", ev.Subject.Name())
		_, _, err := ev.Subject.Set(ctx, "last_login", now())
		return err
	})
	// Multiple event patterns.
	app.On("user.created", "user.updated").Named("handle_user_change").Do(func(_ context.Context, ev *krules.Event) error {
		o.printf("[Handler] User changed: %s\n", ev.Type)
		return nil
	})
	// Glob pattern.
	app.On("device.*").Named("handle_device_events").Do(func(_ context.Context, ev *krules.Event) error {
		o.printf("[Handler] Device event: %s\n", ev.Type)
		return nil
	})
	// Wildcard: all events, the built-in ones included.
	app.On("*").Named("log_all_events").Do(func(_ context.Context, ev *krules.Event) error {
		o.printf("[Logger] Event: %s on %s\n", ev.Type, ev.Subject.Name())
		return nil
	})

	user := app.Subject("user-123")
	if err := app.Emit(ctx, "user.login", user, krules.Payload{}); err != nil {
		return err
	}
	if err := app.Emit(ctx, "user.created", user, krules.Payload{}); err != nil {
		return err
	}
	return app.Emit(ctx, "device.connected", app.Subject("device-1"), krules.Payload{})
}

// amount reads a numeric payload field (0 when missing), like
// ctx.payload.get("amount", 0).
func amount(p krules.Payload) float64 {
	switch v := p["amount"].(type) {
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case float64:
		return v
	}
	return 0
}

func (nb *notebook) filters(ctx context.Context) error {
	o := nb.o
	app := newApp(o)

	// Handler with a filter.
	app.On("order.created").
		When(func(_ context.Context, ev *krules.Event) bool { return amount(ev.Payload()) > 1000 }).
		Named("handle_large_order").
		Do(func(ctx context.Context, ev *krules.Event) error {
			o.printf("[Handler] Large order: $%v\n", ev.Payload()["amount"])
			// ev.Emit uses the current subject.
			return ev.Emit(ctx, "order.requires_approval", ev.Payload())
		})
	// Multiple filters (AND, in order).
	app.On("user.action").
		When(func(_ context.Context, ev *krules.Event) bool { return ev.Payload()["action"] == "purchase" }).
		When(func(_ context.Context, ev *krules.Event) bool { return amount(ev.Payload()) > 500 }).
		Named("handle_large_purchase").
		Do(func(_ context.Context, ev *krules.Event) error {
			o.printf("[Handler] Large purchase: $%v\n", ev.Payload()["amount"])
			return nil
		})

	order1, order2 := app.Subject("order-1"), app.Subject("order-2")
	o.println("Small order (no handler triggered):")
	if err := app.Emit(ctx, "order.created", order1, krules.Payload{"amount": 500}); err != nil {
		return err
	}
	o.println("\nLarge order (handler triggered):")
	if err := app.Emit(ctx, "order.created", order2, krules.Payload{"amount": 1500}); err != nil {
		return err
	}
	o.println("\nLarge purchase (both filters pass):")
	user := app.Subject("user-1")
	return app.Emit(ctx, "user.action", user, krules.Payload{"action": "purchase", "amount": 600})
}

func (nb *notebook) middleware(ctx context.Context) error {
	o := nb.o
	app := newApp(o)

	// Logging middleware (registered first: the outermost).
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		o.printf("[Middleware] Before: %s\n", ev.Type)
		err := next(ctx)
		o.printf("[Middleware] After: %s\n", ev.Type)
		return err
	})
	// Timing middleware.
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		start := time.Now()
		err := next(ctx)
		o.printf("[Timing] %s took %.2fms\n", ev.Type, float64(time.Since(start).Microseconds())/1000)
		return err
	})
	app.On("test.event").Named("test_handler").Do(func(ctx context.Context, ev *krules.Event) error {
		o.printf("[Handler] Processing %s\n", ev.Type)
		// Simulate work, as the notebook's asyncio.sleep(0.01).
		select {
		case <-time.After(10 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	return app.Emit(ctx, "test.event", app.Subject("test"), krules.Payload{})
}

// isProp is the notebook's @when(lambda ctx: ctx.property_name == name).
func isProp(name string) krules.Filter {
	return func(_ context.Context, ev *krules.Event) bool { return ev.PropertyName == name }
}

func (nb *notebook) propertyChanges(ctx context.Context) error {
	o := nb.o
	app := newApp(o)

	// React to changes of one property.
	app.On(krules.PropertyChanged).When(isProp("status")).Named("on_status_change").
		Do(func(ctx context.Context, ev *krules.Event) error {
			o.printf("[Handler] Status changed: %s → %s\n", pyStr(ev.OldValue), pyStr(ev.NewValue))
			if ev.NewValue == "active" {
				return ev.Emit(ctx, "user.activated", nil)
			}
			return nil
		})
	// React to any property change.
	app.On(krules.PropertyChanged).Named("audit_trail").Do(func(_ context.Context, ev *krules.Event) error {
		o.printf("[Audit] %s.%s = %s\n", ev.Subject.Name(), ev.PropertyName, pyStr(ev.NewValue))
		return nil
	})

	user := app.Subject("user-123")
	if _, _, err := user.Set(ctx, "status", "pending"); err != nil {
		return err
	}
	if _, _, err := user.Set(ctx, "status", "active"); err != nil {
		return err
	}
	newV, oldV, err := user.Set(ctx, "email", "john@example.com")
	if err != nil {
		return err
	}
	// The notebook cell's value: Set returns (new, old).
	o.printf("\n(%s, %s)\n", py(newV), py(oldV))
	return nil
}

// pyStr is Python's str(): strings bare, everything else as repr.
func pyStr(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return py(v)
}

func (nb *notebook) extraContext(ctx context.Context) error {
	o := nb.o
	app := newApp(o)

	app.On(krules.PropertyChanged).When(isProp("status")).Named("on_status_change_with_context").
		Do(func(_ context.Context, ev *krules.Event) error {
			if len(ev.Extra) > 0 {
				reason, ok := ev.Extra["reason"]
				if !ok {
					reason = "unknown"
				}
				admin, ok := ev.Extra["admin_id"]
				if !ok {
					admin = "system"
				}
				o.printf("[Handler] Status changed to %s\n", pyStr(ev.NewValue))
				o.printf("  Reason: %s\n", pyStr(reason))
				o.printf("  Changed by: %s\n", pyStr(admin))
			} else {
				o.printf("[Handler] Status changed to %s (no extra context)\n", pyStr(ev.NewValue))
			}
			return nil
		})

	user := app.Subject("user-123")
	o.println("Without extra context:")
	if _, _, err := user.Set(ctx, "status", "pending"); err != nil {
		return err
	}
	o.println("\nWith extra context:")
	if _, _, err := user.Set(ctx, "status", "suspended", krules.WithExtra(krules.Extra{
		"reason":    "policy_violation",
		"admin_id":  "admin-456",
		"timestamp": now(),
	})); err != nil {
		return err
	}

	// Delete with extra context.
	app.On(krules.PropertyDeleted).Named("on_property_deleted").Do(func(_ context.Context, ev *krules.Event) error {
		reason, ok := ev.Extra["reason"] // reading a nil Extra is fine
		if !ok {
			reason = "unknown"
		}
		o.printf("[Handler] Property %s deleted (reason: %s)\n", ev.PropertyName, pyStr(reason))
		return nil
	})
	if _, _, err := user.Set(ctx, "temp_data", "value"); err != nil {
		return err
	}
	return user.Delete(ctx, "temp_data", krules.WithExtra(krules.Extra{"reason": "expired"}))
}

func (nb *notebook) extendedProperties(ctx context.Context) error {
	o := nb.o
	app := newApp(o)

	eventCount := 0 // handlers run on the emitting goroutine, one after another
	app.On(krules.PropertyChanged).Named("count_events").Do(func(context.Context, *krules.Event) error {
		eventCount++
		return nil
	})

	user := app.Subject("user-123")
	// Normal property: emits an event.
	if _, _, err := user.Set(ctx, "name", "John"); err != nil {
		return err
	}
	o.printf("After normal set: %d event(s)\n", eventCount)

	// Extended properties: no event.
	if _, _, err := user.SetExt(ctx, "last_ip", "192.168.1.1"); err != nil {
		return err
	}
	if _, _, err := user.SetExt(ctx, "user_agent", "Mozilla/5.0"); err != nil {
		return err
	}
	o.printf("After extended sets: %d event(s) (still same)\n", eventCount)

	ip, err := user.GetExt(ctx, "last_ip")
	if err != nil {
		return err
	}
	o.printf("\nLast IP: %s\n", pyStr(ip))

	ext, err := user.ExtProps(ctx)
	if err != nil {
		return err
	}
	o.printf("All extended properties: %s\n", py(ext, "last_ip", "user_agent"))

	// Export to a map: default properties, plus "ext".
	data, err := pyDict(ctx, user)
	if err != nil {
		return err
	}
	o.printf("\nFull export: %s\n", data)
	return nil
}

func (nb *notebook) completeExample(ctx context.Context) error {
	o := nb.o
	app := newApp(o)

	// Middleware: logging (runs for every handler that passes its filters).
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		o.printf("\n[LOG] Event: %s\n", ev.Type)
		return next(ctx)
	})

	// Order created.
	app.On("order.created").Named("on_order_created").Do(func(ctx context.Context, ev *krules.Event) error {
		order := ev.Subject
		amount := ev.Payload()["amount"]
		// amount before status: setting status runs the whole validation
		// cascade at once (dispatch is depth-first), and it reads amount.
		// The notebook sets status first, so its validate_order would find
		// no amount.
		if _, _, err := order.Set(ctx, "amount", amount); err != nil {
			return err
		}
		if _, _, err := order.Set(ctx, "created_at", now()); err != nil {
			return err
		}
		if _, _, err := order.Set(ctx, "status", "pending"); err != nil {
			return err
		}
		// Metadata: no event.
		if _, _, err := order.SetExt(ctx, "processed_by", "system"); err != nil {
			return err
		}
		o.printf("[Handler] Order created: $%v\n", amount)
		return nil
	})

	statusIs := func(v string) krules.Filter {
		return func(_ context.Context, ev *krules.Event) bool {
			return ev.PropertyName == "status" && ev.NewValue == v
		}
	}

	// Validate the order.
	app.On(krules.PropertyChanged).When(statusIs("pending")).Named("validate_order").
		Do(func(ctx context.Context, ev *krules.Event) error {
			order := ev.Subject
			amount, err := krules.GetAs[float64](ctx, order, "amount")
			if err != nil {
				return err
			}
			if amount > 0 {
				if _, _, err := order.Set(ctx, "status", "validated"); err != nil {
					return err
				}
				o.println("[Handler] Order validated")
				return nil
			}
			_, _, err = order.Set(ctx, "status", "rejected", krules.WithExtra(krules.Extra{"reason": "invalid_amount"}))
			return err
		})

	// Process the payment.
	app.On(krules.PropertyChanged).When(statusIs("validated")).Named("process_payment").
		Do(func(ctx context.Context, ev *krules.Event) error {
			order := ev.Subject
			amount, err := order.Get(ctx, "amount")
			if err != nil {
				return err
			}
			o.printf("[Handler] Processing payment: $%v\n", amount)
			if _, _, err := order.Set(ctx, "status", "paid"); err != nil {
				return err
			}
			_, _, err = order.Set(ctx, "paid_at", now())
			return err
		})

	// Ship the order.
	app.On(krules.PropertyChanged).When(statusIs("paid")).Named("ship_order").
		Do(func(ctx context.Context, ev *krules.Event) error {
			order := ev.Subject
			if _, _, err := order.Set(ctx, "status", "shipped"); err != nil {
				return err
			}
			if _, _, err := order.Set(ctx, "shipped_at", now()); err != nil {
				return err
			}
			o.println("[Handler] Order shipped!")
			return nil
		})

	// Rejection, with the reason passed as extra context.
	app.On(krules.PropertyChanged).When(statusIs("rejected")).Named("handle_rejection").
		Do(func(_ context.Context, ev *krules.Event) error {
			reason, ok := ev.Extra["reason"]
			if !ok {
				reason = "unknown"
			}
			o.printf("[Handler] Order rejected: %s\n", pyStr(reason))
			return nil
		})

	rule := "============================================================"
	o.println(rule)
	o.println("Processing Order 1 (valid):")
	o.println(rule)
	order1 := app.Subject("order-1")
	if err := app.Emit(ctx, "order.created", order1, krules.Payload{"amount": 1500}); err != nil {
		return err
	}
	// No sleep needed: Emit returns when every handler, and everything they
	// emitted, is done.

	o.println("\n" + rule)
	o.println("Processing Order 2 (invalid):")
	o.println(rule)
	order2 := app.Subject("order-2")
	if err := app.Emit(ctx, "order.created", order2, krules.Payload{"amount": -100}); err != nil {
		return err
	}

	o.println("\n" + rule)
	o.println("Final State:")
	o.println(rule)
	for _, s := range []struct {
		label string
		subj  *krules.Subject
	}{{"Order 1", order1}, {"Order 2", order2}} {
		d, err := pyDict(ctx, s.subj)
		if err != nil {
			return err
		}
		o.printf("%s: %s\n", s.label, d)
	}
	return nil
}
