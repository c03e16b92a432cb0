package observe_test

import (
	"context"
	"errors"
	"iter"
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
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/observe"
	"github.com/krules-go/krules/storage/storagetest"
)

// The wrapper changes nothing a backend guarantees: the conformance suite
// passes through it, with spans and metrics on.
func TestConformance(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	// Spans are recorded (sampled) but not exported: the concurrency
	// subtests make tens of thousands.
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return observe.Wrap(memory.New(), observe.Config{Backend: "memory", Metrics: m, TracerProvider: tp})
	})
	if n := testutil.CollectAndCount(reg, observe.TotalName); n == 0 {
		t.Fatal("no operation counted during the conformance suite")
	}
}

type fixture struct {
	reg *prometheus.Registry
	exp *tracetest.InMemoryExporter
	tp  *sdktrace.TracerProvider
	b   storage.Backend
	m   *observe.Metrics
}

func newFixture(t *testing.T, inner storage.Backend) *fixture {
	t.Helper()
	f := &fixture{reg: prometheus.NewRegistry(), exp: tracetest.NewInMemoryExporter()}
	var err error
	if f.m, err = observe.NewMetrics(observe.MetricsConfig{Registerer: f.reg}); err != nil {
		t.Fatal(err)
	}
	f.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(f.exp))
	t.Cleanup(func() { _ = f.tp.Shutdown(context.Background()) })
	f.b = observe.Wrap(inner, observe.Config{Backend: "mem", Metrics: f.m, TracerProvider: f.tp})
	return f
}

func (f *fixture) count(op, outcome string) float64 {
	return testutil.ToFloat64(f.m.Total().WithLabelValues("mem", op, outcome))
}

func attrs(s tracetest.SpanStub) map[attribute.Key]string {
	out := map[attribute.Key]string{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value.String()
	}
	return out
}

var pk = func(n string) storage.Key { return storage.Key{Kind: storage.Default, Name: n} }

func TestEveryOperationCountedByOutcome(t *testing.T) {
	f := newFixture(t, memory.New())
	ctx := t.Context()
	b := f.b
	if _, _, err := b.Set(ctx, "s", pk("a"), storage.Mutation{Value: int64(1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "s", pk("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "s", pk("missing")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get missing: %v, want ErrNotFound", err)
	}
	if _, err := b.Delete(ctx, "s", pk("missing")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Delete missing: %v, want ErrNotFound", err)
	}
	errUpdate := errors.New("refused")
	if _, _, err := b.Set(ctx, "s", pk("a"), storage.Mutation{Func: func(any, bool) (any, error) { return nil, errUpdate }}); !errors.Is(err, errUpdate) {
		t.Fatalf("Set with a failing update: %v", err)
	}
	if err := b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{{Key: pk("b"), Value: "x"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ExtProps(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Delete(ctx, "s", pk("a")); err != nil {
		t.Fatal(err)
	}
	for range b.(storage.Lister).List(ctx, "") {
	}
	if err := b.Flush(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Load(cancelled, "s"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Load with a cancelled ctx: %v", err)
	}

	want := []struct {
		op, outcome string
		n           float64
	}{
		{observe.OpSet, observe.OutcomeOK, 1},
		{observe.OpGet, observe.OutcomeOK, 1},
		{observe.OpGet, observe.OutcomeNotFound, 1},
		{observe.OpSet, observe.OutcomeError, 1},
		{observe.OpDelete, observe.OutcomeNotFound, 1},
		{observe.OpDelete, observe.OutcomeOK, 1},
		{observe.OpStore, observe.OutcomeOK, 1},
		{observe.OpLoad, observe.OutcomeOK, 1},
		{observe.OpLoad, observe.OutcomeError, 1},
		{observe.OpExtProps, observe.OutcomeOK, 1},
		{observe.OpList, observe.OutcomeOK, 1},
		{observe.OpFlush, observe.OutcomeOK, 1},
	}
	for _, w := range want {
		if got := f.count(w.op, w.outcome); got != w.n {
			t.Errorf("krules_storage_operations_total{operation=%q,outcome=%q} = %v, want %v", w.op, w.outcome, got, w.n)
		}
	}
	// One histogram series per (operation, outcome) seen, and the counter
	// and histogram agree.
	if got, want := testutil.CollectAndCount(f.reg, observe.DurationName), len(want); got != want {
		t.Errorf("%d duration series, want %d", got, want)
	}
	expected := `
# HELP krules_storage_operations_total Storage backend operations by backend, operation and outcome.
# TYPE krules_storage_operations_total counter
krules_storage_operations_total{backend="mem",operation="delete",outcome="not_found"} 1
krules_storage_operations_total{backend="mem",operation="delete",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="ext_props",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="flush",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="get",outcome="not_found"} 1
krules_storage_operations_total{backend="mem",operation="get",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="list",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="load",outcome="error"} 1
krules_storage_operations_total{backend="mem",operation="load",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="set",outcome="error"} 1
krules_storage_operations_total{backend="mem",operation="set",outcome="ok"} 1
krules_storage_operations_total{backend="mem",operation="store",outcome="ok"} 1
`
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(expected), observe.TotalName); err != nil {
		t.Error(err)
	}
}

func TestSpans(t *testing.T) {
	f := newFixture(t, memory.New())
	root, parent := f.tp.Tracer("test").Start(t.Context(), "root")
	if _, _, err := f.b.Set(root, "user-1", storage.Key{Kind: storage.Extended, Name: "tier"}, storage.Mutation{Value: "gold"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.Get(root, "user-1", pk("missing")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(root)
	cancel()
	if _, err := f.b.Load(cancelled, "user-1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Load with a cancelled ctx: %v", err)
	}
	parent.End()
	spans := f.exp.GetSpans()
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 4 (set, get, load, root): %v", len(spans), spans)
	}
	set, get, load := spans[0], spans[1], spans[2]
	if set.Name != "krules.storage set" || get.Name != "krules.storage get" || load.Name != "krules.storage load" {
		t.Fatalf("span names %q %q %q", set.Name, get.Name, load.Name)
	}
	for _, s := range spans[:3] {
		if s.SpanKind != trace.SpanKindClient {
			t.Errorf("%s: kind %v, want client", s.Name, s.SpanKind)
		}
		if s.Parent.SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("%s: parent %v, want the root span", s.Name, s.Parent.SpanID())
		}
	}
	wantSet := map[attribute.Key]string{
		observe.AttrOperation: "set", observe.AttrBackend: "mem", observe.AttrSubject: "user-1",
		observe.AttrProperty: "tier", observe.AttrKind: "extended", observe.AttrOutcome: "ok",
	}
	if got := attrs(set); !mapsEqual(got, wantSet) {
		t.Errorf("set attributes %v, want %v", got, wantSet)
	}
	if set.Status.Code != codes.Unset {
		t.Errorf("set status %v, want Unset", set.Status)
	}
	if got := attrs(get)[observe.AttrOutcome]; got != "not_found" {
		t.Errorf("get outcome %q, want not_found", got)
	}
	if get.Status.Code != codes.Unset || len(get.Events) != 0 {
		t.Errorf("not_found get: status %v, %d events; want Unset and none", get.Status, len(get.Events))
	}
	if load.Status.Code != codes.Error || len(load.Events) != 1 || load.Events[0].Name != "exception" {
		t.Errorf("failed load: status %v, events %v; want Error and one exception", load.Status, load.Events)
	}
	if got := attrs(load)[observe.AttrOutcome]; got != "error" {
		t.Errorf("load outcome %q, want error", got)
	}
}

func mapsEqual(a, b map[attribute.Key]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// noList hides memory's List.
type noList struct{ storage.Backend }

func TestListerOnlyWhenInnerLists(t *testing.T) {
	if _, ok := observe.Wrap(memory.New(), observe.Config{}).(storage.Lister); !ok {
		t.Error("wrapping a Lister: result is not a Lister")
	}
	if _, ok := observe.Wrap(noList{memory.New()}, observe.Config{}).(storage.Lister); ok {
		t.Error("wrapping a non-Lister: result is a Lister")
	}
}

// failingLister yields one name, then an error.
type failingLister struct{ storage.Backend }

var errList = errors.New("list broke")

func (failingLister) List(context.Context, string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if !yield("a", nil) {
			return
		}
		yield("", errList)
	}
}

func TestListErrorAndEarlyBreak(t *testing.T) {
	f := newFixture(t, failingLister{memory.New()})
	l := f.b.(storage.Lister)
	var gotErr error
	for _, err := range l.List(t.Context(), "") {
		if err != nil {
			gotErr = err
		}
	}
	if !errors.Is(gotErr, errList) {
		t.Fatalf("List error %v, want %v", gotErr, errList)
	}
	for range l.List(t.Context(), "") {
		break
	}
	if got := f.count(observe.OpList, observe.OutcomeError); got != 1 {
		t.Errorf("list error count %v, want 1", got)
	}
	if got := f.count(observe.OpList, observe.OutcomeOK); got != 1 {
		t.Errorf("list ok count (early break) %v, want 1", got)
	}
	spans := f.exp.GetSpans()
	if len(spans) != 2 || spans[0].Status.Code != codes.Error || spans[1].Status.Code != codes.Unset {
		t.Fatalf("list spans %v", spans)
	}
	if got := attrs(spans[0])[observe.AttrPrefix]; got != "" {
		t.Errorf("prefix attribute %q, want empty", got)
	}
}

func TestUnwrapCloseCapabilities(t *testing.T) {
	inner := memory.New()
	b := observe.Wrap(inner, observe.Config{NoTracing: true})
	if u := b.(interface{ Unwrap() storage.Backend }).Unwrap(); u != inner {
		t.Errorf("Unwrap = %v, want the inner backend", u)
	}
	if b.Capabilities() != inner.Capabilities() {
		t.Error("Capabilities differ from the inner backend's")
	}
	if err := b.(interface{ Close() error }).Close(); err != nil {
		t.Errorf("Close of a backend without Close: %v", err)
	}
	c := &closer{Backend: memory.New()}
	if err := observe.Wrap(c, observe.Config{}).(interface{ Close() error }).Close(); err != nil || !c.closed {
		t.Errorf("Close: err %v, inner closed %v", err, c.closed)
	}
}

type closer struct {
	storage.Backend
	closed bool
}

func (c *closer) Close() error { c.closed = true; return nil }

func TestNewMetricsReusesRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if m1.Total() != m2.Total() {
		t.Error("second NewMetrics on one registry made new collectors")
	}
	// A conflicting collector of the same name is an error.
	reg2 := prometheus.NewRegistry()
	reg2.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: observe.TotalName, Help: "other"}))
	if _, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg2}); err == nil {
		t.Error("NewMetrics over a conflicting collector: no error")
	}
}

// Through an App: a Subject's writes reach the store as counted operations.
func TestThroughApp(t *testing.T) {
	f := newFixture(t, memory.New())
	app := krules.New(krules.WithStorage(f.b))
	s := app.Subject("order-1")
	if _, _, err := s.Set(t.Context(), "n", krules.Inc(1), krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	if got := f.count(observe.OpSet, observe.OutcomeOK); got != 1 {
		t.Errorf("set count %v, want 1", got)
	}
}

// panicky panics in Get.
type panicky struct{ storage.Backend }

func (panicky) Get(context.Context, string, storage.Key) (any, error) { panic("boom") }

func TestPanicIsAnErrorAndKeepsUnwinding(t *testing.T) {
	f := newFixture(t, panicky{memory.New()})
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the backend's panic", r)
			}
		}()
		_, _ = f.b.Get(t.Context(), "s", pk("a"))
	}()
	if got := f.count(observe.OpGet, observe.OutcomeError); got != 1 {
		t.Errorf("get error count %v, want 1", got)
	}
	if spans := f.exp.GetSpans(); len(spans) != 1 || spans[0].Status.Code != codes.Error {
		t.Errorf("spans %v, want one with status Error", spans)
	}
}
