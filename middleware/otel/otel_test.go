package otel_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
	krotel "github.com/krules-go/krules/middleware/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func newTracing(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

func quietApp(errs *[]error) *krules.App {
	return krules.New(
		krules.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) {
			if errs != nil {
				*errs = append(*errs, err)
			}
		}))
}

func attrs(s tracetest.SpanStub) map[attribute.Key]string {
	m := map[attribute.Key]string{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value.String()
	}
	return m
}

func byName(t *testing.T, spans tracetest.SpanStubs, name string) tracetest.SpanStub {
	t.Helper()
	for _, s := range spans {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no span %q in %d spans", name, len(spans))
	return tracetest.SpanStub{}
}

func TestSpansAndCascade(t *testing.T) {
	tp, exp := newTracing(t)
	var errs []error
	app := quietApp(&errs)
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	app.On("order.created").Named("validate").Do(func(ctx context.Context, ev *krules.Event) error {
		return ev.Emit(ctx, "order.validated", nil) // nested: child span
	})
	app.On("order.validated").Named("charge").Do(func(ctx context.Context, ev *krules.Event) error {
		_, _, err := ev.Subject.Set(ctx, "status", "charged") // property event: grandchild
		if err != nil {
			return err
		}
		return errors.New("card declined")
	})
	app.On(krules.PropertyChanged).Named("audit").Do(func(context.Context, *krules.Event) error { return nil })

	root, rootSpan := tp.Tracer("test").Start(context.Background(), "request")
	if err := app.Emit(root, "order.created", app.Subject("order-1"), nil); err != nil {
		t.Fatal(err)
	}
	rootSpan.End()

	spans := exp.GetSpans()
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 4: %v", len(spans), spans)
	}
	validate := byName(t, spans, "krules.handler order.created")
	charge := byName(t, spans, "krules.handler order.validated")
	audit := byName(t, spans, "krules.handler "+krules.PropertyChanged)
	req := byName(t, spans, "request")
	for _, c := range []struct {
		child, parent tracetest.SpanStub
	}{{validate, req}, {charge, validate}, {audit, charge}} {
		if c.child.Parent.SpanID() != c.parent.SpanContext.SpanID() || c.child.SpanContext.TraceID() != req.SpanContext.TraceID() {
			t.Errorf("%s: parent %s, want %s (same trace)", c.child.Name, c.child.Parent.SpanID(), c.parent.SpanContext.SpanID())
		}
		if c.child.SpanKind != trace.SpanKindInternal {
			t.Errorf("%s: kind %v", c.child.Name, c.child.SpanKind)
		}
	}
	wantAttrs := map[attribute.Key]string{krotel.AttrEventType: "order.validated", krotel.AttrSubjectName: "order-1", krotel.AttrHandler: "charge"}
	for k, v := range wantAttrs {
		if attrs(charge)[k] != v {
			t.Errorf("charge span %s = %q, want %q", k, attrs(charge)[k], v)
		}
	}
	if charge.Status.Code != codes.Error || charge.Status.Description != "card declined" {
		t.Errorf("charge status %+v", charge.Status)
	}
	if len(charge.Events) != 1 || charge.Events[0].Name != "exception" {
		t.Errorf("charge events %+v, want one exception", charge.Events)
	}
	if validate.Status.Code != codes.Unset || audit.Status.Code != codes.Unset {
		t.Errorf("successful spans have status %v / %v, want Unset", validate.Status.Code, audit.Status.Code)
	}
	if len(errs) != 1 || errs[0].Error() != "card declined" {
		t.Errorf("handler error not passed on unchanged: %v", errs)
	}
}

func TestPanicRecorded(t *testing.T) {
	tp, exp := newTracing(t)
	var errs []error
	app := quietApp(&errs)
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	app.On("x").Named("p").Do(func(context.Context, *krules.Event) error { panic("boom") })
	app.Emit(t.Context(), "x", app.Subject("s"), nil)
	spans := exp.GetSpans()
	if len(spans) != 1 || spans[0].Status.Code != codes.Error || spans[0].Status.Description != "panic: boom" {
		t.Fatalf("spans %+v", spans)
	}
	var pe *krules.PanicError
	if len(errs) != 1 || !errors.As(errs[0], &pe) {
		t.Fatalf("panic did not keep unwinding: %v", errs)
	}
}

var traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`)

// TestAcrossApps: a producer App injects the trace into the event metadata,
// the metadata crosses a (simulated) transport as strings, and the worker
// App's spans join the producer's trace as consumer spans.
func TestAcrossApps(t *testing.T) {
	tp, exp := newTracing(t)
	var perrs []error
	producer, worker := quietApp(&perrs), quietApp(nil)
	producer.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	worker.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))

	wire := map[string]string{} // what a transport would put in headers / CE extensions
	producer.On("order.created").Named("egress").Do(func(ctx context.Context, ev *krules.Event) error {
		krotel.Inject(ctx, ev)
		for k, v := range ev.Metadata() {
			if !strings.HasPrefix(k, "_") { // internal keys never travel
				wire[k] = v.(string)
			}
		}
		if krotel.TraceParent(ctx) != wire[krotel.MetaTraceParent] {
			return fmt.Errorf("TraceParent %q != injected %q", krotel.TraceParent(ctx), wire[krotel.MetaTraceParent])
		}
		return nil
	})
	var workerCtxTrace trace.TraceID
	worker.On("order.created").Named("ship").Do(func(ctx context.Context, ev *krules.Event) error {
		workerCtxTrace = trace.SpanContextFromContext(ctx).TraceID()
		return nil
	})

	root, rootSpan := tp.Tracer("test").Start(context.Background(), "checkout")
	producer.Emit(root, "order.created", producer.Subject("order-1"), nil)
	rootSpan.End()
	if len(perrs) != 0 {
		t.Fatal(perrs)
	}
	if !traceparentRE.MatchString(wire[krotel.MetaTraceParent]) {
		t.Fatalf("traceparent %q", wire[krotel.MetaTraceParent])
	}

	// Worker side: a fresh ctx, the trace only in the metadata.
	var opts []krules.EmitOption
	for k, v := range wire {
		opts = append(opts, krules.WithMeta(k, v))
	}
	worker.Emit(context.Background(), "order.created", worker.Subject("order-1"), nil, opts...)

	spans := exp.GetSpans()
	checkout := byName(t, spans, "checkout")
	var egress, ship tracetest.SpanStub
	for _, s := range spans {
		switch attrs(s)[krotel.AttrHandler] {
		case "egress":
			egress = s
		case "ship":
			ship = s
		}
	}
	if ship.SpanContext.TraceID() != checkout.SpanContext.TraceID() || workerCtxTrace != checkout.SpanContext.TraceID() {
		t.Fatalf("worker span in trace %s, want the producer's %s", ship.SpanContext.TraceID(), checkout.SpanContext.TraceID())
	}
	if ship.Parent.SpanID() != egress.SpanContext.SpanID() || !ship.Parent.IsRemote() {
		t.Fatalf("worker span parent %s (remote %v), want the egress span %s", ship.Parent.SpanID(), ship.Parent.IsRemote(), egress.SpanContext.SpanID())
	}
	if ship.SpanKind != trace.SpanKindConsumer {
		t.Fatalf("worker span kind %v, want consumer", ship.SpanKind)
	}
}

func TestInjectExtract(t *testing.T) {
	tp, _ := newTracing(t)
	var herrs []error
	app := quietApp(&herrs)
	var injected, without map[string]any
	var extracted trace.SpanContext
	app.On("with").Do(func(ctx context.Context, ev *krules.Event) error {
		sctx, span := tp.Tracer("test").Start(ctx, "s")
		defer span.End()
		krotel.Inject(sctx, ev)
		injected = ev.Metadata()
		extracted = trace.SpanContextFromContext(krotel.Extract(context.Background(), ev))
		if extracted.SpanID() != span.SpanContext().SpanID() {
			return fmt.Errorf("extracted %s, want %s", extracted.SpanID(), span.SpanContext().SpanID())
		}
		return nil
	})
	app.On("without").Do(func(ctx context.Context, ev *krules.Event) error {
		krotel.Inject(ctx, ev) // no span: nothing written
		without = ev.Metadata()
		if krotel.TraceParent(ctx) != "" {
			return errors.New("TraceParent without a span")
		}
		if trace.SpanContextFromContext(krotel.Extract(ctx, ev)).IsValid() {
			return errors.New("extracted a span from nothing")
		}
		return nil
	})
	if err := app.Emit(t.Context(), "with", app.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
	app.Emit(t.Context(), "without", app.Subject("s"), nil, krules.WithMeta("topic", "t"))
	if !traceparentRE.MatchString(fmt.Sprint(injected[krotel.MetaTraceParent])) || !extracted.IsRemote() {
		t.Fatalf("injected %v, extracted %v", injected, extracted)
	}
	if len(without) != 1 || without["topic"] != "t" {
		t.Fatalf("metadata without span: %v", without)
	}
	if len(herrs) != 0 {
		t.Fatalf("handler errors: %v", herrs)
	}
	// The carrier ignores non-string values.
	var errs []error
	app3 := quietApp(&errs)
	app3.On("odd").Do(func(_ context.Context, ev *krules.Event) error {
		if (krotel.MetaCarrier{Event: ev}).Get(krotel.MetaTraceParent) != "" {
			return errors.New("non-string traceparent read")
		}
		return nil
	})
	app3.Emit(t.Context(), "odd", app3.Subject("s"), nil, krules.WithMeta(krotel.MetaTraceParent, 42))
	if len(errs) != 0 {
		t.Fatal(errs)
	}
}

// TestWithResilient: spans around Resilient see the final outcome; the
// dead-letter event's span nests under the failing handler's span.
func TestWithResilient(t *testing.T) {
	tp, exp := newTracing(t)
	app := quietApp(nil)
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp, Attributes: func(_ context.Context, ev *krules.Event) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int("payload.size", len(ev.Payload()))}
	}}), middleware.Resilient(middleware.ResilientConfig{Retry: middleware.RetryConfig{MaxAttempts: 1}}))
	app.On("job").Named("job").Do(func(context.Context, *krules.Event) error { return errors.New("nope") })
	app.On(middleware.DefaultDeadLetterEvent).Named("dlq").Do(func(context.Context, *krules.Event) error { return nil })
	app.Emit(t.Context(), "job", app.Subject("s"), krules.Payload{"a": 1})
	spans := exp.GetSpans()
	job := byName(t, spans, "krules.handler job")
	dlq := byName(t, spans, "krules.handler "+middleware.DefaultDeadLetterEvent)
	if dlq.Parent.SpanID() != job.SpanContext.SpanID() {
		t.Fatalf("dead-letter span parent %s, want the job span %s", dlq.Parent.SpanID(), job.SpanContext.SpanID())
	}
	if job.Status.Code != codes.Error || attrs(job)["payload.size"] != "1" {
		t.Fatalf("job span %+v", job)
	}
}
