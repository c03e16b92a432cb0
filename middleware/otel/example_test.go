package otel_test

import (
	"context"
	"fmt"

	"github.com/krules-go/krules"
	krotel "github.com/krules-go/krules/middleware/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func Example() {
	exp := tracetest.NewInMemoryExporter() // in production: an OTLP exporter
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())

	app := krules.New()
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	app.On("order.created").Named("validate").Do(func(ctx context.Context, ev *krules.Event) error {
		return ev.Emit(ctx, "order.validated", nil) // same trace, child span
	})
	app.On("order.validated").Named("notify").Do(func(ctx context.Context, ev *krules.Event) error {
		krotel.Inject(ctx, ev) // what a transport sends along
		_, ok := ev.Meta(krotel.MetaTraceParent)
		fmt.Println("traceparent in metadata:", ok)
		return nil
	})
	app.Emit(context.Background(), "order.created", app.Subject("order-1"), nil)

	spans := exp.GetSpans() // ended spans, innermost first
	for _, s := range spans {
		fmt.Println(s.Name, "same trace:", s.SpanContext.TraceID() == spans[0].SpanContext.TraceID())
	}
	fmt.Println("nested:", spans[0].Parent.SpanID() == spans[1].SpanContext.SpanID())
	// Output:
	// traceparent in metadata: true
	// krules.handler order.validated same trace: true
	// krules.handler order.created same trace: true
	// nested: true
}
