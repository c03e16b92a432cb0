package krulestest_test

import (
	"context"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/krulestest"
)

// registerOrderFlow is the order flow of examples/showcase (section
// "complete example"), without its printing: created → pending →
// validated → paid → shipped, or rejected with a reason.
func registerOrderFlow(app *krules.App) {
	app.On("order.created").Named("on_order_created").Do(func(ctx context.Context, ev *krules.Event) error {
		order := ev.Subject
		if _, _, err := order.Set(ctx, "amount", ev.Payload()["amount"]); err != nil {
			return err
		}
		if _, _, err := order.Set(ctx, "status", "pending"); err != nil {
			return err
		}
		_, _, err := order.SetExt(ctx, "processed_by", "system")
		return err
	})
	statusIs := func(v string) krules.Filter {
		return func(_ context.Context, ev *krules.Event) bool { return ev.PropertyName == "status" && ev.NewValue == v }
	}
	app.On(krules.PropertyChanged).When(statusIs("pending")).Named("validate_order").
		Do(func(ctx context.Context, ev *krules.Event) error {
			amount, err := krules.GetAs[float64](ctx, ev.Subject, "amount")
			if err != nil {
				return err
			}
			if amount > 0 {
				_, _, err = ev.Subject.Set(ctx, "status", "validated")
				return err
			}
			_, _, err = ev.Subject.Set(ctx, "status", "rejected", krules.WithExtra(krules.Extra{"reason": "invalid_amount"}))
			return err
		})
	app.On(krules.PropertyChanged).When(statusIs("validated")).Named("process_payment").
		Do(func(ctx context.Context, ev *krules.Event) error {
			_, _, err := ev.Subject.Set(ctx, "status", "paid")
			return err
		})
	app.On(krules.PropertyChanged).When(statusIs("paid")).Named("ship_order").
		Do(func(ctx context.Context, ev *krules.Event) error {
			_, _, err := ev.Subject.Set(ctx, "status", "shipped")
			return err
		})
}

func TestShowcaseOrderFlow(t *testing.T) {
	status := func(from, to any) *krulestest.Matcher { return krulestest.Changed("status").From(from).To(to) }

	t.Run("valid order is shipped", func(t *testing.T) {
		app := krulestest.New(t)
		registerOrderFlow(app.App)
		order := app.Subject("order-1")
		if err := app.Emit(t.Context(), "order.created", order, krules.Payload{"amount": 1500}); err != nil {
			t.Fatal(err)
		}
		app.AssertNoErrors(t)
		app.Events().AssertSequence(t,
			krulestest.Expect("order.created").Subject("order-1").Payload("amount", 1500),
			krulestest.Changed("amount").To(1500),
			status(nil, "pending"),
			status("pending", "validated"),
			status("validated", "paid"),
			status("paid", "shipped"),
		)
		app.Events().AssertNotEmitted(t, krulestest.Changed("status").To("rejected"))
		krulestest.AssertProperty(t, order, "status", "shipped")
		if v, _ := order.GetExt(t.Context(), "processed_by"); v != "system" {
			t.Errorf("processed_by = %v", v)
		}
	})

	t.Run("negative amount is rejected with a reason", func(t *testing.T) {
		app := krulestest.New(t)
		registerOrderFlow(app.App)
		order := app.Subject("order-2")
		app.Emit(t.Context(), "order.created", order, krules.Payload{"amount": -100})
		app.AssertNoErrors(t)
		app.Events().AssertEmitted(t, status("pending", "rejected").Extra("reason", "invalid_amount"))
		app.Events().AssertNotEmitted(t, krulestest.Changed("status").To("validated"))
		app.Events().AssertCount(t, krulestest.Changed("status"), 2)
		krulestest.AssertProperty(t, order, "status", "rejected")
	})
}
