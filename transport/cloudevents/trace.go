package cloudevents

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
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
// The event keeps the trace context it was built with (the handler span
// of middleware/otel, sent as the traceparent extension): the producer span
// is a child of that span and a sibling of the receiver's span. The
// returned RoundTripper is safe for concurrent use when rt is.
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
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/cloudevents+json" && r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxTracedBody+1))
		if err == nil && len(body) <= maxTracedBody {
			_ = r.Body.Close()
			var head struct{ ID, Type, Subject, Source string }
			if json.Unmarshal(body, &head) == nil {
				id, typ, subj, src = head.ID, head.Type, head.Subject, head.Source
			}
			r2 := r.Clone(r.Context())
			r2.Body = io.NopCloser(bytes.NewReader(body))
			r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
			r2.ContentLength = int64(len(body))
			r = r2
		} else {
			// Too large (or unreadable) to look into: send what was read
			// followed by the rest, without event attributes.
			r2 := r.Clone(r.Context())
			r2.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
			r = r2
		}
	}
	attrs = append(attrs, EventAttributes(id, typ, subj, src)...)
	ctx, span := t.tracer.Start(r.Context(), "send "+r.URL.Host, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	defer span.End()
	resp, err := t.next.RoundTrip(r.WithContext(ctx))
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

// errorType is the error.type of a transport error: its Go type.
func errorType(err error) string { return fmt.Sprintf("%T", err) }
