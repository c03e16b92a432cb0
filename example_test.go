package krules_test

import (
	"context"
	"fmt"

	"github.com/krules-go/krules"
)

func Example() {
	ctx := context.Background()
	app := krules.New()

	app.On(krules.PropertyChanged).
		When(func(_ context.Context, ev *krules.Event) bool { return ev.PropertyName == "status" }).
		Do(func(ctx context.Context, ev *krules.Event) error {
			fmt.Printf("status: %v -> %v\n", ev.OldValue, ev.NewValue)
			if ev.NewValue == "active" {
				return ev.Emit(ctx, "user.activated", nil)
			}
			return nil
		})
	app.On("user.*").Do(func(_ context.Context, ev *krules.Event) error {
		fmt.Println("event:", ev.Type, "on", ev.Subject.Name())
		return nil
	})

	user := app.Subject("user-123")
	user.Set(ctx, "status", "pending")
	user.Set(ctx, "status", "active")
	user.Set(ctx, "logins", krules.Inc(1))
	n, _ := krules.GetAs[int](ctx, user, "logins")
	fmt.Println("logins:", n)
	// Output:
	// status: <nil> -> pending
	// status: pending -> active
	// event: user.activated on user-123
	// logins: 1
}

// A WriteOnly handle writes properties without loading the subject first:
// 100 Sets and a Store are one store round trip.
func ExampleWriteOnly() {
	ctx := context.Background()
	app := krules.New()

	imp := app.Subject("sensor-7", krules.WriteOnly(), krules.Muted())
	for i := range 100 {
		if _, _, err := imp.Set(ctx, fmt.Sprintf("reading%d", i), i); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := imp.Store(ctx); err != nil {
		fmt.Println(err)
		return
	}

	keys, err := app.Subject("sensor-7").Keys(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(len(keys), keys[0], keys[99])
	// Output:
	// 100 reading0 reading99
}

// Payload is built only when a handler asks for it; the built-in property
// events carry the same data in PropertyName, OldValue and NewValue.
func ExampleEvent_Payload() {
	ctx := context.Background()
	app := krules.New()
	app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
		n, _ := ev.Payload().Int(krules.KeyValue)
		fmt.Println(ev.PropertyName, ev.NewValue, n)
		return nil
	})
	if _, _, err := app.Subject("counter").Set(ctx, "n", 3); err != nil {
		fmt.Println(err)
	}
	// Output:
	// n 3 3
}
