// Package otel traces krules handlers with OpenTelemetry: one span per
// handler invocation, named "krules.handler <event type>", with the
// attributes of the OpenTelemetry semantic conventions for CloudEvents
// (cloudevents.event_type, cloudevents.event_subject, and for an event
// that arrived as a CloudEvent, through transport/cloudevents or
// transport/nats, cloudevents.event_id, cloudevents.event_source and the
// messaging attributes of a "process" operation) and krules.handler, the
// handler's
// error recorded (status Error, an exception event), and panics recorded
// before they keep unwinding.
//
// The span is put in the ctx the handler receives, so an event the handler
// emits with that ctx (ev.Emit(ctx, ...), subject.Set(ctx, ...)) is traced
// as a child: a cascade is one trace.
//
// Across processes the trace travels in event metadata as W3C Trace
// Context ("traceparent", "tracestate"): the middleware writes the first
// handler span of an event into its metadata (unless the event already
// carries a trace), the transports (transport/cloudevents, transport/nats)
// send those keys as CloudEvents extensions, and on the worker the
// middleware finds no span in ctx, extracts the parent from the event's
// metadata and starts a consumer span in the producer's trace. Register the
// middleware before (outside) the egress middleware. Inject and Extract do
// the same by hand.
//
//	tp := sdktrace.NewTracerProvider(...)
//	app.Use(otel.Middleware(otel.Config{TracerProvider: tp}), dispatcher.Middleware())
//
// The package name clashes with go.opentelemetry.io/otel; import it under
// another name where both are used, e.g. krotel.
package otel

import (
	"context"
	"fmt"

	"github.com/krules-go/krules"
	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope (tracer name) of the spans.
const ScopeName = "github.com/krules-go/krules/middleware/otel"

// Span attribute keys. The event keys follow the OpenTelemetry semantic
// conventions for CloudEvents, as the transports' producer spans do
// (transport/cloudevents.TraceTransport, transport/nats.TracePublishes);
// krules.* is only for krules' own notions.
const (
	AttrEventType   = attribute.Key("cloudevents.event_type")
	AttrSubjectName = attribute.Key("cloudevents.event_subject")
	AttrEventID     = attribute.Key("cloudevents.event_id")
	AttrEventSource = attribute.Key("cloudevents.event_source")
	AttrHandler     = attribute.Key("krules.handler")

	// Messaging attributes of the handler spans of an event that arrived
	// as a CloudEvent: messaging.operation.type "process" and
	// messaging.message.id (the event id); for the NATS worker also
	// messaging.system "nats" and messaging.destination.name (the stream).
	AttrMessagingSystem          = attribute.Key("messaging.system")
	AttrMessagingOperationType   = attribute.Key("messaging.operation.type")
	AttrMessagingDestinationName = attribute.Key("messaging.destination.name")
	AttrMessagingMessageID       = attribute.Key("messaging.message.id")
)

// Metadata keys written by Inject with the default (W3C) propagator.
const (
	MetaTraceParent = "traceparent"
	MetaTraceState  = "tracestate"
)

// Config configures Middleware. The zero value uses the global tracer
// provider and W3C Trace Context.
type Config struct {
	// TracerProvider creates the tracer. Default gotel.GetTracerProvider()
	// (go.opentelemetry.io/otel), read when Middleware is called.
	TracerProvider trace.TracerProvider
	// Propagator reads a remote parent from event metadata when the
	// handler's ctx carries no span. Default propagation.TraceContext{}.
	Propagator propagation.TextMapPropagator
	// SpanName names the span. Default "krules.handler " + ev.Type.
	SpanName func(ctx context.Context, ev *krules.Event) string
	// Attributes, if set, adds attributes to every span (at start, so
	// samplers see them).
	Attributes func(ctx context.Context, ev *krules.Event) []attribute.KeyValue
}

// Middleware returns the tracing middleware. Put it first (outermost) to
// time the whole invocation, inner middleware included. A span ends when
// the handler returns; its status is left Unset on success (as
// OpenTelemetry asks of instrumentation) and set to Error, with the error
// recorded, on failure. The handler's error is returned unchanged.
func Middleware(cfg Config) krules.Middleware {
	tp := cfg.TracerProvider
	if tp == nil {
		tp = gotel.GetTracerProvider()
	}
	tracer := tp.Tracer(ScopeName)
	prop := cfg.Propagator
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	return func(ctx context.Context, ev *krules.Event, next krules.Next) (err error) {
		kind := trace.SpanKindInternal
		_, local := ev.Meta(metaLocal)
		if !local && !trace.SpanContextFromContext(ctx).IsValid() {
			if rctx := prop.Extract(ctx, MetaCarrier{Event: ev}); trace.SpanContextFromContext(rctx).IsValid() {
				ctx, kind = rctx, trace.SpanKindConsumer
			}
		}
		name := "krules.handler " + ev.Type
		if cfg.SpanName != nil {
			name = cfg.SpanName(ctx, ev)
		}
		attrs := []attribute.KeyValue{
			AttrEventType.String(ev.Type),
			AttrSubjectName.String(subjectName(ev)),
			AttrHandler.String(krules.HandlerName(ctx)),
		}
		if in, ok := ev.Meta(metaCloudEvent); ok {
			// The incoming CloudEvent (transport/cloudevents.MetaCloudEvent,
			// a *event.Event of the CloudEvents SDK).
			if e, ok := in.(interface {
				ID() string
				Source() string
			}); ok {
				attrs = append(attrs, AttrEventID.String(e.ID()), AttrEventSource.String(e.Source()),
					AttrMessagingOperationType.String("process"), AttrMessagingMessageID.String(e.ID()))
				if stream, ok := ev.Meta(metaNATSStream); ok {
					attrs = append(attrs, AttrMessagingSystem.String("nats"), AttrMessagingDestinationName.String(fmt.Sprint(stream)))
				}
			}
		}
		if cfg.Attributes != nil {
			attrs = append(attrs, cfg.Attributes(ctx, ev)...)
		}
		ctx, span := tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
		if _, ok := ev.Meta(MetaTraceParent); !ok {
			// Let egress middleware inside this one (CloudEvents, NATS)
			// carry the trace on: the first handler's span becomes the
			// event's trace context. metaLocal keeps the other handlers of
			// this event from taking it as a remote parent.
			prop.Inject(ctx, MetaCarrier{Event: ev})
			ev.SetMeta(metaLocal, "1")
		}
		defer func() {
			if r := recover(); r != nil {
				perr := fmt.Errorf("panic: %v", r)
				span.RecordError(perr, trace.WithStackTrace(true))
				span.SetStatus(codes.Error, perr.Error())
				span.End()
				panic(r)
			}
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}()
		return next(ctx)
	}
}

// metaLocal marks trace metadata written by this middleware for the
// current event (as opposed to metadata that arrived from a producer). Like
// every metadata key starting with "_", it is internal: transports never
// send it.
const metaLocal = "_krules_otel_local"

// metaCloudEvent is transport/cloudevents.MetaCloudEvent (not imported, to
// keep this package free of the transports).
const metaCloudEvent = "cloudevent"

// metaNATSStream is transport/nats.MetaStream, set by the NATS worker.
const metaNATSStream = "nats_stream"

func subjectName(ev *krules.Event) string {
	if ev.Subject == nil {
		return ""
	}
	return ev.Subject.Name()
}

// MetaCarrier adapts an event's metadata to propagation.TextMapCarrier, so
// any OpenTelemetry propagator can read and write it. Get returns "" for a
// missing key or a non-string value.
type MetaCarrier struct {
	Event *krules.Event
}

// Get implements propagation.TextMapCarrier.
func (c MetaCarrier) Get(key string) string {
	v, _ := c.Event.Meta(key)
	s, _ := v.(string)
	return s
}

// Set implements propagation.TextMapCarrier.
func (c MetaCarrier) Set(key, value string) { c.Event.SetMeta(key, value) }

// Keys implements propagation.TextMapCarrier.
func (c MetaCarrier) Keys() []string {
	m := c.Event.Metadata()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the span context of ctx into ev's metadata as W3C Trace
// Context: "traceparent" (and "tracestate" when not empty). Without a valid
// span in ctx it writes nothing. Transports call it (or read the keys) on
// the producer side, before sending ev. The metadata is shared by the
// handlers of one emit: a later handler whose ctx carries no span will see
// the injected span as its (remote) parent; TraceParent avoids touching the
// event when only the header value is needed.
func Inject(ctx context.Context, ev *krules.Event) {
	propagation.TraceContext{}.Inject(ctx, MetaCarrier{Event: ev})
}

// Extract returns ctx with the remote span context found in ev's metadata
// ("traceparent"/"tracestate", W3C Trace Context), to be the parent of the
// spans started with it; ctx unchanged when there is none or it is
// invalid.
func Extract(ctx context.Context, ev *krules.Event) context.Context {
	return propagation.TraceContext{}.Extract(ctx, MetaCarrier{Event: ev})
}

// TraceParent returns the W3C "traceparent" header value of ctx's span
// ("" when ctx has no valid span), for transports that build their own
// headers or CloudEvents extensions; use it with krules.WithMeta:
//
//	app.Emit(ctx, "order.created", s, p, krules.WithMeta(otel.MetaTraceParent, otel.TraceParent(ctx)))
func TraceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c[MetaTraceParent]
}
