package cloudevents_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/krules-go/krules"
	krotel "github.com/krules-go/krules/middleware/otel"
	"github.com/krules-go/krules/transport/cloudevents"
)

func TestReceiverMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := cloudevents.NewHTTPMetrics(cloudevents.MetricsConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	app := krules.New()
	var handled int
	app.On("order.created").Do(func(context.Context, *krules.Event) error { handled++; return nil })
	srv := httptest.NewServer(m.Handler(cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{})))
	defer srv.Close()

	post := func(ct, body string) int {
		t.Helper()
		resp, err := http.Post(srv.URL, ct, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `{"specversion":"1.0","id":"1","source":"t","type":"order.created","subject":"o-1","datacontenttype":"application/json","data":{}}`
	if c := post("application/cloudevents+json", good); c != 202 {
		t.Fatalf("good event: %d", c)
	}
	if c := post("application/cloudevents+json", good); c != 202 {
		t.Fatalf("good event: %d", c)
	}
	if c := post("application/cloudevents+json", `{"specversion":"1.0"`); c != 400 {
		t.Fatalf("bad event: %d", c)
	}
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if handled != 2 {
		t.Fatalf("handled %d, want 2", handled)
	}
	want := `
# HELP krules_http_receiver_requests_total CloudEvents HTTP receiver requests by outcome and status code.
# TYPE krules_http_receiver_requests_total counter
krules_http_receiver_requests_total{code="202",outcome="ok"} 2
krules_http_receiver_requests_total{code="400",outcome="rejected"} 1
krules_http_receiver_requests_total{code="405",outcome="rejected"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), cloudevents.ReceiverRequestsName); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, cloudevents.ReceiverDurationName); n != 3 {
		t.Errorf("%d receiver duration series, want 3", n)
	}
}

func spanAttrs(s tracetest.SpanStub) map[attribute.Key]string {
	out := map[attribute.Key]string{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value.String()
	}
	return out
}

// The Dispatcher's client with both wrappers: every POST is counted by
// outcome and code and gets a producer span with the messaging and
// CloudEvents attributes, in both encodings, and the target receives the
// event unchanged.
func TestDispatchMetricsAndSpans(t *testing.T) {
	for _, enc := range []cloudevents.Encoding{cloudevents.Structured, cloudevents.Binary} {
		name := map[cloudevents.Encoding]string{cloudevents.Structured: "structured", cloudevents.Binary: "binary"}[enc]
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := cloudevents.NewHTTPMetrics(cloudevents.MetricsConfig{Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			exp := tracetest.NewInMemoryExporter()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			client := &http.Client{Transport: m.Transport(cloudevents.TraceTransport(nil, cloudevents.TraceConfig{TracerProvider: tp}))}
			d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "shop", Client: client, Encoding: enc})

			ok, refused := newSink(t, 200), newSink(t, 503)
			down := httptest.NewServer(http.NotFoundHandler())
			down.Close()

			app := krules.New()
			ctx, root := tp.Tracer("t").Start(t.Context(), "root")
			var id string
			var errs []error
			app.On("order.approved").Do(func(ctx context.Context, ev *krules.Event) error {
				var err error
				id, err = d.Dispatch(ctx, ev, ok.srv.URL+"/in?x=1")
				errs = append(errs, err)
				_, err = d.Dispatch(ctx, ev, refused.srv.URL)
				errs = append(errs, err)
				_, err = d.Dispatch(ctx, ev, down.URL)
				errs = append(errs, err)
				return nil
			})
			if err := app.Emit(ctx, "order.approved", app.Subject("order-7"), krules.Payload{"by": "ann"}); err != nil {
				t.Fatal(err)
			}
			if errs[0] != nil {
				t.Fatal(errs[0])
			}
			var se *cloudevents.StatusError
			if !errors.As(errs[1], &se) || se.Code != 503 {
				t.Fatalf("dispatch to a 503 target: %v", errs[1])
			}
			if errs[2] == nil {
				t.Fatal("dispatch to a closed server: no error")
			}
			root.End()

			want := `
# HELP krules_http_dispatch_requests_total CloudEvents HTTP dispatch requests by outcome and status code.
# TYPE krules_http_dispatch_requests_total counter
krules_http_dispatch_requests_total{code="",outcome="error"} 1
krules_http_dispatch_requests_total{code="200",outcome="ok"} 1
krules_http_dispatch_requests_total{code="503",outcome="error"} 1
`
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), cloudevents.DispatchRequestsName); err != nil {
				t.Error(err)
			}

			// The target got the event, the body intact.
			got := ok.all()
			if len(got) != 1 {
				t.Fatalf("target got %d requests", len(got))
			}
			if enc == cloudevents.Structured {
				var e map[string]any
				if err := json.Unmarshal([]byte(got[0].body), &e); err != nil || e["id"] != id || e["subject"] != "order-7" {
					t.Fatalf("structured body %q (%v)", got[0].body, err)
				}
			} else if got[0].header.Get("Ce-Id") != id || got[0].body != `{"by":"ann"}` {
				t.Fatalf("binary request: ce-id %q body %q", got[0].header.Get("Ce-Id"), got[0].body)
			}

			spans := exp.GetSpans()
			if len(spans) != 4 {
				t.Fatalf("%d spans, want 3 sends and the root", len(spans))
			}
			s := spans[0]
			if s.SpanKind != trace.SpanKindProducer || s.Parent.SpanID() != root.SpanContext().SpanID() {
				t.Errorf("span kind %v parent %v; want producer, child of root", s.SpanKind, s.Parent.SpanID())
			}
			if want := "send " + strings.TrimPrefix(ok.srv.URL, "http://"); s.Name != want {
				t.Errorf("span name %q, want %q", s.Name, want)
			}
			a := spanAttrs(s)
			wantAttrs := map[attribute.Key]string{
				"messaging.system":           "http",
				"messaging.operation.type":   "send",
				"messaging.operation.name":   "send",
				"messaging.destination.name": ok.srv.URL + "/in",
				"messaging.message.id":       id,
				"cloudevents.event_id":       id,
				"cloudevents.event_type":     "order.approved",
				"cloudevents.event_subject":  "order-7",
				"cloudevents.event_source":   "shop",
				"http.request.method":        "POST",
				"http.response.status_code":  "200",
			}
			for k, v := range wantAttrs {
				if a[k] != v {
					t.Errorf("attribute %s = %q, want %q", k, a[k], v)
				}
			}
			if s.Status.Code != codes.Unset {
				t.Errorf("ok send: status %v", s.Status)
			}
			// The event carries the producer span as its trace context.
			var wire string
			if enc == cloudevents.Structured {
				var e map[string]any
				_ = json.Unmarshal([]byte(got[0].body), &e)
				wire, _ = e["traceparent"].(string)
			} else {
				wire = got[0].header.Get("Ce-Traceparent")
			}
			if want := "00-" + s.SpanContext.TraceID().String() + "-" + s.SpanContext.SpanID().String() + "-01"; wire != want {
				t.Errorf("traceparent on the wire %q, want the producer span %q", wire, want)
			}
			if spans[1].Status.Code != codes.Error || spanAttrs(spans[1])["error.type"] != "503" {
				t.Errorf("503 send: status %v, error.type %q", spans[1].Status, spanAttrs(spans[1])["error.type"])
			}
			if spans[2].Status.Code != codes.Error || len(spans[2].Events) != 1 {
				t.Errorf("failed send: status %v, events %v", spans[2].Status, spans[2].Events)
			}
		})
	}
}

// The otel middleware's handler span on the receiving side carries the
// CloudEvents attributes of the incoming event.
func TestHandlerSpanHasCloudEventAttributes(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	app := krules.New()
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	app.On("order.created").Named("h").Do(func(context.Context, *krules.Event) error { return nil })
	srv := httptest.NewServer(cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}))
	defer srv.Close()
	body := `{"specversion":"1.0","id":"ev-9","source":"shop","type":"order.created","subject":"o-1"}`
	resp, err := http.Post(srv.URL, "application/cloudevents+json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	want := map[attribute.Key]string{
		"cloudevents.event_id": "ev-9", "cloudevents.event_source": "shop",
		"cloudevents.event_type": "order.created", "cloudevents.event_subject": "o-1", "krules.handler": "h",
		"messaging.operation.type": "process", "messaging.message.id": "ev-9",
	}
	a := spanAttrs(spans[0])
	if sys, ok := a["messaging.system"]; ok {
		t.Errorf("HTTP-delivered handler span has messaging.system %q", sys)
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, a[k], v)
		}
	}
}

func TestInjectStructured(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("t").Start(context.Background(), "p")
	defer span.End()
	in := []byte(`{"id":"1","traceparent":"00-0123456789abcdef0123456789abcdef-0123456789abcdef-01","tracestate":"a=b","data":{"x":[1,2]}}`)
	out, ok := cloudevents.InjectStructured(ctx, in)
	if !ok {
		t.Fatal("not injected")
	}
	var e map[string]any
	if err := json.Unmarshal(out, &e); err != nil {
		t.Fatal(err)
	}
	want := "00-" + span.SpanContext().TraceID().String() + "-" + span.SpanContext().SpanID().String() + "-01"
	if e["traceparent"] != want || e["tracestate"] != nil || e["id"] != "1" || !jsonEqual(e["data"], map[string]any{"x": []any{1.0, 2.0}}) {
		t.Errorf("injected event %s", out)
	}
	if got, ok := cloudevents.InjectStructured(context.Background(), in); ok || string(got) != string(in) {
		t.Errorf("without a span: %s, %v", got, ok)
	}
	if got, ok := cloudevents.InjectStructured(ctx, []byte(`[1]`)); ok || string(got) != "[1]" {
		t.Errorf("not an object: %s, %v", got, ok)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
