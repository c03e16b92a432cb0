package feed_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	krotel "github.com/krules-go/krules/middleware/otel"
	knats "github.com/krules-go/krules/transport/nats"
)

// TestTraceAcrossTheFeed: with real OpenTelemetry SDK spans, a Set made in
// App A inside a span is one trace with the handler that reacts to it in
// App B, through the change record, the relay, JetStream and a worker: B's
// handler span (middleware/otel) is a consumer span whose parent is the
// span A's Set ran in, and the handler's ctx carries that trace.
func TestTraceAcrossTheFeed(t *testing.T) {
	t.Parallel()
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) { t.Parallel(); testTraceAcrossTheFeed(t, bk.open(t)) })
	}
}

func testTraceAcrossTheFeed(t *testing.T, b feedBackend) {
	ctx := context.Background()
	js := connect(t)
	stream := newStream(t, js)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	// App B: a worker with the tracing middleware.
	handled := make(chan trace.SpanContext, 1)
	appB := krules.New()
	appB.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}))
	appB.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		handled <- trace.SpanContextFromContext(ctx)
		return nil
	})
	startWorker(t, js, appB, knats.WorkerConfig{Stream: stream})
	startRelay(t, b, js, feed.RelayConfig{Stream: stream})

	// App A: the write, inside a span, with the trace context in the records.
	appA := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{
		Policy: krules.FeedRemote,
		Trace:  func(ctx context.Context) (string, string) { return krotel.TraceParent(ctx), "" },
	}))
	sctx, root := tp.Tracer("test").Start(ctx, "request")
	if _, _, err := appA.Subject("traced", krules.NoCache()).Set(sctx, "x", 1); err != nil {
		t.Fatal(err)
	}
	root.End()

	var inHandler trace.SpanContext
	select {
	case inHandler = <-handled:
	case <-time.After(30 * time.Second):
		t.Fatal("the change did not reach B's handler")
	}
	want := root.SpanContext()
	if inHandler.TraceID() != want.TraceID() {
		t.Fatalf("B's handler runs in trace %s, A's Set in %s", inHandler.TraceID(), want.TraceID())
	}
	var hs sdktrace.ReadOnlySpan
	for end := time.Now().Add(10 * time.Second); hs == nil; time.Sleep(5 * time.Millisecond) {
		for _, s := range rec.Ended() {
			if s.Name() == "krules.handler "+krules.PropertyChanged {
				hs = s
			}
		}
		if hs == nil && time.Now().After(end) {
			t.Fatalf("no handler span among %d ended spans", len(rec.Ended()))
		}
	}
	if hs.SpanContext().TraceID() != want.TraceID() || hs.Parent().SpanID() != want.SpanID() || !hs.Parent().IsRemote() {
		t.Errorf("handler span %s parent %s (remote %v), want a child of A's span %s", hs.SpanContext().SpanID(), hs.Parent().SpanID(), hs.Parent().IsRemote(), want.SpanID())
	}
	if hs.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("handler span kind %v, want consumer", hs.SpanKind())
	}
	if hs.SpanContext().SpanID() != inHandler.SpanID() {
		t.Errorf("handler ctx span %s, recorded handler span %s", inHandler.SpanID(), hs.SpanContext().SpanID())
	}
}
