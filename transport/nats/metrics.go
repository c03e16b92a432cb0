package nats

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/krules-go/krules/transport/cloudevents"
)

// Metric names of the WorkerCollector (with an empty
// CollectorConfig.Namespace). Every metric has the labels stream and group.
const (
	MetricHandled      = "krules_nats_worker_handled_total"
	MetricFailed       = "krules_nats_worker_failed_total"
	MetricRedelivered  = "krules_nats_worker_redelivered_total"
	MetricDuplicates   = "krules_nats_worker_duplicates_total"
	MetricDeadLettered = "krules_nats_worker_dead_lettered_total"
	MetricAckErrors    = "krules_nats_worker_ack_errors_total"
	MetricPending      = "krules_nats_consumer_pending_messages"
	MetricAckPending   = "krules_nats_consumer_ack_pending_messages"
	MetricLagErrors    = "krules_nats_consumer_info_errors_total"
)

// DefaultCollectTimeout bounds the consumer-info requests of one scrape.
const DefaultCollectTimeout = 5 * time.Second

// CollectorConfig configures NewWorkerCollector.
type CollectorConfig struct {
	// Namespace, if set, prefixes the metric names: <namespace>_krules_...
	Namespace string
	// ConstLabels are added to every metric (e.g. {"service": "orders"}).
	ConstLabels prometheus.Labels
	// Timeout bounds the consumer-info requests of one scrape. Default
	// DefaultCollectTimeout.
	Timeout time.Duration
	// NoLag leaves out the consumer lag gauges (no request to the server
	// on a scrape). Default false.
	NoLag bool
}

// WorkerCollector is a prometheus.Collector that exports the Stats of
// workers and the consumer lag of their groups, read on every scrape:
//
//	krules_nats_worker_handled_total{stream, group}           counter  Stats.Handled
//	krules_nats_worker_failed_total{stream, group}            counter  Stats.Failed
//	krules_nats_worker_redelivered_total{stream, group}       counter  Stats.Redelivered
//	krules_nats_worker_duplicates_total{stream, group}        counter  Stats.Duplicates
//	krules_nats_worker_dead_lettered_total{stream, group}     counter  Stats.DeadLettered
//	krules_nats_worker_ack_errors_total{stream, group}        counter  Stats.AckErrors
//	krules_nats_consumer_pending_messages{stream, group}      gauge    events not yet delivered to the group
//	krules_nats_consumer_ack_pending_messages{stream, group}  gauge    events delivered, not yet acknowledged
//	krules_nats_consumer_info_errors_total{stream, group}     counter  scrapes whose lag could not be read
//
// Workers of the same stream and group in one process are summed into one
// series. The counters count what the workers of this process did (sum
// them across processes in your queries); the gauges are the group's
// (its durable consumers' NumPending and NumAckPending summed over the
// partitions, as the server reports them), the same from every process:
// take max, not sum, across processes. The lag is read with one
// consumer-info request per partition on each scrape (bounded by
// CollectorConfig.Timeout); when a request fails the gauges of that group
// are left out of the scrape and the error counter goes up. Safe for
// concurrent use.
type WorkerCollector struct {
	cfg     CollectorConfig
	workers []*Worker

	handled, failed, redelivered, duplicates, dead, ackErrs *prometheus.Desc
	pending, ackPending, lagErrors                          *prometheus.Desc

	mu        sync.Mutex
	lagErrCnt map[groupKey]uint64
}

type groupKey struct{ stream, group string }

// NewWorkerCollector returns a collector of the given workers. Register it
// on a prometheus.Registerer (MustRegister); it holds the workers, so
// unregister it when they are gone.
func NewWorkerCollector(cfg CollectorConfig, workers ...*Worker) *WorkerCollector {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultCollectTimeout
	}
	labels := []string{"stream", "group"}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(cfg.Namespace, "", name), help, labels, cfg.ConstLabels)
	}
	return &WorkerCollector{
		cfg:         cfg,
		workers:     append([]*Worker(nil), workers...),
		handled:     desc(MetricHandled, "Events whose handlers succeeded and that were acknowledged."),
		failed:      desc(MetricFailed, "Deliveries whose handlers failed (redelivered later or dead-lettered)."),
		redelivered: desc(MetricRedelivered, "Deliveries that were not the first of their event."),
		duplicates:  desc(MetricDuplicates, "Deliveries skipped by the idempotency option (already applied)."),
		dead:        desc(MetricDeadLettered, "Events sent to the dead-letter stream."),
		ackErrs:     desc(MetricAckErrors, "Acknowledgements that could not be sent or confirmed."),
		pending:     desc(MetricPending, "Events of the stream not yet delivered to the worker group (consumer lag), summed over partitions."),
		ackPending:  desc(MetricAckPending, "Events delivered to the worker group and not yet acknowledged, summed over partitions."),
		lagErrors:   desc(MetricLagErrors, "Scrapes in which the consumer lag of the group could not be read."),
		lagErrCnt:   map[groupKey]uint64{},
	}
}

// Describe implements prometheus.Collector.
func (c *WorkerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.handled, c.failed, c.redelivered, c.duplicates, c.dead, c.ackErrs, c.pending, c.ackPending, c.lagErrors} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *WorkerCollector) Collect(ch chan<- prometheus.Metric) {
	sums := map[groupKey]*Stats{}
	first := map[groupKey]*Worker{}
	var order []groupKey
	for _, w := range c.workers {
		k := groupKey{w.cfg.Stream, w.cfg.Group}
		s := w.Stats()
		if sum, ok := sums[k]; ok {
			sum.Handled += s.Handled
			sum.Failed += s.Failed
			sum.Redelivered += s.Redelivered
			sum.Duplicates += s.Duplicates
			sum.DeadLettered += s.DeadLettered
			sum.AckErrors += s.AckErrors
			continue
		}
		sums[k], first[k] = &s, w
		order = append(order, k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	for _, k := range order {
		s := sums[k]
		for _, m := range []struct {
			d *prometheus.Desc
			v uint64
		}{{c.handled, s.Handled}, {c.failed, s.Failed}, {c.redelivered, s.Redelivered}, {c.duplicates, s.Duplicates}, {c.dead, s.DeadLettered}, {c.ackErrs, s.AckErrors}} {
			ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v), k.stream, k.group)
		}
		if c.cfg.NoLag {
			continue
		}
		pending, ackPending, err := lag(ctx, first[k])
		c.mu.Lock()
		if err != nil {
			c.lagErrCnt[k]++
			first[k].log.Warn("krules/nats: metrics: consumer info failed; lag left out of this scrape", "stream", k.stream, "group", k.group, "error", err)
		}
		errs := c.lagErrCnt[k]
		c.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(c.lagErrors, prometheus.CounterValue, float64(errs), k.stream, k.group)
		if err == nil {
			ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(pending), k.stream, k.group)
			ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(ackPending), k.stream, k.group)
		}
	}
}

// lag sums NumPending and NumAckPending over the group's consumers.
func lag(ctx context.Context, w *Worker) (pending, ackPending uint64, err error) {
	for _, cons := range w.consum {
		info, err := cons.Info(ctx)
		if err != nil {
			return 0, 0, err
		}
		pending += info.NumPending
		ackPending += uint64(max(info.NumAckPending, 0))
	}
	return pending, ackPending, nil
}

// TraceScopeName is the instrumentation scope (tracer name) of the spans
// of TracePublishes.
const TraceScopeName = "github.com/krules-go/krules/transport/nats"

// TraceConfig configures TracePublishes.
type TraceConfig struct {
	// TracerProvider creates the tracer. Default gotel.GetTracerProvider()
	// (go.opentelemetry.io/otel), read when TracePublishes is called.
	TracerProvider trace.TracerProvider
}

// TracePublishes wraps a JetStream context so that every publish made
// through it (PublishMsg, Publish, PublishMsgAsync and their variants used
// by Publisher and Worker — dead letters included) gets a producer span:
// name "publish <stream>" (the NATS subject up to its first '.'), kind
// Producer, child of the span in the publish ctx (PublishMsgAsync has no
// ctx: a root span covering the call, not the acknowledgement; a try that
// found no room among the async publishes gets none), with the attributes
//
//	messaging.system="nats", messaging.operation.type="send",
//	messaging.operation.name="publish", messaging.destination.name (the
//	NATS subject, e.g. "orders.p.3"), and, for a CloudEvent in structured
//	JSON mode (what Publisher sends), messaging.message.id and
//	cloudevents.event_id, cloudevents.event_type,
//	cloudevents.event_subject, cloudevents.event_source.
//
// A failed publish sets the span status to Error. Everything else is
// passed to js unchanged; pass the result wherever a jetstream.JetStream
// is taken:
//
//	js = nats.TracePublishes(js, nats.TraceConfig{})
//	pub, _ := nats.NewPublisher(ctx, js, nats.PublisherConfig{Stream: "orders"})
//
// When the span records, an event published with PublishMsg to a
// partition gets the producer span as its trace context (a copy of the
// message with the traceparent/tracestate extensions rewritten,
// cloudevents.InjectStructured), so the worker's handler spans
// (middleware/otel) are children of the publish, itself a child of the
// publishing handler's span. Dead letters and async publishes keep the
// trace context they have.
func TracePublishes(js jetstream.JetStream, cfg TraceConfig) jetstream.JetStream {
	tp := cfg.TracerProvider
	if tp == nil {
		tp = gotel.GetTracerProvider()
	}
	return &tracedJS{JetStream: js, tracer: tp.Tracer(TraceScopeName)}
}

type tracedJS struct {
	jetstream.JetStream
	tracer trace.Tracer
}

func (t *tracedJS) start(ctx context.Context, subject string, h natsgo.Header, data []byte, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	stream, _, _ := strings.Cut(subject, ".")
	attrs := []attribute.KeyValue{
		cloudevents.AttrMessagingSystem.String("nats"),
		cloudevents.AttrMessagingOperationType.String("send"),
		cloudevents.AttrMessagingOperationName.String("publish"),
		cloudevents.AttrMessagingDestinationName.String(subject),
	}
	if h != nil && h.Get("Content-Type") == ContentType {
		var head struct{ ID, Type, Subject, Source string }
		if json.Unmarshal(data, &head) == nil {
			attrs = append(attrs, cloudevents.EventAttributes(head.ID, head.Type, head.Subject, head.Source)...)
		}
	}
	opts = append(opts, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	return t.tracer.Start(ctx, "publish "+stream, opts...)
}

// withProducer returns msg, or a copy whose CloudEvent carries the producer
// span as its trace context (cloudevents.InjectStructured), so the worker's
// spans are children of the publish. Only events published to a partition
// of a stream are rewritten: a dead letter keeps the trace of the event.
func withProducer(ctx context.Context, span trace.Span, msg *natsgo.Msg) *natsgo.Msg {
	if !span.IsRecording() || msg.Header == nil || msg.Header.Get("Content-Type") != ContentType || !strings.Contains(msg.Subject, ".p.") {
		return msg
	}
	data, ok := cloudevents.InjectStructured(ctx, msg.Data)
	if !ok {
		return msg
	}
	out := natsgo.NewMsg(msg.Subject)
	out.Reply = msg.Reply
	for k, v := range msg.Header {
		out.Header[k] = append([]string(nil), v...)
	}
	out.Data = data
	return out
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func (t *tracedJS) PublishMsg(ctx context.Context, msg *natsgo.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, span := t.start(ctx, msg.Subject, msg.Header, msg.Data)
	ack, err := t.JetStream.PublishMsg(ctx, withProducer(ctx, span, msg), opts...)
	endSpan(span, err)
	return ack, err
}

func (t *tracedJS) Publish(ctx context.Context, subject string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, span := t.start(ctx, subject, nil, data)
	ack, err := t.JetStream.Publish(ctx, subject, data, opts...)
	endSpan(span, err)
	return ack, err
}

func (t *tracedJS) PublishMsgAsync(msg *natsgo.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	// No ctx: the span (a root) is recorded after the call, and the
	// message keeps the trace context it has.
	start := time.Now()
	f, err := t.JetStream.PublishMsgAsync(msg, opts...)
	t.asyncSpan(start, msg.Subject, msg.Header, msg.Data, err)
	return f, err
}

func (t *tracedJS) PublishAsync(subject string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	start := time.Now()
	f, err := t.JetStream.PublishAsync(subject, data, opts...)
	t.asyncSpan(start, subject, nil, data, err)
	return f, err
}

// asyncSpan records the span of an async publish after the call: a try
// that found no room (ErrTooManyStalledMsgs: nothing was sent, the
// Publisher tries again) gets none.
func (t *tracedJS) asyncSpan(start time.Time, subject string, h natsgo.Header, data []byte, err error) {
	if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
		return
	}
	_, span := t.start(context.Background(), subject, h, data, trace.WithTimestamp(start))
	endSpan(span, err)
}
