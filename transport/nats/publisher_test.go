package nats_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/middleware"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

func TestPublisherMiddlewareAndForward(t *testing.T) {
	_, js := connect(t)
	stream := newLogStream(t, js, 2)
	ctx := context.Background()

	// The consuming side records what arrives through the stream.
	arrived := make(chan *krules.Event, 16)
	sink := krules.New()
	sink.On("*").Do(func(ctx context.Context, ev *krules.Event) error { arrived <- ev; return nil })
	startWorker(t, newWorker(t, js, sink, knats.WorkerConfig{Stream: stream}))

	// The producing side: topic metadata and forwarded patterns.
	p, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: stream, Source: "producer", Patterns: []string{"audit.*"}})
	if err != nil {
		t.Fatal(err)
	}
	app := krules.New()
	p.Install(app)
	var local atomic.Int32
	app.On("order.*", "audit.*").Do(func(context.Context, *krules.Event) error { local.Add(1); return nil })
	s := app.Subject("o-1")
	if _, _, err := s.SetExt(ctx, "region", "eu", krules.NoCache()); err != nil {
		t.Fatal(err)
	}

	next := func() *krules.Event {
		t.Helper()
		select {
		case ev := <-arrived:
			return ev
		case <-time.After(15 * time.Second):
			t.Fatal("nothing arrived")
			return nil
		}
	}

	// direct (default): published, no local handler.
	if err := app.Emit(ctx, "order.created", s, krules.Payload{"n": 1}, krules.WithMeta(knats.MetaTopic, stream)); err != nil {
		t.Fatal(err)
	}
	ev := next()
	ce, _ := ev.Meta(cloudevents.MetaCloudEvent)
	e := ce.(interface {
		Source() string
		Extensions() map[string]any
	})
	if ev.Type != "order.created" || ev.Subject.Name() != "o-1" || ev.Payload()["n"] != int64(1) || e.Source() != "producer" || e.Extensions()["region"] != "eu" {
		t.Fatalf("arrived %v payload %v ext %v", ev, ev.Payload(), e.Extensions())
	}
	if local.Load() != 0 {
		t.Fatalf("direct: %d local handler runs", local.Load())
	}

	// both: published and handled locally (once per handler).
	if err := app.Emit(ctx, "order.paid", s, nil, krules.WithMeta(knats.MetaTopic, stream), krules.WithMeta(cloudevents.MetaDispatchPolicy, "both")); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != "order.paid" || local.Load() != 1 {
		t.Fatalf("both: arrived %v, %d local runs", ev, local.Load())
	}

	// Forwarded pattern: published by the forward handler, local handler runs too.
	if err := app.Emit(ctx, "audit.login", app.Subject("u-1"), krules.Payload{"ip": "x"}); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != "audit.login" || ev.Subject.Name() != "u-1" || local.Load() != 2 {
		t.Fatalf("forward: arrived %v, %d local runs", ev, local.Load())
	}

	// A topic naming no stream reaches the error handler.
	var mu sync.Mutex
	var errs []error
	app2 := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}))
	p.Install(app2)
	app2.On("x").Do(func(context.Context, *krules.Event) error { return nil })
	if err := app2.Emit(ctx, "x", app2.Subject("s"), nil, krules.WithMeta(knats.MetaTopic, "no_such_stream_"+stream)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(errs) != 1 || !errors.Is(errs[0], jetstream.ErrStreamNotFound) {
		t.Errorf("errors %v", errs)
	}
	mu.Unlock()
	select {
	case ev := <-arrived:
		t.Fatalf("unexpected arrival %v", ev)
	default:
	}
}

// proxy is a TCP forwarder that the test can cut: every connection is
// closed and new ones are refused until it is restored. It stands for NATS
// going away.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

func TestWorkerSurvivesNATSOutage(t *testing.T) {
	url := testenv.NATSURL(t)
	_, js := connect(t)
	stream := newStream(t, js, 4)
	host := url[len("nats://"):]
	px := newProxy(t, host)
	disconnected := make(chan struct{}, 1)
	reconnected := make(chan struct{}, 1)
	wnc, err := knats.Connect("nats://"+px.ln.Addr().String(),
		func(o *natsOptions) error {
			o.DisconnectedErrCB = func(*natsConn, error) { notify(disconnected) }
			o.ReconnectedCB = func(*natsConn) { notify(reconnected) }
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wnc.Close) // registered before startWorker, so it runs after the worker stopped
	wjs, err := jetstream.New(wnc)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	rec := newRecorder(n)
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev)})
		return nil
	})
	startWorker(t, newWorker(t, wjs, app, knats.WorkerConfig{Stream: stream, AckWait: 2 * time.Second}))
	p := publisher(t, js, stream) // the producer's connection is not cut
	ctx := context.Background()
	for i := 1; i <= n/2; i++ {
		if _, err := p.Publish(ctx, "tick", "s", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	waitCount(t, rec, n/2)
	px.cut()
	<-disconnected
	for i := n/2 + 1; i <= n; i++ { // published while the worker is cut off
		if _, err := p.Publish(ctx, "tick", "s", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	px.restore()
	select {
	case <-reconnected:
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not reconnect")
	}
	rec.wait(t, 60*time.Second)
	for i, r := range rec.all() {
		if r.seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, r.seq)
		}
	}
}

func waitCount(t *testing.T, r *recorder, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(r.all()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d handled", len(r.all()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// A publish that fails inside middleware.Retry is really published again on
// the next attempt (it used to be a silent no-op), and a failure of the last
// attempt reaches the error handler.
func TestPublisherMiddlewareUnderRetry(t *testing.T) {
	_, js := connect(t)
	stream := newLogStream(t, js, 1)
	ctx := context.Background()
	p, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: stream, Source: "producer"})
	if err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, failing int) (calls int, errs []error, ev *krules.Event) {
		app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) { errs = append(errs, err) }))
		app.Use(middleware.Retry(middleware.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}), p.Middleware())
		app.On("x").Do(func(_ context.Context, e *krules.Event) error { ev = e; return nil })
		topic := func(string, string) string {
			calls++
			if calls <= failing {
				return "no_such_stream_" + stream
			}
			return stream
		}
		if err := app.Emit(ctx, "x", app.Subject("s"), nil, krules.WithMeta(knats.MetaTopic, topic), krules.WithMeta(cloudevents.MetaDispatchPolicy, "both")); err != nil {
			t.Fatal(err)
		}
		return calls, errs, ev
	}
	t.Run("always failing", func(t *testing.T) {
		calls, errs, _ := run(t, 100)
		if calls != 3 {
			t.Errorf("publish attempts = %d, want 3", calls)
		}
		if len(errs) != 1 || !errors.Is(errs[0], middleware.ErrRetriesExhausted) || !errors.Is(errs[0], jetstream.ErrStreamNotFound) {
			t.Fatalf("errors = %v, want one ErrRetriesExhausted wrapping ErrStreamNotFound", errs)
		}
	})
	t.Run("recovering", func(t *testing.T) {
		calls, errs, ev := run(t, 1)
		if calls != 2 || len(errs) != 0 {
			t.Fatalf("attempts %d, errors %v; want 2 attempts and no error", calls, errs)
		}
		if ok, _ := ev.Meta(knats.MetaPublished); ok != true {
			t.Errorf("MetaPublished = %v", ok)
		}
		if v, _ := ev.Meta(knats.MetaPublishError); v != nil {
			t.Errorf("MetaPublishError = %v after a successful retry", v)
		}
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := st.Info(ctx); err != nil || info.State.Msgs != 1 {
			t.Errorf("stream info %v (%v), want 1 message", info, err)
		}
	})
}

// The trace context metadata ("traceparent"/"tracestate", as the otel
// middleware's Inject writes it) travels from the publishing App to the
// event the Worker emits.
func TestTraceContextTravels(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	ctx := context.Background()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const ts = "congo=t61rcWkgMzE"
	type trace struct{ tp, ts any }
	arrived := make(chan trace, 1)
	sink := krules.New()
	sink.On("order.created").Do(func(_ context.Context, ev *krules.Event) error {
		var tr trace
		tr.tp, _ = ev.Meta(cloudevents.MetaTraceParent)
		tr.ts, _ = ev.Meta(cloudevents.MetaTraceState)
		arrived <- tr
		return nil
	})
	startWorker(t, newWorker(t, js, sink, knats.WorkerConfig{Stream: stream}))

	p, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: stream, Source: "producer"})
	if err != nil {
		t.Fatal(err)
	}
	app := krules.New()
	p.Install(app)
	app.On("order.created").Do(func(context.Context, *krules.Event) error { return nil })
	if err := app.Emit(ctx, "order.created", app.Subject("o-1"), nil, krules.WithMeta(knats.MetaTopic, stream),
		krules.WithMeta(cloudevents.MetaTraceParent, tp), krules.WithMeta(cloudevents.MetaTraceState, ts)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-arrived:
		if got.tp != tp || got.ts != ts {
			t.Errorf("worker metadata traceparent %v tracestate %v, want %q %q", got.tp, got.ts, tp, ts)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("nothing arrived")
	}
}

// PublishEventAsync applies backpressure: with a JetStream context allowing
// only a few unacknowledged async publishes, a burst much larger than that
// completes (it used to fail with "stalled with too many outstanding async
// published messages"), in order, and a cancelled ctx stops the wait.
func TestPublishEventAsyncBackpressure(t *testing.T) {
	nc, js0 := connect(t)
	stream := newStream(t, js0, 1)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A group must exist before publishing (interest retention).
	newWorker(t, js0, krules.New(), knats.WorkerConfig{Stream: stream})
	p, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: stream, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		e, err := cloudevents.NewEvent(ctx, "tick", "s", krules.Payload{"seq": i}, cloudevents.EventOptions{Source: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.PublishEventAsync(ctx, stream, e); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("async publishes not acknowledged")
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n {
		t.Fatalf("stream has %d messages, want %d", info.State.Msgs, n)
	}
	// Order: the payload seqs are stored 0..n-1.
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var e event.Event
		if err := e.UnmarshalJSON(m.Data()); err != nil {
			t.Fatal(err)
		}
		var pl map[string]any
		_ = e.DataAs(&pl)
		if int(pl["seq"].(float64)) != i {
			t.Fatalf("message %d has seq %v", i, pl["seq"])
		}
	}

	// A full window and a ctx that ends: the call returns ctx's error. The
	// stream is replaced by a plain subscriber that never acknowledges.
	ghost := newStream(t, js0, 1)
	js3, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1))
	if err != nil {
		t.Fatal(err)
	}
	p3, err := knats.NewPublisher(ctx, js3, knats.PublisherConfig{Stream: ghost, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := js0.DeleteStream(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(ghost + ".p.*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var last error
	for i := 0; i < 3 && last == nil; i++ {
		e, _ := cloudevents.NewEvent(ctx, "tick", "s", nil, cloudevents.EventOptions{Source: "test"})
		_, last = p3.PublishEventAsync(cctx, ghost, e)
	}
	if !errors.Is(last, context.DeadlineExceeded) {
		t.Fatalf("full window, ctx deadline: err = %v, want context.DeadlineExceeded", last)
	}
}
