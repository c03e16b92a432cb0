package prom_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
	"github.com/krules-go/krules/middleware/prom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func quietApp() *krules.App {
	return krules.New(
		krules.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
}

func TestOutcome(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, prom.OutcomeSuccess},
		{errors.New("x"), prom.OutcomeError},
		{&krules.PanicError{Value: "p"}, prom.OutcomePanic},
		{fmt.Errorf("x: %w", middleware.ErrCircuitOpen), prom.OutcomeCircuitOpen},
		{middleware.ErrRateLimited, prom.OutcomeRejected},
		{middleware.ErrConcurrencyLimit, prom.OutcomeRejected},
		{fmt.Errorf("%w: %w", middleware.ErrTimeout, context.DeadlineExceeded), prom.OutcomeTimeout},
		{context.DeadlineExceeded, prom.OutcomeTimeout},
	}
	for _, c := range cases {
		if got := prom.Outcome(c.err); got != c.want {
			t.Errorf("Outcome(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// histogram returns the sample count and sum of the duration histogram
// series with the given labels, read back from the registry.
func histogram(t *testing.T, reg *prometheus.Registry, name, eventType, handler string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "event_type") == eventType && label(m, "handler") == handler {
				return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
		}
	}
	t.Fatalf("no %s{event_type=%q,handler=%q}", name, eventType, handler)
	return 0, 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		m, err := prom.New(prom.Config{Registerer: reg, Buckets: []float64{1, 5}})
		if err != nil {
			t.Fatal(err)
		}
		app := quietApp()
		breaker := middleware.NewBreaker(middleware.BreakerConfig{Key: middleware.ByHandler, FailureThreshold: 1, CoolDown: time.Hour})
		app.Use(m.Middleware(), breaker.Middleware(), middleware.Timeout(10*time.Second), middleware.Recover())
		app.On("order.created").Named("ok").Do(func(context.Context, *krules.Event) error {
			time.Sleep(2 * time.Second)
			return nil
		})
		app.On("order.created").Named("flaky").Do(func(_ context.Context, ev *krules.Event) error {
			return errors.New("db down") // opens its circuit: later calls are circuit_open
		})
		app.On("order.paid").Named("slow").Do(func(ctx context.Context, _ *krules.Event) error {
			<-ctx.Done()
			return ctx.Err()
		})
		app.On("order.paid").Named("broken").Do(func(context.Context, *krules.Event) error { panic("bug") })
		ctx := t.Context()
		for range 3 {
			if err := app.Emit(ctx, "order.created", app.Subject("o-1"), nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := app.Emit(ctx, "order.paid", app.Subject("o-1"), nil); err != nil {
			t.Fatal(err)
		}

		want := `
# HELP krules_events_total Handler invocations by event type, handler and outcome.
# TYPE krules_events_total counter
krules_events_total{event_type="order.created",handler="flaky",outcome="circuit_open"} 2
krules_events_total{event_type="order.created",handler="flaky",outcome="error"} 1
krules_events_total{event_type="order.created",handler="ok",outcome="success"} 3
krules_events_total{event_type="order.paid",handler="broken",outcome="panic"} 1
krules_events_total{event_type="order.paid",handler="slow",outcome="timeout"} 1
`
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), prom.EventsTotalName); err != nil {
			t.Fatal(err)
		}
		if got := testutil.ToFloat64(mustCounter(t, reg, "order.created", "ok", "success")); got != 3 {
			t.Fatalf("ok/success = %v", got)
		}
		for _, c := range []struct {
			event, handler string
			count          uint64
			sum            float64
		}{
			{"order.created", "ok", 3, 6}, // fake clock: exactly 2s each
			{"order.created", "flaky", 3, 0},
			{"order.paid", "slow", 1, 10},
			{"order.paid", "broken", 1, 0},
		} {
			n, sum := histogram(t, reg, prom.HandlerDurationName, c.event, c.handler)
			if n != c.count || sum != c.sum {
				t.Errorf("%s/%s duration: count %d sum %v, want %d and %v", c.event, c.handler, n, sum, c.count, c.sum)
			}
		}
	})
}

// mustCounter finds a counter series by gathering (so the test reads what
// the registry exports, not the middleware's own handle).
func mustCounter(t *testing.T, reg *prometheus.Registry, event, handler, outcome string) prometheus.Collector {
	t.Helper()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: prom.EventsTotalName, Help: "Handler invocations by event type, handler and outcome."},
		[]string{"event_type", "handler", "outcome"})
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("register: %v", err)
	}
	return are.ExistingCollector.(*prometheus.CounterVec).WithLabelValues(event, handler, outcome)
}

func TestPanicUnwinding(t *testing.T) {
	// Without Recover inside, a panic is counted and keeps unwinding to the App.
	reg := prometheus.NewRegistry()
	m, err := prom.New(prom.Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var got error
	app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) { got = err }))
	app.Use(m.Middleware())
	app.On("x").Named("p").Do(func(context.Context, *krules.Event) error { panic("boom") })
	app.Emit(t.Context(), "x", app.Subject("s"), nil)
	var pe *krules.PanicError
	if !errors.As(got, &pe) {
		t.Fatalf("App got %v, want the panic", got)
	}
	if v := testutil.ToFloat64(mustCounter(t, reg, "x", "p", "panic")); v != 1 {
		t.Fatalf("panic count %v", v)
	}
}

func TestRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1, err := prom.New(prom.Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := prom.New(prom.Config{Registerer: reg}) // a second App: reuses the collectors
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*prom.Metrics{m1, m2} {
		app := quietApp()
		app.Use(m.Middleware())
		app.On("x").Named("h").Do(func(context.Context, *krules.Event) error { return nil })
		app.Emit(t.Context(), "x", app.Subject("s"), nil)
	}
	if v := testutil.ToFloat64(mustCounter(t, reg, "x", "h", "success")); v != 2 {
		t.Fatalf("shared counter = %v, want 2", v)
	}
	// A conflicting metric with the same name is an error.
	reg2 := prometheus.NewRegistry()
	reg2.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: prom.EventsTotalName, Help: "other"}))
	if _, err := prom.New(prom.Config{Registerer: reg2}); err == nil {
		t.Fatal("conflicting registration accepted")
	}
	// Namespace and const labels.
	reg3 := prometheus.NewRegistry()
	m3, err := prom.New(prom.Config{Registerer: reg3, Namespace: "shop", ConstLabels: prometheus.Labels{"service": "orders"},
		EventType: func(ev *krules.Event) string { return strings.SplitN(ev.Type, ".", 2)[0] }})
	if err != nil {
		t.Fatal(err)
	}
	app := quietApp()
	app.Use(m3.Middleware())
	app.On("*").Named("h").Do(func(context.Context, *krules.Event) error { return nil })
	app.Emit(t.Context(), "order.created", app.Subject("s"), nil)
	app.Emit(t.Context(), "order.paid", app.Subject("s"), nil)
	want := `
# HELP shop_krules_events_total Handler invocations by event type, handler and outcome.
# TYPE shop_krules_events_total counter
shop_krules_events_total{event_type="order",handler="h",outcome="success",service="orders"} 2
`
	if err := testutil.GatherAndCompare(reg3, strings.NewReader(want), "shop_krules_events_total"); err != nil {
		t.Fatal(err)
	}
}

func Example() {
	reg := prometheus.NewRegistry()
	m, err := prom.New(prom.Config{Registerer: reg})
	if err != nil {
		panic(err)
	}
	app := krules.New(krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	app.Use(m.Middleware())
	app.On("user.*").Named("welcome").Do(func(_ context.Context, ev *krules.Event) error {
		if ev.Type == "user.banned" {
			return errors.New("no")
		}
		return nil
	})
	for _, typ := range []string{"user.created", "user.created", "user.banned"} {
		app.Emit(context.Background(), typ, app.Subject("u-1"), nil)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			if mf.GetName() == prom.EventsTotalName {
				fmt.Println(mf.GetName(), label(mt, "event_type"), label(mt, "outcome"), mt.GetCounter().GetValue())
			} else {
				fmt.Println(mf.GetName(), label(mt, "event_type"), "count", mt.GetHistogram().GetSampleCount())
			}
		}
	}
	// Output:
	// krules_events_total user.banned error 1
	// krules_events_total user.created success 2
	// krules_handler_duration_seconds user.banned count 1
	// krules_handler_duration_seconds user.created count 2
}
