package nats_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/krules-go/krules"
	krotel "github.com/krules-go/krules/middleware/otel"
	knats "github.com/krules-go/krules/transport/nats"
)

// The collector exports the worker's Stats and the group's lag; the traced
// JetStream context gives the publishes (events and the dead letter)
// producer spans.
func TestWorkerCollectorAndPublishSpans(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 2)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tjs := knats.TracePublishes(js, knats.TraceConfig{TracerProvider: tp})

	app := krules.New()
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	app.On("order.*").Do(func(_ context.Context, ev *krules.Event) error {
		if ev.Type == "order.bad" {
			return errors.New("refused")
		}
		return nil
	})
	w := newWorker(t, tjs, app, knats.WorkerConfig{Stream: stream, Group: "g1", MaxDeliver: 2, Backoff: []time.Duration{10 * time.Millisecond}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(knats.NewWorkerCollector(knats.CollectorConfig{}, w))

	pub, err := knats.NewPublisher(context.Background(), tjs, knats.PublisherConfig{Stream: stream, Source: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, root := tp.Tracer("t").Start(context.Background(), "root")
	okID, err := pub.Publish(ctx, "order.ok", "order-1", krules.Payload{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "order.ok", "order-2", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "order.bad", "order-3", nil); err != nil {
		t.Fatal(err)
	}
	root.End()

	// Before the worker runs: three events of lag, nothing handled.
	lag := `
# HELP krules_nats_consumer_pending_messages Events of the stream not yet delivered to the worker group (consumer lag), summed over partitions.
# TYPE krules_nats_consumer_pending_messages gauge
krules_nats_consumer_pending_messages{group="g1",stream="` + stream + `"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(lag), knats.MetricPending); err != nil {
		t.Error(err)
	}

	startWorker(t, w)
	deadLetters(t, js, stream, 1)
	waitIdle(t, js, stream, 30*time.Second)

	want := `
# HELP krules_nats_consumer_ack_pending_messages Events delivered to the worker group and not yet acknowledged, summed over partitions.
# TYPE krules_nats_consumer_ack_pending_messages gauge
krules_nats_consumer_ack_pending_messages{group="g1",stream="S"} 0
# HELP krules_nats_consumer_info_errors_total Scrapes in which the consumer lag of the group could not be read.
# TYPE krules_nats_consumer_info_errors_total counter
krules_nats_consumer_info_errors_total{group="g1",stream="S"} 0
# HELP krules_nats_consumer_pending_messages Events of the stream not yet delivered to the worker group (consumer lag), summed over partitions.
# TYPE krules_nats_consumer_pending_messages gauge
krules_nats_consumer_pending_messages{group="g1",stream="S"} 0
# HELP krules_nats_worker_ack_errors_total Acknowledgements that could not be sent or confirmed.
# TYPE krules_nats_worker_ack_errors_total counter
krules_nats_worker_ack_errors_total{group="g1",stream="S"} 0
# HELP krules_nats_worker_dead_lettered_total Events sent to the dead-letter stream.
# TYPE krules_nats_worker_dead_lettered_total counter
krules_nats_worker_dead_lettered_total{group="g1",stream="S"} 1
# HELP krules_nats_worker_duplicates_total Deliveries skipped by the idempotency option (already applied).
# TYPE krules_nats_worker_duplicates_total counter
krules_nats_worker_duplicates_total{group="g1",stream="S"} 0
# HELP krules_nats_worker_failed_total Deliveries whose handlers failed (redelivered later or dead-lettered).
# TYPE krules_nats_worker_failed_total counter
krules_nats_worker_failed_total{group="g1",stream="S"} 2
# HELP krules_nats_worker_handled_total Events whose handlers succeeded and that were acknowledged.
# TYPE krules_nats_worker_handled_total counter
krules_nats_worker_handled_total{group="g1",stream="S"} 2
# HELP krules_nats_worker_redelivered_total Deliveries that were not the first of their event.
# TYPE krules_nats_worker_redelivered_total counter
krules_nats_worker_redelivered_total{group="g1",stream="S"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.ReplaceAll(want, `stream="S"`, `stream="`+stream+`"`))); err != nil {
		t.Error(err)
	}

	var publishes, dead []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		switch s.Name {
		case "publish " + stream:
			a := attrsOf(s)
			if a["messaging.destination.name"] == knats.DeadLetterSubject(stream) {
				dead = append(dead, s)
			} else {
				publishes = append(publishes, s)
			}
		}
	}
	if len(publishes) != 3 || len(dead) != 1 {
		t.Fatalf("%d event publish spans and %d dead-letter spans, want 3 and 1", len(publishes), len(dead))
	}
	s := publishes[0]
	if s.SpanKind != trace.SpanKindProducer || s.Parent.SpanID() != root.SpanContext().SpanID() || s.Status.Code != codes.Unset {
		t.Errorf("publish span: kind %v, parent %v, status %v", s.SpanKind, s.Parent.SpanID(), s.Status)
	}
	a := attrsOf(s)
	wantAttrs := map[attribute.Key]string{
		"messaging.system":           "nats",
		"messaging.operation.type":   "send",
		"messaging.operation.name":   "publish",
		"messaging.destination.name": knats.PartitionSubject(stream, knats.PartitionOf("order-1", 2)),
		"messaging.message.id":       okID,
		"cloudevents.event_id":       okID,
		"cloudevents.event_type":     "order.ok",
		"cloudevents.event_subject":  "order-1",
		"cloudevents.event_source":   "shop",
	}
	for k, v := range wantAttrs {
		if a[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, a[k], v)
		}
	}
	if got := attrsOf(dead[0])["cloudevents.event_type"]; got != "order.bad" {
		t.Errorf("dead-letter span event type %q, want order.bad", got)
	}
	// The worker's handler span of the first event: a "process" operation
	// of NATS with the event's CloudEvents attributes.
	var handler *tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name == "krules.handler order.ok" && attrsOf(s)["cloudevents.event_id"] == okID {
			handler = &s
		}
	}
	if handler == nil {
		t.Fatal("no handler span for the first event")
	}
	// Its parent is the publish span (remote): the message carried it.
	var okPublish *tracetest.SpanStub
	for _, p := range publishes {
		if attrsOf(p)["messaging.message.id"] == okID {
			okPublish = &p
		}
	}
	if okPublish == nil {
		t.Fatal("no publish span for the first event")
	}
	if handler.Parent.SpanID() != okPublish.SpanContext.SpanID() || !handler.Parent.IsRemote() {
		t.Errorf("handler span parent %v (remote %v), want the publish span %v", handler.Parent.SpanID(), handler.Parent.IsRemote(), okPublish.SpanContext.SpanID())
	}
	for k, v := range map[attribute.Key]string{
		"messaging.system": "nats", "messaging.operation.type": "process", "messaging.destination.name": stream,
		"messaging.message.id": okID, "cloudevents.event_source": "shop", "cloudevents.event_subject": "order-1",
	} {
		if got := attrsOf(*handler)[k]; got != v {
			t.Errorf("handler span %s = %q, want %q", k, got, v)
		}
	}
}

func attrsOf(s tracetest.SpanStub) map[attribute.Key]string {
	out := map[attribute.Key]string{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value.String()
	}
	return out
}

// Two workers of one group in a process are one series; a failing lag
// read leaves the gauges out and counts the error.
func TestWorkerCollectorSumsAndLagErrors(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	app := krules.New()
	w1 := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Group: "g"})
	w2 := newWorker(t, js, krules.New(), knats.WorkerConfig{Stream: stream, Group: "g"})
	c := knats.NewWorkerCollector(knats.CollectorConfig{Namespace: "shop"}, w1, w2)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if n := testutil.CollectAndCount(c, "shop_"+knats.MetricHandled); n != 1 {
		t.Errorf("%d handled series for two workers of one group, want 1", n)
	}
	if n := testutil.CollectAndCount(c, "shop_"+knats.MetricPending); n != 1 {
		t.Errorf("%d pending series, want 1", n)
	}
	// The consumers disappear: the lag cannot be read.
	for _, s := range []string{"g-p0"} {
		if err := js.DeleteConsumer(context.Background(), stream, s); err != nil {
			t.Fatal(err)
		}
	}
	if n := testutil.CollectAndCount(c, "shop_"+knats.MetricPending); n != 0 {
		t.Errorf("%d pending series after the consumers are gone, want 0", n)
	}
	if n := testutil.CollectAndCount(c, "shop_"+knats.MetricHandled); n != 1 {
		t.Errorf("%d handled series after the consumers are gone, want 1 (stats do not need the server)", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "shop_"+knats.MetricLagErrors {
			if v := mf.GetMetric()[0].GetCounter().GetValue(); v != 3 {
				t.Errorf("lag errors %v, want 3 (three failed scrapes)", v)
			}
			return
		}
	}
	t.Error("no lag error counter")
}
