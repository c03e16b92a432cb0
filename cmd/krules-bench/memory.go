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

// bigValue returns a map of about 100 KB (1000 entries of ~100 bytes).
func bigValue(tag int) map[string]any {
	m := make(map[string]any, 1000)
	for i := range 1000 {
		m[fmt.Sprintf("key%04d", i)] = fmt.Sprintf("%d-%090d", tag, i)
	}
	return m
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
	// Muted cached Set of pre-boxed int64 values (both sides store the same
	// interface values, so neither pays for boxing).
	{
		app := krules.New()
		app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { return nil })
		s := app.Subject("muted")
		raw := &lockedMap{m: map[string]any{}}
		vals := make([]any, 1024)
		for i := range vals {
			vals[i] = int64(i * 1000)
		}
		rows = append(rows, Row{
			Name: "memory/set-muted",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					s.Set(ctx, "n", vals[i&1023], krules.Muted())
				}
			},
			Baseline: "locked map set",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					raw.set("n", vals[i&1023])
				}
			},
		})
	}
	// Cached Set of a 100 KB map value (two alternating), one change handler.
	// The baseline stores a copy, as a store that must not alias the
	// caller's map has to, and calls the handler.
	{
		app := krules.New()
		fired := 0
		app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { fired++; return nil })
		s := app.Subject("big")
		raw := &lockedMap{m: map[string]any{}}
		rawHandler := func(context.Context, *rawEvent) error { fired++; return nil }
		vals := []map[string]any{bigValue(1), bigValue(2)}
		rows = append(rows, Row{
			Name: "memory/set-100kb-value",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, _, err := s.Set(ctx, "doc", vals[i&1]); err != nil {
						b.Fatal(err)
					}
				}
			},
			Baseline: "copy map + locked map set + callback",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					src := vals[i&1]
					cp := make(map[string]any, len(src))
					for k, v := range src {
						cp[k] = v
					}
					old := raw.set("doc", cp)
					rawHandler(ctx, &rawEvent{typ: "changed", payload: map[string]any{"property_name": "doc", "old_value": old, "value": cp}})
				}
			},
		})
	}
	// Emits of 10,000 distinct event types (one glob handler among 1000):
	// more types than the match cache holds, so it must evict.
	{
		app := krules.New()
		raw := rawBus{}
		h := func(context.Context, *krules.Event) error { return nil }
		rh := func(context.Context, *rawEvent) error { return nil }
		for i := 0; i < 999; i++ {
			if i%2 == 0 {
				app.On(fmt.Sprintf("type%d.created", i)).Do(h)
			} else {
				app.On(fmt.Sprintf("glob%d.*", i), fmt.Sprintf("g%d.[ab]?", i)).Do(h)
			}
		}
		app.On("evt.*").Do(h)
		types := make([]string, 10000)
		for i := range types {
			types[i] = fmt.Sprintf("evt.%d", i)
			raw[types[i]] = []func(context.Context, *rawEvent) error{rh}
		}
		subject := app.Subject("order-1")
		payload := krules.Payload{"amount": 1500}
		rows = append(rows, Row{
			Name: "memory/emit-10000-types",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					app.Emit(ctx, types[i%len(types)], subject, payload)
				}
			},
			Baseline: "map lookup + slice of funcs (10,000 types)",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					raw.emit(ctx, types[i%len(types)], payload)
				}
			},
		})
	}
	// 100 Sets on a fresh WriteOnly handle plus Store, against building the
	// 100 values into a map under a lock.
	{
		app := krules.New()
		props := make([]string, 100)
		vals := make([]any, 100)
		for i := range props {
			props[i] = fmt.Sprintf("prop-%d", i)
			vals[i] = int64(i * 1000)
		}
		raw := &lockedMap{m: map[string]any{}}
		rows = append(rows, Row{
			Name: "memory/store-100",
			Run: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					s := app.Subject("wide", krules.WriteOnly(), krules.Muted())
					for j, p := range props {
						if _, _, err := s.Set(ctx, p, vals[j]); err != nil {
							b.Fatal(err)
						}
					}
					if err := s.Store(ctx); err != nil {
						b.Fatal(err)
					}
				}
			},
			Baseline: "100 sets into a map + locked copy",
			Base: func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					batch := make(map[string]any, len(props))
					for j, p := range props {
						batch[p] = vals[j]
					}
					raw.mu.Lock()
					for k, v := range batch {
						raw.m[k] = v
					}
					raw.mu.Unlock()
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
