package nats_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krules-go/krules"
	knats "github.com/krules-go/krules/transport/nats"
)

// A handler that publishes follow-up events and then fails is run again on
// the redelivery and publishes them again — under the same ids, so the
// follow-up stream de-duplicates them: one message per follow-up event.
// Both ways of publishing from a handler are covered: Publisher.Publish
// (cloudevents.NewEvent) and an emitted event carrying MetaTopic
// (Publisher.Middleware, cloudevents.FromKrules).
func TestRedeliveryRepublishesUnderSameIDs(t *testing.T) {
	_, js := connect(t)
	in := newStream(t, js, 1)
	out := newLogStream(t, js, 1)
	ctx := context.Background()
	pubOut, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: out, Source: "worker"})
	if err != nil {
		t.Fatal(err)
	}

	var attempts atomic.Int32
	handled := make(chan struct{})
	app := krules.New()
	pubOut.Install(app)
	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
		if _, err := pubOut.Publish(ctx, "order.audit", ev.Subject.Name(), krules.Payload{"n": 1}); err != nil {
			return err
		}
		if err := ev.Emit(ctx, "order.notify", krules.Payload{"n": 2}, krules.WithMeta(knats.MetaTopic, out)); err != nil {
			return err
		}
		if attempts.Add(1) == 1 {
			return errors.New("fail after publishing")
		}
		close(handled)
		return nil
	})
	// A handler, so that the publisher middleware runs for order.notify
	// (policy direct: it publishes and runs no local handler).
	app.On("order.notify").Do(func(context.Context, *krules.Event) error { return nil })

	w := newWorker(t, js, app, knats.WorkerConfig{Stream: in, Backoff: []time.Duration{20 * time.Millisecond}})
	startWorker(t, w)
	if _, err := publisher(t, js, in).Publish(ctx, "order.created", "order-1", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case <-time.After(30 * time.Second):
		t.Fatal("event not handled")
	}
	waitIdle(t, js, in, 10*time.Second)
	if st := w.Stats(); st.Failed != 1 || st.Handled != 1 {
		t.Fatalf("stats %+v, want 1 failed and 1 handled delivery", st)
	}

	s, err := js.Stream(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("follow-up stream has %d messages, want 2 (one per follow-up event)", info.State.Msgs)
	}
}
