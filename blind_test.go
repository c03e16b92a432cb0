package krules_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// callCounter counts the writes that reach the backend, by method.
type callCounter struct {
	storage.Backend
	mu    sync.Mutex
	calls map[string]int
}

func (c *callCounter) count(m string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[m]++
}

// take returns and resets the counts.
func (c *callCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.calls
	c.calls = nil
	if m == nil {
		m = map[string]int{}
	}
	return m
}

func (c *callCounter) Set(ctx context.Context, s string, k storage.Key, m storage.Mutation) (any, any, error) {
	c.count("Set")
	return c.Backend.Set(ctx, s, k, m)
}

func (c *callCounter) Store(ctx context.Context, s string, b storage.Batch) error {
	c.count("Store")
	return c.Backend.Store(ctx, s, b)
}

// IdempotencyWindow forwards storage.Idempotent (the memory store has it).
func (c *callCounter) IdempotencyWindow() time.Duration {
	return c.Backend.(storage.Idempotent).IdempotencyWindow()
}

// blindCounter is a callCounter with storage.BlindOps (Set without the old
// value).
type blindCounter struct{ *callCounter }

func (b blindCounter) SetBlind(ctx context.Context, s string, k storage.Key, op *storage.Op) (any, error) {
	b.count("SetBlind")
	nv, _, err := b.Backend.Set(ctx, s, k, storage.Mutation{Op: op})
	return nv, err
}

// A WriteOnly handle's NoCache writes reach the store blind: a plain value
// as one Store, a built-in Op through SetBlind when the backend has it
// (else Set); update functions and IdempotencyKey calls keep Set and its
// old value. Old is nil and PropertyChanged carries OldValue nil, also for
// an unchanged value.
func TestWriteOnlyNoCacheIsBlind(t *testing.T) {
	for _, withBlind := range []bool{false, true} {
		cc := &callCounter{Backend: memory.New()}
		var b storage.Backend = cc
		opCall := "Set"
		if withBlind {
			b, opCall = blindCounter{cc}, "SetBlind"
		}
		app, _ := newApp(t, krules.WithStorage(b))
		var events []*krules.Event
		app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
			events = append(events, ev)
			return nil
		})
		if _, _, err := app.Subject("s", krules.NoCache()).Set(ctx, "n", 5, krules.Muted()); err != nil {
			t.Fatal(err)
		}
		cc.take()
		h := app.Subject("s", krules.WriteOnly(), krules.NoCache())
		expect := func(what string, nv, old any, err error, wantNV, wantOld any, wantCall string) {
			t.Helper()
			if err != nil || nv != wantNV || old != wantOld {
				t.Fatalf("blind=%v %s = (%v, %v, %v), want (%v, %v, nil)", withBlind, what, nv, old, err, wantNV, wantOld)
			}
			if calls := cc.take(); len(calls) != 1 || calls[wantCall] != 1 {
				t.Fatalf("blind=%v %s made the backend calls %v, want one %s", withBlind, what, calls, wantCall)
			}
		}
		nv, old, err := h.Set(ctx, "n", 5)
		expect("Set(5) over 5", nv, old, err, int64(5), nil, "Store")
		if len(events) != 1 || events[0].OldValue != nil || events[0].NewValue != int64(5) {
			t.Fatalf("blind=%v unchanged blind Set emitted %v, want one PropertyChanged(nil -> 5)", withBlind, events)
		}
		nv, old, err = h.Set(ctx, "n", krules.Inc(2))
		expect("Inc(2)", nv, old, err, int64(7), nil, opCall)
		nv, old, err = app.Subject("s", krules.WriteOnly()).Set(ctx, "n", krules.Inc(1), krules.NoCache())
		expect("per-call NoCache Inc(1)", nv, old, err, int64(8), nil, opCall)
		nv, old, err = h.Set(ctx, "n", krules.Update(func(n int64) int64 { return n * 2 }))
		expect("update function", nv, old, err, int64(16), int64(8), "Set")
		nv, old, err = h.Set(ctx, "n", 1, krules.IdempotencyKey("k1"))
		expect("IdempotencyKey Set", nv, old, err, int64(1), int64(16), "Set")
		if len(events) != 5 || events[1].OldValue != nil || events[3].OldValue != int64(8) {
			t.Fatalf("blind=%v events %v", withBlind, events)
		}
		// Errors are the normal ones, nothing written, no event.
		if _, _, err := h.Set(ctx, "n", krules.Append("x")); !errors.Is(err, storage.ErrInvalidValue) {
			t.Fatalf("blind=%v Append to a number: err = %v, want ErrInvalidValue", withBlind, err)
		}
		if len(events) != 5 {
			t.Fatalf("blind=%v the failed Append emitted", withBlind)
		}
		cc.take()
		// A cached WriteOnly handle keeps its cached behaviour.
		c := app.Subject("s", krules.WriteOnly())
		if _, old, err := c.Set(ctx, "n", 2); err != nil || old != nil {
			t.Fatalf("cached WriteOnly Set: old %v, %v", old, err)
		}
		if calls := cc.take(); len(calls) != 0 {
			t.Fatalf("cached WriteOnly Set reached the backend: %v", calls)
		}
	}
}

// With a change feed, NoCache writes of a WriteOnly handle are not blind:
// the change record needs the old value.
func TestWriteOnlyNoCacheWithChangeFeed(t *testing.T) {
	app, _ := newApp(t, krules.WithStorage(memory.New(memory.WithChangeFeed())))
	h := app.Subject("s", krules.WriteOnly(), krules.NoCache())
	if _, _, err := h.Set(ctx, "n", 5); err != nil {
		t.Fatal(err)
	}
	if nv, old, err := h.Set(ctx, "n", krules.Inc(1)); err != nil || nv != int64(6) || old != int64(5) {
		t.Fatalf("Inc with a change feed = (%v, %v, %v), want (6, 5, nil)", nv, old, err)
	}
}
