// Package observe makes a storage backend observable: Wrap returns a
// storage.Backend that gives every call of the wrapped one an
// OpenTelemetry span and Prometheus metrics, and changes nothing else (same
// results, same errors, same atomicity).
//
//	reg := prometheus.NewRegistry()
//	m, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg})
//	if err != nil { ... }
//	b := observe.Wrap(redisBackend, observe.Config{Backend: "redis", Metrics: m, TracerProvider: tp})
//	app := krules.New(krules.WithStorage(b))
//
// # Metrics
//
//	krules_storage_operation_duration_seconds{backend, operation, outcome}  histogram
//	krules_storage_operations_total{backend, operation, outcome}            counter
//
// backend is Config.Backend; operation is one of load, set, store, get,
// delete, flush, ext_props, list; outcome is ok, not_found (a Get or Delete
// of a missing property: storage.ErrNotFound) or error (any other error,
// cancelled contexts and invalid names included). For list the duration
// covers the whole iteration, until the caller stops or the sequence ends.
//
// # Spans
//
// One span per call, of kind Client, named "krules.storage <operation>"
// (for example "krules.storage get"), a child of the span in the call's
// ctx, with the attributes
//
//	db.operation.name        the operation (as the metric label)
//	krules.storage.backend   Config.Backend
//	krules.subject           the subject name (list: absent)
//	krules.property          the property name (get, set, delete)
//	krules.property.kind     "default" or "extended" (get, set, delete)
//	krules.storage.prefix    the List prefix (list)
//	krules.storage.outcome   ok, not_found or error
//
// An error other than storage.ErrNotFound is recorded on the span (status
// Error, an exception event); not_found leaves the status Unset, as a
// missing property is an answer, not a failure.
//
// Cost, measured with BenchmarkGet on the memory backend (go test -bench
// -count 10, benchstat medians, on a heavily loaded 2-core machine: ±30 to
// 80 %): a bare Get 0.22 µs, 0 allocations; with metrics only 1.1 µs, 0
// allocations; with the no-op tracer 1.1 µs, 2 allocations (112 B); with
// metrics and an SDK tracer that records the span 5.8 µs, 9 allocations
// (1.8 KiB). Against a network store (100 µs and more per call) either is
// small.
package observe

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync/atomic"
	"time"

	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/krules-go/krules/storage"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/krules-go/krules/internal/promreg"
)

// ScopeName is the instrumentation scope (tracer name) of the spans.
const ScopeName = "github.com/krules-go/krules/storage/observe"

// Operation label values.
const (
	OpLoad     = "load"
	OpSet      = "set"
	OpStore    = "store"
	OpGet      = "get"
	OpDelete   = "delete"
	OpFlush    = "flush"
	OpExtProps = "ext_props"
	OpList     = "list"
)

// Outcome label values.
const (
	OutcomeOK       = "ok"
	OutcomeNotFound = "not_found"
	OutcomeError    = "error"
)

// Metric names (with an empty MetricsConfig.Namespace).
const (
	DurationName = "krules_storage_operation_duration_seconds"
	TotalName    = "krules_storage_operations_total"
)

// Span attribute keys.
const (
	AttrOperation = attribute.Key("db.operation.name")
	AttrBackend   = attribute.Key("krules.storage.backend")
	AttrSubject   = attribute.Key("krules.subject")
	AttrProperty  = attribute.Key("krules.property")
	AttrKind      = attribute.Key("krules.property.kind")
	AttrPrefix    = attribute.Key("krules.storage.prefix")
	AttrOutcome   = attribute.Key("krules.storage.outcome")
)

// DefaultBackendName is the backend label when Config.Backend is empty.
const DefaultBackendName = "storage"

// MetricsConfig configures NewMetrics. The zero value registers on
// prometheus.DefaultRegisterer.
type MetricsConfig struct {
	// Registerer receives the collectors. Default
	// prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer
	// Namespace, if set, prefixes the metric names: <namespace>_krules_...
	Namespace string
	// ConstLabels are added to both metrics (e.g. {"service": "orders"}).
	ConstLabels prometheus.Labels
	// Buckets of the duration histogram, in seconds. Default
	// DefaultBuckets.
	Buckets []float64
}

// DefaultBuckets are the default histogram buckets, in seconds: 50 µs to
// 2.5 s, finer than prometheus.DefBuckets at the low end, where in-memory
// and local-network stores answer.
var DefaultBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

// Metrics holds the storage collectors; one Metrics serves any number of
// wrapped backends (told apart by their backend label). Safe for
// concurrent use.
type Metrics struct {
	duration *prometheus.HistogramVec
	total    *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them. When collectors
// with the same names and labels are already registered on the Registerer
// (a second call in the same process), it reuses them. Any other
// registration conflict is returned.
func NewMetrics(cfg MetricsConfig) (*Metrics, error) {
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	buckets := cfg.Buckets
	if len(buckets) == 0 {
		buckets = DefaultBuckets
	}
	labels := []string{"backend", "operation", "outcome"}
	d := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace:   cfg.Namespace,
		Name:        DurationName,
		Help:        "Duration of storage backend operations, in seconds.",
		ConstLabels: cfg.ConstLabels,
		Buckets:     buckets,
	}, labels)
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace:   cfg.Namespace,
		Name:        TotalName,
		Help:        "Storage backend operations by backend, operation and outcome.",
		ConstLabels: cfg.ConstLabels,
	}, labels)
	m := &Metrics{}
	var err error
	if m.duration, err = register(reg, d); err != nil {
		return nil, err
	}
	if m.total, err = register(reg, c); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	return promreg.Register("krules/storage/observe", reg, c)
}

// Config configures Wrap. The zero value traces with the global tracer
// provider and records no metrics.
type Config struct {
	// Backend is the backend label value and span attribute ("redis",
	// "postgres", "memory", ...). Default DefaultBackendName.
	Backend string
	// Metrics records the Prometheus metrics; nil records none.
	Metrics *Metrics
	// TracerProvider creates the tracer. Default gotel.GetTracerProvider()
	// (go.opentelemetry.io/otel), read when Wrap is called.
	TracerProvider trace.TracerProvider
	// NoTracing turns the spans off (metrics only). Default false.
	NoTracing bool
}

// Wrap returns b observed as cfg says. The result implements
// storage.BlindOps (forwarded when b implements it, else done with b's Set),
// storage.Lister when b does, Close when b has a Close method (Close() error or Close()),
// and Unwrap, which returns b. It is safe for concurrent use when b is.
func Wrap(b storage.Backend, cfg Config) storage.Backend {
	o := &observed{inner: b, name: cfg.Backend}
	if o.name == "" {
		o.name = DefaultBackendName
	}
	if !cfg.NoTracing {
		tp := cfg.TracerProvider
		if tp == nil {
			tp = gotel.GetTracerProvider()
		}
		o.tracer = tp.Tracer(ScopeName)
	}
	// Everything that does not depend on the call is built once: span
	// names and start options here, the metric series of an operation and
	// outcome on its first use (so that only outcomes that happened are
	// exported).
	for i, op := range opNames {
		o.spanName[i] = "krules.storage " + op
		o.startOpts[i] = []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(AttrOperation.String(op), AttrBackend.String(o.name)),
		}
	}
	o.metrics = cfg.Metrics
	if l, ok := b.(storage.Lister); ok {
		return &observedLister{observed: o, lister: l}
	}
	return o
}

// Operation indexes, in the order of opNames.
const (
	iLoad = iota
	iSet
	iStore
	iGet
	iDelete
	iFlush
	iExtProps
	iList
	numOps
)

var opNames = [numOps]string{OpLoad, OpSet, OpStore, OpGet, OpDelete, OpFlush, OpExtProps, OpList}

var outcomes = [3]string{OutcomeOK, OutcomeNotFound, OutcomeError}

type observed struct {
	inner     storage.Backend
	name      string
	tracer    trace.Tracer // nil: no spans
	spanName  [numOps]string
	startOpts [numOps][]trace.SpanStartOption
	metrics   *Metrics
	series    [numOps][3]atomic.Pointer[series]
}

// series are the metric children of one operation and outcome.
type series struct {
	dur   prometheus.Observer
	total prometheus.Counter
}

// seriesOf returns (creating on first use) the series of op and outcome
// oi. Two goroutines racing on the first use get the same children.
func (o *observed) seriesOf(op, oi int) *series {
	if s := o.series[op][oi].Load(); s != nil {
		return s
	}
	s := &series{
		dur:   o.metrics.duration.WithLabelValues(o.name, opNames[op], outcomes[oi]),
		total: o.metrics.total.WithLabelValues(o.name, opNames[op], outcomes[oi]),
	}
	o.series[op][oi].Store(s)
	return s
}

type observedLister struct {
	*observed
	lister storage.Lister
}

var (
	_ storage.Backend  = (*observed)(nil)
	_ storage.Lister   = (*observedLister)(nil)
	_ storage.BlindOps = (*observed)(nil)
)

// call is one observed operation.
type call struct {
	o     *observed
	op    int
	start time.Time
	span  trace.Span
}

// begin starts the span of an operation: the operation and backend are
// given at start (samplers see them), the subject and property only when
// the span records.
func (o *observed) begin(ctx context.Context, op int, subject string, k *storage.Key) (context.Context, call) {
	c := call{o: o, op: op, start: time.Now()}
	if o.tracer != nil {
		ctx, c.span = o.tracer.Start(ctx, o.spanName[op], o.startOpts[op]...)
		if c.span.IsRecording() {
			if subject != "" {
				c.span.SetAttributes(AttrSubject.String(subject))
			}
			if k != nil {
				c.span.SetAttributes(AttrProperty.String(k.Name), AttrKind.String(k.Kind.String()))
			}
		}
	}
	return ctx, c
}

// finish is deferred by every operation: it ends the call with *err, or,
// when the wrapped backend panics, with the panic as an error (outcome
// error) before the panic keeps unwinding.
func (c call) finish(err *error) {
	if r := recover(); r != nil {
		c.end(fmt.Errorf("panic: %v", r))
		panic(r)
	}
	c.end(*err)
}

func (c call) end(err error) {
	oi := outcomeIndex(err)
	outcome := outcomes[oi]
	if c.o.metrics != nil {
		s := c.o.seriesOf(c.op, oi)
		s.dur.Observe(time.Since(c.start).Seconds())
		s.total.Inc()
	}
	if c.span != nil {
		c.span.SetAttributes(AttrOutcome.String(outcome))
		if outcome == OutcomeError {
			c.span.RecordError(err)
			c.span.SetStatus(codes.Error, err.Error())
		}
		c.span.End()
	}
}

// Outcome classifies a backend error into an outcome label value: ok for
// nil, not_found for storage.ErrNotFound, error for anything else.
func Outcome(err error) string { return outcomes[outcomeIndex(err)] }

func outcomeIndex(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, storage.ErrNotFound):
		return 1
	}
	return 2
}

func (o *observed) Load(ctx context.Context, subject string) (snap storage.Snapshot, err error) {
	ctx, c := o.begin(ctx, iLoad, subject, nil)
	defer c.finish(&err)
	return o.inner.Load(ctx, subject)
}

func (o *observed) Store(ctx context.Context, subject string, b storage.Batch) (err error) {
	ctx, c := o.begin(ctx, iStore, subject, nil)
	defer c.finish(&err)
	return o.inner.Store(ctx, subject, b)
}

func (o *observed) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (nv, old any, err error) {
	ctx, c := o.begin(ctx, iSet, subject, &k)
	defer c.finish(&err)
	return o.inner.Set(ctx, subject, k, m)
}

// SetBlind implements storage.BlindOps, observed as a set: the wrapped
// backend's SetBlind when it implements storage.BlindOps, else its Set,
// whose old value is dropped (the same result, see storage.BlindOps).
func (o *observed) SetBlind(ctx context.Context, subject string, k storage.Key, op *storage.Op) (nv any, err error) {
	ctx, c := o.begin(ctx, iSet, subject, &k)
	defer c.finish(&err)
	if bo, ok := o.inner.(storage.BlindOps); ok {
		return bo.SetBlind(ctx, subject, k, op)
	}
	nv, _, err = o.inner.Set(ctx, subject, k, storage.Mutation{Op: op})
	return nv, err
}

func (o *observed) Get(ctx context.Context, subject string, k storage.Key) (v any, err error) {
	ctx, c := o.begin(ctx, iGet, subject, &k)
	defer c.finish(&err)
	return o.inner.Get(ctx, subject, k)
}

func (o *observed) Delete(ctx context.Context, subject string, k storage.Key) (old any, err error) {
	ctx, c := o.begin(ctx, iDelete, subject, &k)
	defer c.finish(&err)
	return o.inner.Delete(ctx, subject, k)
}

func (o *observed) Flush(ctx context.Context, subject string) (err error) {
	ctx, c := o.begin(ctx, iFlush, subject, nil)
	defer c.finish(&err)
	return o.inner.Flush(ctx, subject)
}

func (o *observed) ExtProps(ctx context.Context, subject string) (ps []storage.Property, err error) {
	ctx, c := o.begin(ctx, iExtProps, subject, nil)
	defer c.finish(&err)
	return o.inner.ExtProps(ctx, subject)
}

// Capabilities returns the wrapped backend's capabilities (not observed).
func (o *observed) Capabilities() storage.Capabilities { return o.inner.Capabilities() }

// Unwrap returns the wrapped backend.
func (o *observed) Unwrap() storage.Backend { return o.inner }

// Close closes the wrapped backend when it has a Close method; else it
// does nothing.
func (o *observed) Close() error {
	switch c := o.inner.(type) {
	case interface{ Close() error }:
		return c.Close()
	case interface{ Close() }:
		c.Close()
	}
	return nil
}

// List observes one iteration of the wrapped backend's List: the span and
// the duration run from the first pull to the end of the iteration (the
// caller breaking out, or the sequence ending); an error yielded makes the
// outcome error.
func (o *observedLister) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		ctx, c := o.begin(ctx, iList, "", nil)
		if c.span != nil && c.span.IsRecording() {
			c.span.SetAttributes(AttrPrefix.String(prefix))
		}
		var err error
		defer func() { c.end(err) }() // a panic in the caller's loop is not the backend's
		for name, e := range o.lister.List(ctx, prefix) {
			if e != nil {
				err = e
			}
			if !yield(name, e) {
				return
			}
		}
	}
}
