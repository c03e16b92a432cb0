package cloudevents

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TraceScopeName is the instrumentation scope (tracer name) of the spans of
// TraceTransport.
const TraceScopeName = "github.com/krules-go/krules/transport/cloudevents"

// Span attribute keys of the OpenTelemetry semantic conventions used by the
// krules transports (messaging, CloudEvents, HTTP client), shared with
// transport/nats and middleware/otel.
const (
	AttrMessagingSystem          = attribute.Key("messaging.system")
	AttrMessagingOperationType   = attribute.Key("messaging.operation.type")
	AttrMessagingOperationName   = attribute.Key("messaging.operation.name")
	AttrMessagingDestinationName = attribute.Key("messaging.destination.name")
	AttrMessagingMessageID       = attribute.Key("messaging.message.id")

	AttrEventID      = attribute.Key("cloudevents.event_id")
	AttrEventType    = attribute.Key("cloudevents.event_type")
	AttrEventSubject = attribute.Key("cloudevents.event_subject")
	AttrEventSource  = attribute.Key("cloudevents.event_source")

	AttrHTTPMethod     = attribute.Key("http.request.method")
	AttrHTTPStatusCode = attribute.Key("http.response.status_code")
	AttrURLFull        = attribute.Key("url.full")
	AttrServerAddress  = attribute.Key("server.address")
	AttrErrorType      = attribute.Key("error.type")
)

// EventAttributes returns the CloudEvents span attributes of an event
// (cloudevents.event_id, _type, _subject, _source), leaving out the empty
// ones, and messaging.message.id (the event id, which is also the message
// id on every krules transport).
func EventAttributes(id, eventType, subject, source string) []attribute.KeyValue {
	out := make([]attribute.KeyValue, 0, 5)
	if id != "" {
		out = append(out, AttrMessagingMessageID.String(id), AttrEventID.String(id))
	}
	if eventType != "" {
		out = append(out, AttrEventType.String(eventType))
	}
	if subject != "" {
		out = append(out, AttrEventSubject.String(subject))
	}
	if source != "" {
		out = append(out, AttrEventSource.String(source))
	}
	return out
}

// TraceConfig configures TraceTransport.
type TraceConfig struct {
	// TracerProvider creates the tracer. Default gotel.GetTracerProvider()
	// (go.opentelemetry.io/otel), read when TraceTransport is called.
	TracerProvider trace.TracerProvider
}

// TraceTransport wraps an http.RoundTripper (nil: http.DefaultTransport)
// so that every request it sends gets a producer span: name "send
// <host>", kind Producer, child of the span in the request's context, with
// the attributes
//
//	messaging.system="http", messaging.operation.type="send",
//	messaging.operation.name="send", messaging.destination.name (the URL
//	without its query), messaging.message.id and cloudevents.event_id,
//	cloudevents.event_type, cloudevents.event_subject,
//	cloudevents.event_source (from the ce-* headers in binary mode, from
//	the body in structured mode), http.request.method, url.full,
//	server.address, and http.response.status_code.
//
// A transport error or a non-2xx answer sets the span status to Error
// (error.type: the status code, or the Go error type). Use it as the
// Transport of DispatcherConfig.Client:
//
//	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{
//		Client: &http.Client{Timeout: cloudevents.DefaultDispatchTimeout, Transport: cloudevents.TraceTransport(nil, cloudevents.TraceConfig{})},
//	})
//
// When the span records, the request's CloudEvent gets the producer
// span as its trace context (the traceparent and tracestate extensions:
// ce-traceparent in binary mode, InjectStructured in structured mode), so
// the receiver's spans (middleware/otel) are children of the producer span,
// itself a child of the sending handler's span. The caller's request is
// not modified. The returned RoundTripper is safe for concurrent use when
// rt is.
func TraceTransport(rt http.RoundTripper, cfg TraceConfig) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	tp := cfg.TracerProvider
	if tp == nil {
		tp = gotel.GetTracerProvider()
	}
	return &traceTransport{next: rt, tracer: tp.Tracer(TraceScopeName)}
}

type traceTransport struct {
	next   http.RoundTripper
	tracer trace.Tracer
}

// maxTracedBody bounds how much of a structured-mode body is read for the
// span attributes (the whole body is sent either way).
const maxTracedBody = 1 << 20

func (t *traceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	dest := *r.URL
	dest.RawQuery, dest.Fragment, dest.User = "", "", nil
	attrs := []attribute.KeyValue{
		AttrMessagingSystem.String("http"),
		AttrMessagingOperationType.String("send"),
		AttrMessagingOperationName.String("send"),
		AttrMessagingDestinationName.String(dest.String()),
		AttrHTTPMethod.String(r.Method),
		AttrURLFull.String(dest.String()),
		AttrServerAddress.String(r.URL.Hostname()),
	}
	id, typ, subj, src := r.Header.Get("Ce-Id"), r.Header.Get("Ce-Type"), r.Header.Get("Ce-Subject"), r.Header.Get("Ce-Source")
	binary := id != ""
	var body []byte    // the structured event, read whole
	var rest io.Reader // a body too large to look into
	structured := false
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/cloudevents+json" && r.Body != nil && r.Body != http.NoBody {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, maxTracedBody+1))
		if err == nil && len(body) <= maxTracedBody {
			_ = r.Body.Close()
			structured = true
			var head struct{ ID, Type, Subject, Source string }
			if json.Unmarshal(body, &head) == nil {
				id, typ, subj, src = head.ID, head.Type, head.Subject, head.Source
			}
		} else {
			// Too large (or unreadable) to look into: send what was read
			// followed by the rest, without event attributes.
			rest = io.MultiReader(bytes.NewReader(body), r.Body)
		}
	}
	attrs = append(attrs, EventAttributes(id, typ, subj, src)...)
	ctx, span := t.tracer.Start(r.Context(), "send "+r.URL.Host, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	defer span.End()
	out := r.Clone(ctx) // headers deep-copied: the caller's request is not changed
	if span.IsRecording() && id != "" {
		// The event carries the producer span as its trace context, so the
		// receiver's spans are its children.
		switch {
		case structured:
			if b, ok := InjectStructured(ctx, body); ok {
				body = b
			}
		case binary:
			tp, ts := traceContext(ctx)
			out.Header.Set("Ce-Traceparent", tp)
			if ts != "" {
				out.Header.Set("Ce-Tracestate", ts)
			} else {
				out.Header.Del("Ce-Tracestate")
			}
		}
	}
	switch {
	case structured:
		b := body
		out.Body = io.NopCloser(bytes.NewReader(b))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		out.ContentLength = int64(len(b))
	case rest != nil:
		out.Body = struct {
			io.Reader
			io.Closer
		}{rest, r.Body}
	}
	resp, err := t.next.RoundTrip(out)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(AttrErrorType.String(errorType(err)))
		return resp, err
	}
	span.SetAttributes(AttrHTTPStatusCode.Int(resp.StatusCode))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		code := strconv.Itoa(resp.StatusCode)
		span.SetStatus(codes.Error, "status "+code)
		span.SetAttributes(AttrErrorType.String(code))
	}
	return resp, nil
}

// traceContext returns the W3C traceparent and tracestate of ctx's span.
func traceContext(ctx context.Context) (traceparent, tracestate string) {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c[MetaTraceParent], c[MetaTraceState]
}

// InjectStructured returns a copy of data, a CloudEvent in structured JSON
// mode, whose traceparent and tracestate extensions are those of the span
// in ctx (tracestate removed when the span has none): a producer span
// becomes the parent of the consumer's spans. It returns data unchanged
// and false when ctx has no valid span or data is not a JSON object. The
// members are re-encoded in sorted order; their values are kept byte for
// byte.
func InjectStructured(ctx context.Context, data []byte) ([]byte, bool) {
	tp, ts := traceContext(ctx)
	if tp == "" {
		return data, false
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return data, false
	}
	top[ExtTraceParent], _ = json.Marshal(tp)
	if ts != "" {
		top[ExtTraceState], _ = json.Marshal(ts)
	} else {
		delete(top, ExtTraceState)
	}
	out, err := json.Marshal(top)
	if err != nil {
		return data, false
	}
	return out, true
}

// errorType is the error.type of a transport error: its Go type.
func errorType(err error) string { return fmt.Sprintf("%T", err) }
