package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

// NATS rows: events per second end to end through JetStream. One op is one
// event: published (async, one connection) as a CloudEvent over 100
// subjects, consumed, handled, acked; the clock stops when the last event is
// handled. The krules side is a transport/nats Worker (32 partitions,
// per-subject order, 1 or 3 workers in this process, each on its own NATS
// connection) whose handler does one Redis Inc (NoCache) on the event's
// subject. The baseline is raw jetstream doing the same messages: a plain
// stream, one durable consumer without ordering (MaxAckPending 1000) shared
// by as many consumers as there are workers, each message answered with one
// HINCRBY and an ack. Stream creation and worker start are outside the
// clock. Needs KRULES_NATS_URL and KRULES_REDIS_URL.
func init() {
	register(Group{
		Name:    "nats",
		Enabled: func() bool { return os.Getenv("KRULES_NATS_URL") != "" && os.Getenv("KRULES_REDIS_URL") != "" },
		Setup:   natsSetup,
	})
}

const natsBenchSubjects = 100

func natsSetup() ([]Row, func(), error) {
	ctx := context.Background()
	natsURL := os.Getenv("KRULES_NATS_URL")
	prefix := fmt.Sprintf("krules-bench-nats-%d:", os.Getpid())
	backend, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: prefix})
	if err != nil {
		return nil, nil, err
	}
	nc, err := knats.Connect(natsURL, natsgo.RetryOnFailedConnect(false))
	if err != nil {
		backend.Close()
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		backend.Close()
		return nil, nil, err
	}
	cleanup := func() {
		c := backend.Client()
		it := c.Scan(ctx, 0, "s:"+prefix+"*", 1000).Iterator()
		for it.Next(ctx) {
			c.Del(ctx, it.Val())
		}
		nc.Close()
		backend.Close()
	}
	b := &natsBench{url: natsURL, js: js, backend: backend}
	rows := []Row{
		{Name: "nats/events-1-worker", Run: func(tb *testing.B) { b.krules(tb, 1) }, Baseline: "jetstream+redis/pub-consume-hincrby-1", Base: func(tb *testing.B) { b.raw(tb, 1) }},
		{Name: "nats/events-3-workers", Run: func(tb *testing.B) { b.krules(tb, 3) }, Baseline: "jetstream+redis/pub-consume-hincrby-3", Base: func(tb *testing.B) { b.raw(tb, 3) }},
	}
	return rows, cleanup, nil
}

type natsBench struct {
	url     string
	js      jetstream.JetStream
	backend *redis.Backend
	seq     atomic.Int64
}

func (nb *natsBench) streamName() string {
	return fmt.Sprintf("krbench_%d_%d", os.Getpid(), nb.seq.Add(1))
}

// events builds the n CloudEvents of one run.
func benchEvents(b *testing.B, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		e, err := cloudevents.NewEvent(context.Background(), "bench.event", fmt.Sprintf("bench-%d", i%natsBenchSubjects), krules.Payload{"i": i}, cloudevents.EventOptions{Source: "krules-bench"})
		if err != nil {
			b.Fatal(err)
		}
		if out[i], err = e.MarshalJSON(); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

func (nb *natsBench) krules(b *testing.B, workers int) {
	b.StopTimer()
	ctx := context.Background()
	name := nb.streamName()
	if _, err := knats.EnsureStream(ctx, nb.js, knats.StreamConfig{Name: name, Partitions: 32}); err != nil {
		b.Fatal(err)
	}
	defer nb.js.DeleteStream(ctx, name)
	p, err := knats.NewPublisher(ctx, nb.js, knats.PublisherConfig{Stream: name})
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	finished := make(chan struct{})
	n := int64(b.N)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range workers {
		nc, err := knats.Connect(nb.url, natsgo.RetryOnFailedConnect(false))
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		app := krules.New(krules.WithStorage(nb.backend))
		app.On("bench.event").Do(func(ctx context.Context, ev *krules.Event) error {
			if _, _, err := ev.Subject.Set(ctx, "n", krules.Inc(1), krules.NoCache()); err != nil {
				return err
			}
			if handled.Add(1) == n {
				close(finished)
			}
			return nil
		})
		w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: name})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(runCtx) }()
	}
	evs := benchEvents(b, b.N)
	b.StartTimer()
	for _, data := range evs {
		e := new(cloudeventsEvent)
		if err := e.UnmarshalJSON(data); err != nil {
			b.Fatal(err)
		}
		if _, err := p.PublishEventAsync(ctx, name, e); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, finished)
	b.StopTimer()
	stop()
	wg.Wait()
}

func (nb *natsBench) raw(b *testing.B, consumers int) {
	b.StopTimer()
	ctx := context.Background()
	name := nb.streamName()
	if _, err := nb.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}}); err != nil {
		b.Fatal(err)
	}
	defer nb.js.DeleteStream(ctx, name)
	cons, err := nb.js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1000})
	if err != nil {
		b.Fatal(err)
	}
	rc := nb.backend.Client()
	var handled atomic.Int64
	finished := make(chan struct{})
	n := int64(b.N)
	var wg sync.WaitGroup
	var its []jetstream.MessagesContext
	for range consumers {
		nc, err := natsgo.Connect(nb.url)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		c, err := js.Consumer(ctx, name, cons.CachedInfo().Name)
		if err != nil {
			b.Fatal(err)
		}
		it, err := c.Messages()
		if err != nil {
			b.Fatal(err)
		}
		its = append(its, it)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := it.Next()
				if err != nil {
					return
				}
				var e cloudeventsEvent
				if err := e.UnmarshalJSON(m.Data()); err != nil {
					continue
				}
				rc.HIncrBy(ctx, nb.backend.Key(e.Subject()), "pn", 1)
				_ = m.Ack()
				if handled.Add(1) == n {
					close(finished)
				}
			}
		}()
	}
	evs := benchEvents(b, b.N)
	b.StartTimer()
	for i, data := range evs {
		if _, err := nb.js.PublishAsync(fmt.Sprintf("%s.%d", name, i%natsBenchSubjects), data); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, finished)
	b.StopTimer()
	for _, it := range its {
		it.Stop()
	}
	wg.Wait()
}

func waitDone(b *testing.B, finished chan struct{}) {
	select {
	case <-finished:
	case <-time.After(5 * time.Minute):
		b.Fatal(errors.New("events not handled within 5 minutes"))
	}
}

type cloudeventsEvent = event.Event
