package krulestest_test

import (
	"context"
	"fmt"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/krulestest"
)

// Record attaches a Recorder to any App; in a test, krulestest.New(t) does
// it for you. Events are listed in emission order, cascades included.
func ExampleRecord() {
	ctx := context.Background()
	app := krules.New()
	rec := krulestest.Record(app) // before the App's own handlers
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		if ev.NewValue == "active" {
			return ev.Emit(ctx, "user.activated", nil)
		}
		return nil
	})
	user := app.Subject("user-1")
	user.Set(ctx, "status", "pending")
	user.Set(ctx, "status", "active")

	for _, e := range rec.Events() {
		fmt.Println(e)
	}
	fmt.Println(len(rec.Filter(krulestest.Changed("status").To("active"))))
	// Output:
	// subject-property-changed user-1 status: null → "pending"
	// subject-property-changed user-1 status: "pending" → "active"
	// user.activated user-1
	// 1
}

// NewEvent builds an Event by hand to unit-test a filter.
func ExampleNewEvent() {
	ctx := context.Background()
	app := krules.New()
	bigOrder := func(_ context.Context, ev *krules.Event) bool {
		amount, _ := ev.Payload()["amount"].(int)
		return amount > 1000
	}
	small, _ := krulestest.NewEvent(ctx, "order.created", app.Subject("o-1"), krules.Payload{"amount": 500})
	big, _ := krulestest.NewEvent(ctx, "order.created", app.Subject("o-2"), krules.Payload{"amount": 1500})
	fmt.Println(bigOrder(ctx, small), bigOrder(ctx, big))
	// Output: false true
}

// HandlerContext gives a middleware under test the handler name it would
// see in an App.
func ExampleHandlerContext() {
	ctx := context.Background()
	app := krules.New()
	ev, _ := krulestest.NewEvent(ctx, "order.created", app.Subject("o-1"), nil)
	tag := func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		ev.SetMeta("handled_by", krules.HandlerName(ctx))
		return next(ctx)
	}
	err := tag(krulestest.HandlerContext(ctx, "ship_order"), ev, func(context.Context) error { return nil })
	v, _ := ev.Meta("handled_by")
	fmt.Println(v, err)
	// Output: ship_order <nil>
}
