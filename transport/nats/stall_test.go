package nats_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	knats "github.com/krules-go/krules/transport/nats"
)

// deafPull is a pull that lost its request at the server without being
// told: it passes on the first `left` messages of a real pull of one
// message at a time, then stops the real pull (no request of it is left
// at the server) and waits — as nats.go's Messages waits, counting a
// request as outstanding that nats-server 2.9 ended without its 408 —
// until it is drained or stopped.
type deafPull struct {
	real   jetstream.MessagesContext
	left   int
	closed chan struct{}
	once   sync.Once
}

func (d *deafPull) Next(...jetstream.NextOpt) (jetstream.Msg, error) {
	if d.left > 0 {
		m, err := d.real.Next()
		if err == nil {
			if d.left--; d.left == 0 {
				d.real.Stop()
			}
		}
		return m, err
	}
	<-d.closed
	return nil, jetstream.ErrMsgIteratorClosed
}

func (d *deafPull) Stop()  { d.once.Do(func() { close(d.closed) }); d.real.Stop() }
func (d *deafPull) Drain() { d.once.Do(func() { close(d.closed) }); d.real.Drain() }

// TestPullRenewedWhenServerDroppedRequest: a partition whose pull waits
// for a request the server no longer has (while it has events for it)
// pulls again and handles everything, in order. Without watchPull the
// partition stays idle until the client misses the request's heartbeats
// (here: never, the deaf pull has none).
func TestPullRenewedWhenServerDroppedRequest(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	var pulls atomic.Int32
	knats.SetTestHookMessages(func(_ int, c jetstream.Consumer) jetstream.MessagesContext {
		if c.CachedInfo().Stream != stream || pulls.Add(1) > 1 {
			return nil // the real pull
		}
		real, err := c.Messages(jetstream.PullMaxMessages(1))
		if err != nil {
			t.Error(err)
			return nil
		}
		return &deafPull{real: real, left: 1, closed: make(chan struct{})}
	})
	t.Cleanup(func() { knats.SetTestHookMessages(nil) })

	const n = 20
	rec := newRecorder(n)
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev)})
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream})
	startWorker(t, w)
	waitOwnedAll(t, 1, w)
	p := publisher(t, js, stream)
	for i := 1; i <= n; i++ {
		if _, err := p.Publish(context.Background(), "tick", "one", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	rec.wait(t, 20*time.Second)
	for i, r := range rec.all() {
		if r.seq != int64(i+1) {
			t.Fatalf("event %d: seq %d", i, r.seq)
		}
	}
	if got := pulls.Load(); got != 2 {
		t.Fatalf("%d pulls started, want 2 (the deaf one, then a new one)", got)
	}
}
