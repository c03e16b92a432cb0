package krules_test

import (
	"context"
	"reflect"
	"sync"
	"testing"

	"github.com/krules-go/krules"
)

// mapID identifies a map value (two Payloads with the same ID are one map).
func mapID(p krules.Payload) uintptr { return reflect.ValueOf(p).Pointer() }

func TestPropertyChangedPayloadBuiltOnceAndShared(t *testing.T) {
	app, _ := newApp(t)
	var first, second krules.Payload
	app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
		first = ev.Payload()
		first["seen_by_first"] = true // visible to the next handler
		return nil
	})
	app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
		second = ev.Payload()
		if mapID(ev.Payload()) != mapID(second) {
			t.Error("Payload returned a different map on the second call")
		}
		return nil
	})
	s := app.Subject("lazy")
	if _, _, err := s.Set(ctx, "n", 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Set(ctx, "n", 2); err != nil {
		t.Fatal(err)
	}
	want := krules.Payload{krules.KeyPropertyName: "n", krules.KeyOldValue: int64(1), krules.KeyValue: int64(2), "seen_by_first": true}
	if !reflect.DeepEqual(second, want) {
		t.Fatalf("payload = %v, want %v", second, want)
	}
	if mapID(first) != mapID(second) {
		t.Fatal("handlers of one emit got different payload maps")
	}
}

func TestPropertyDeletedPayloadHasNoValue(t *testing.T) {
	app, _ := newApp(t)
	var got *krules.Event
	app.On(krules.PropertyDeleted).Do(func(_ context.Context, ev *krules.Event) error { got = ev; return nil })
	s := app.Subject("lazy")
	if _, _, err := s.Set(ctx, "n", "x"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("no PropertyDeleted")
	}
	// The event is read after its handler returned: it stays valid.
	want := krules.Payload{krules.KeyPropertyName: "n", krules.KeyOldValue: "x"}
	if p := got.Payload(); !reflect.DeepEqual(p, want) {
		t.Fatalf("payload = %v, want %v", p, want)
	}
	if got.PropertyName != "n" || got.OldValue != "x" || got.NewValue != nil {
		t.Fatalf("fields = %q %v %v", got.PropertyName, got.OldValue, got.NewValue)
	}
}

func TestPayloadConcurrentFirstCalls(t *testing.T) {
	app, _ := newApp(t)
	const n = 8
	ids := make([]uintptr, n)
	app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := ev.Payload()
				if p[krules.KeyValue] != int64(7) {
					t.Errorf("payload = %v", p)
				}
				ids[i] = mapID(p)
			}()
		}
		wg.Wait()
		return nil
	})
	if _, _, err := app.Subject("lazy").Set(ctx, "n", 7); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatal("concurrent first Payload calls built different maps")
		}
	}
}

func TestEmitPayloadIsTheEmittedMap(t *testing.T) {
	app, _ := newApp(t)
	var got krules.Payload
	var empty krules.Payload
	app.On("given").Do(func(_ context.Context, ev *krules.Event) error { got = ev.Payload(); return nil })
	app.On("none").Do(func(_ context.Context, ev *krules.Event) error { empty = ev.Payload(); return nil })
	p := krules.Payload{krules.KeyPropertyName: "amount", krules.KeyValue: 5}
	if err := app.Emit(ctx, "given", app.Subject("s"), p); err != nil {
		t.Fatal(err)
	}
	if err := app.Emit(ctx, "none", app.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
	if mapID(got) != mapID(p) {
		t.Fatal("Emit's payload was copied")
	}
	if empty == nil || len(empty) != 0 {
		t.Fatalf("nil payload gave %#v, want an empty map", empty)
	}
}

func TestCustomEventFillsPropertyFields(t *testing.T) {
	app, _ := newApp(t)
	var ev0 *krules.Event
	app.On("custom").Do(func(_ context.Context, ev *krules.Event) error { ev0 = ev; return nil })
	err := app.Emit(ctx, "custom", app.Subject("s"), krules.Payload{krules.KeyPropertyName: "p", krules.KeyOldValue: 1, krules.KeyValue: 2})
	if err != nil {
		t.Fatal(err)
	}
	if ev0.PropertyName != "p" || ev0.OldValue != 1 || ev0.NewValue != 2 {
		t.Fatalf("fields = %q %v %v", ev0.PropertyName, ev0.OldValue, ev0.NewValue)
	}
}

// TestZeroEventPayloadNotNil: Payload is never nil, even on an Event built
// as a zero value (as a user's unit test of a filter might).
func TestZeroEventPayloadNotNil(t *testing.T) {
	var ev krules.Event
	if p := ev.Payload(); p == nil {
		t.Fatal("Payload() of a zero Event is nil")
	}
}
