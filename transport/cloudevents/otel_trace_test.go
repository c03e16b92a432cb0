package cloudevents_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/krules-go/krules"
	krotel "github.com/krules-go/krules/middleware/otel"
	ce "github.com/krules-go/krules/transport/cloudevents"
)

// With the otel middleware on both sides and nothing else, one trace spans
// the producer and the receiving App: the middleware puts the handler span
// in the event metadata, the Dispatcher sends it as ce-traceparent, and the
// Receiver hands it to the worker's middleware.
func TestOneTraceAcrossHTTP(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	var header, workerTrace string
	worker := krules.New()
	worker.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	worker.On("order.approved").Do(func(ctx context.Context, ev *krules.Event) error {
		workerTrace = krotel.TraceParent(ctx)
		return nil
	})
	rcv := ce.NewReceiver(worker, ce.ReceiverConfig{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header = r.Header.Get("ce-traceparent")
		rcv.ServeHTTP(w, r)
	}))
	defer srv.Close()

	producer := krules.New()
	d := ce.NewDispatcher(ce.DispatcherConfig{Source: "t", Encoding: ce.Binary})
	producer.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}), d.Middleware())
	d.Route(producer, "order.approved")
	root, span := tp.Tracer("t").Start(context.Background(), "root")
	if err := producer.Emit(root, "order.approved", producer.Subject("o-1"), nil, krules.WithMeta(ce.MetaDispatchURL, srv.URL)); err != nil {
		t.Fatal(err)
	}
	span.End()
	want := span.SpanContext().TraceID().String()
	if len(header) < 35 || header[3:35] != want {
		t.Fatalf("ce-traceparent on the wire = %q, want trace %s", header, want)
	}
	if len(workerTrace) < 35 || workerTrace[3:35] != want {
		t.Fatalf("worker span traceparent = %q, want trace %s", workerTrace, want)
	}
}
