package cloudevents_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// incoming returns a valid incoming CloudEvent with the given id.
func incoming(id string) *event.Event {
	e := event.New(event.CloudEventsVersionV1)
	e.SetID(id)
	e.SetSource("test")
	e.SetType("order.created")
	e.SetSubject("order-1")
	return &e
}

// Inside a delivery (Deliver, so the Receiver) the ids of the events the
// handlers build are the same on every delivery of one incoming event,
// distinct within the delivery, and different for another incoming event;
// outside a delivery they are random.
func TestDeterministicIDsInsideDelivery(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	app := krules.New()
	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
		for _, typ := range []string{"a", "a", "b"} {
			e, err := cloudevents.NewEvent(ctx, typ, "x", nil, cloudevents.EventOptions{})
			if err != nil {
				return err
			}
			mu.Lock()
			ids = append(ids, e.ID())
			mu.Unlock()
		}
		// FromKrules, twice for one event: one id, the next ordinal.
		return ev.Emit(ctx, "follow", nil)
	})
	app.On("follow").Do(func(ctx context.Context, ev *krules.Event) error {
		e1, err := cloudevents.FromKrules(ctx, ev, "src")
		if err != nil {
			return err
		}
		e2, err := cloudevents.FromKrules(ctx, ev, "src")
		if err != nil {
			return err
		}
		if e1.ID() != e2.ID() {
			t.Errorf("one event, two ids: %s %s", e1.ID(), e2.ID())
		}
		mu.Lock()
		ids = append(ids, e1.ID())
		mu.Unlock()
		return nil
	})
	deliver := func(id string) []string {
		mu.Lock()
		ids = nil
		mu.Unlock()
		if err := cloudevents.Deliver(context.Background(), app, incoming(id)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ids)
	}
	first := deliver("in-1")
	again := deliver("in-1")
	other := deliver("in-2")
	if len(first) != 4 || !slices.Equal(first, again) {
		t.Fatalf("redelivery ids %v, first delivery %v", again, first)
	}
	seen := map[string]bool{}
	for i, id := range first {
		if _, err := uuid.Parse(id); err != nil {
			t.Errorf("id %q: %v", id, err)
		}
		if seen[id] {
			t.Errorf("id %d %q repeats within a delivery: %v", i, id, first)
		}
		seen[id] = true
		if seen[other[i]] {
			t.Errorf("another incoming event gives id %q again", other[i])
		}
	}

	// Outside a delivery: random.
	ctx := context.Background()
	a, err := cloudevents.NewEvent(ctx, "a", "x", nil, cloudevents.EventOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cloudevents.NewEvent(ctx, "a", "x", nil, cloudevents.EventOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() == b.ID() || seen[a.ID()] {
		t.Fatalf("ids outside a delivery %s %s are not fresh", a.ID(), b.ID())
	}
	// An explicit id always wins.
	c, err := cloudevents.NewEvent(cloudevents.NewContext(ctx, incoming("in-1")), "a", "x", nil, cloudevents.EventOptions{ID: "mine"})
	if err != nil || c.ID() != "mine" {
		t.Fatalf("explicit id: %v %v", c, err)
	}
}
