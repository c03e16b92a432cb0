package cloudevents_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/krules-go/krules"
	krotel "github.com/krules-go/krules/middleware/otel"
	"github.com/krules-go/krules/transport/cloudevents"
)

// traceHop sends one event from a producer App through a Dispatcher to a
// Receiver of worker and returns the ce-traceparent header on the wire.
func traceHop(t *testing.T, worker *krules.App, opts ...krules.EmitOption) (header string) {
	t.Helper()
	rcv := cloudevents.NewReceiver(worker, cloudevents.ReceiverConfig{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header = r.Header.Get("ce-traceparent")
		rcv.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	es := &errSink{}
	producer := krules.New(krules.WithErrorHandler(es.handle))
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "t", Encoding: cloudevents.Binary})
	producer.Use(d.Middleware())
	d.Route(producer, "order.approved")
	// A stale trace context stored on the subject is never sent.
	s := producer.Subject("o-1")
	if _, _, err := s.SetExt(t.Context(), "traceparent", "00-11111111111111111111111111111111-1111111111111111-01", krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, krules.WithMeta(cloudevents.MetaDispatchURL, srv.URL))
	if err := producer.Emit(t.Context(), "order.approved", s, nil, opts...); err != nil {
		t.Fatal(err)
	}
	if errs := es.all(); len(errs) != 0 {
		t.Fatalf("dispatch errors %v", errs)
	}
	return header
}

func TestTraceContextTravels(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const ts = "congo=t61rcWkgMzE"
	var gotTP, gotTS any
	var hasTS bool
	worker := krules.New()
	worker.On("order.approved").Do(func(_ context.Context, ev *krules.Event) error {
		gotTP, _ = ev.Meta(cloudevents.MetaTraceParent)
		gotTS, hasTS = ev.Meta(cloudevents.MetaTraceState)
		return nil
	})
	if h := traceHop(t, worker, krules.WithMeta(cloudevents.MetaTraceParent, tp), krules.WithMeta(cloudevents.MetaTraceState, ts)); h != tp {
		t.Errorf("ce-traceparent = %q, want %q", h, tp)
	}
	if gotTP != tp || gotTS != ts {
		t.Errorf("receiver metadata traceparent %v tracestate %v, want %q %q", gotTP, gotTS, tp, ts)
	}

	// No trace context: none is made up (nor the subject's stale one sent).
	gotTP, gotTS = nil, nil
	if h := traceHop(t, worker); h != "" {
		t.Errorf("ce-traceparent = %q without a trace", h)
	}
	if gotTP != nil || hasTS {
		t.Errorf("receiver metadata traceparent %v tracestate %v without a trace", gotTP, gotTS)
	}
}

// The otel middleware of the receiving App continues the producer's trace.
func TestTraceContinuesWithOtel(t *testing.T) {
	tracer := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tracer.Shutdown(context.Background()) })
	var workerTP string
	worker := krules.New()
	worker.Use(krotel.Middleware(krotel.Config{TracerProvider: tracer}))
	worker.On("order.approved").Do(func(ctx context.Context, _ *krules.Event) error {
		workerTP = krotel.TraceParent(ctx)
		return nil
	})
	root, span := tracer.Tracer("t").Start(context.Background(), "root")
	defer span.End()
	traceHop(t, worker, krules.WithMeta(cloudevents.MetaTraceParent, krotel.TraceParent(root)))
	want := span.SpanContext().TraceID().String()
	if len(workerTP) != 55 || workerTP[3:35] != want {
		t.Errorf("worker span %q not in the producer's trace %s", workerTP, want)
	}
}
