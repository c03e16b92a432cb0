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
