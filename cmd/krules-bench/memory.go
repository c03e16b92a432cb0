package main

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/krules-go/krules"
)

func init() {
	register(Group{Name: "memory", Setup: memoryRows})
}

type rawEvent struct {
	typ     string
	payload map[string]any
}

// rawBus is the hand-written baseline: a map from event type to a slice of funcs.
type rawBus map[string][]func(context.Context, *rawEvent) error

func (b rawBus) emit(ctx context.Context, typ string, payload map[string]any) {
	for _, f := range b[typ] {
		f(ctx, &rawEvent{typ: typ, payload: payload})
	}
}

// emitRows registers n handlers (half exact types, half globs with distinct
// literal prefixes), exactly one of which matches "order.created".
func emitRow(n int) Row {
	app := krules.New()
	raw := rawBus{}
	var hits int
	h := func(context.Context, *krules.Event) error { hits++; return nil }
	rh := func(context.Context, *rawEvent) error { hits++; return nil }
	for i := 0; i < n-1; i++ {
		if i%2 == 0 {
			t := fmt.Sprintf("type%d.created", i)
			app.On(t).Do(h)
			raw[t] = append(raw[t], rh)
		} else {
			app.On(fmt.Sprintf("glob%d.*", i), fmt.Sprintf("g%d.[ab]?", i)).Do(h)
		}
	}
	app.On("order.created").Do(h)
	raw["order.created"] = append(raw["order.created"], rh)
	subject := app.Subject("order-1")
	payload := krules.Payload{"amount": 1500}
	ctx := context.Background()
	return Row{
		Name: fmt.Sprintf("memory/emit-1-of-%d", n),
		Run: func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				app.Emit(ctx, "order.created", subject, payload)
			}
		},
		Baseline: "map lookup + slice of funcs",
		Base: func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				raw.emit(ctx, "order.created", payload)
			}
		},
	}
}

// lockedMap is the raw baseline of the store rows: a map under a mutex.
type lockedMap struct {
	mu sync.Mutex
	m  map[string]any
}

func (l *lockedMap) set(k string, v any) (old any) {
	l.mu.Lock()
	old = l.m[k]
	l.m[k] = v
	l.mu.Unlock()
	return old
}

func (l *lockedMap) get(k string) any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[k]
}

func memoryRows() ([]Row, func(), error) {
	ctx := context.Background()
	rows := []Row{emitRow(10), emitRow(1000)}

	// Cached Set that fires one change handler.
	{
		app := krules.New()
		fired := 0
		app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { fired++; return nil })
		s := app.Subject("counter")
		raw := &lockedMap{m: map[string]any{}}
		rawHandler := func(context.Context, *rawEvent) error { fired++; return nil }
		rows = append(rows, Row{
			Name: "memory/set-cached-event",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					s.Set(ctx, "n", i)
				}
			},
			Baseline: "locked map set + change callback",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					old := raw.set("n", int64(i))
					if old != int64(i) {
						rawHandler(ctx, &rawEvent{typ: "changed", payload: map[string]any{"property_name": "n", "old_value": old, "value": int64(i)}})
					}
				}
			},
		})
	}
	// NoCache Set straight to the in-memory store (no handler).
	{
		app := krules.New()
		s := app.Subject("direct", krules.NoCache())
		raw := &lockedMap{m: map[string]any{}}
		rows = append(rows, Row{
			Name: "memory/set-nocache",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					s.Set(ctx, "status", "active")
				}
			},
			Baseline: "locked map set",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					raw.set("status", "active")
				}
			},
		})
	}
	// Cached Get.
	{
		app := krules.New()
		s := app.Subject("reader")
		s.Set(ctx, "name", "John")
		raw := &lockedMap{m: map[string]any{"name": "John"}}
		rows = append(rows, Row{
			Name: "memory/get-cached",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					s.Get(ctx, "name")
				}
			},
			Baseline: "locked map get",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					raw.get("name")
				}
			},
		})
	}
	return rows, nil, nil
}
