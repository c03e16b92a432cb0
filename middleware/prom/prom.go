// Package prom exports krules handler metrics to Prometheus
// (github.com/prometheus/client_golang):
//
//	krules_events_total{event_type, handler, outcome}       counter
//	krules_handler_duration_seconds{event_type, handler}    histogram
//
// one observation per handler invocation, registered on the registry you
// pass. The outcome label tells apart:
//
//	success       the handler (and the middleware inside) returned nil
//	error         any other error
//	panic         a panic (*krules.PanicError, or a panic unwinding through)
//	timeout       middleware.ErrTimeout or context.DeadlineExceeded
//	circuit_open  middleware.ErrCircuitOpen: skipped by a breaker
//	rejected      middleware.ErrConcurrencyLimit or ErrRateLimited
//
// Usage:
//
//	reg := prometheus.NewRegistry()
//	m, err := prom.New(prom.Config{Registerer: reg})
//	if err != nil { ... }
//	app.Use(m.Middleware(), middleware.Resilient(middleware.ResilientConfig{}))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Put the metrics middleware outside Resilient to count the final outcome
// of each invocation (one per event and handler), inside it to count every
// attempt.
//
// Cardinality: event_type and handler become label values. Event types are
// usually a small fixed set; if yours embed identifiers, map them with
// Config.EventType.
package prom

import (
	"context"
	"errors"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/krules-go/krules/internal/promreg"
)

// Outcome label values.
const (
	OutcomeSuccess     = "success"
	OutcomeError       = "error"
	OutcomePanic       = "panic"
	OutcomeTimeout     = "timeout"
	OutcomeCircuitOpen = "circuit_open"
	OutcomeRejected    = "rejected"
)

// Metric names (with an empty Config.Namespace).
const (
	EventsTotalName     = "krules_events_total"
	HandlerDurationName = "krules_handler_duration_seconds"
)

// Config configures the metrics. The zero value registers on
// prometheus.DefaultRegisterer.
type Config struct {
	// Registerer receives the collectors. Default
	// prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer
	// Namespace, if set, prefixes the metric names: <namespace>_krules_...
	Namespace string
	// ConstLabels are added to both metrics (e.g. {"service": "orders"}).
	ConstLabels prometheus.Labels
	// Buckets of the duration histogram, in seconds. Default
	// prometheus.DefBuckets (5ms to 10s).
	Buckets []float64
	// EventType maps an event to its event_type label value. Default: the
	// event type as is.
	EventType func(ev *krules.Event) string
}

// Metrics holds the collectors. It is safe for concurrent use.
type Metrics struct {
	events    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	eventType func(*krules.Event) string
}

// New creates the collectors and registers them. When collectors with the
// same names and labels are already registered on the Registerer (a second
// App in the same process), New reuses them. Any other registration
// conflict is returned.
func New(cfg Config) (*Metrics, error) {
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	buckets := cfg.Buckets
	if len(buckets) == 0 {
		buckets = prometheus.DefBuckets
	}
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace:   cfg.Namespace,
		Name:        EventsTotalName,
		Help:        "Handler invocations by event type, handler and outcome.",
		ConstLabels: cfg.ConstLabels,
	}, []string{"event_type", "handler", "outcome"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace:   cfg.Namespace,
		Name:        HandlerDurationName,
		Help:        "Duration of handler invocations (middleware inside the metrics included), in seconds.",
		ConstLabels: cfg.ConstLabels,
		Buckets:     buckets,
	}, []string{"event_type", "handler"})
	m := &Metrics{eventType: cfg.EventType}
	if m.eventType == nil {
		m.eventType = func(ev *krules.Event) string { return ev.Type }
	}
	var err error
	if m.events, err = register(reg, events); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, duration); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	return promreg.Register("krules/middleware/prom", reg, c)
}

// Outcome classifies a handler's error into an outcome label value.
func Outcome(err error) string {
	var pe *krules.PanicError
	switch {
	case err == nil:
		return OutcomeSuccess
	case errors.As(err, &pe):
		return OutcomePanic
	case errors.Is(err, middleware.ErrCircuitOpen):
		return OutcomeCircuitOpen
	case errors.Is(err, middleware.ErrConcurrencyLimit), errors.Is(err, middleware.ErrRateLimited):
		return OutcomeRejected
	case errors.Is(err, middleware.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	}
	return OutcomeError
}

// Middleware returns the middleware that observes every handler invocation
// it wraps. It returns the handler's error unchanged and lets a panic keep
// unwinding (counted as "panic").
func (m *Metrics) Middleware() krules.Middleware {
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		et, handler := m.eventType(ev), krules.HandlerName(ctx)
		start := time.Now()
		done := false
		var err error
		defer func() {
			m.duration.WithLabelValues(et, handler).Observe(time.Since(start).Seconds())
			outcome := OutcomePanic
			if done {
				outcome = Outcome(err)
			}
			m.events.WithLabelValues(et, handler, outcome).Inc()
		}()
		err = next(ctx)
		done = true
		return err
	}
}
