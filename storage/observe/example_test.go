package observe_test

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/observe"
)

// Observe the store of an App: every operation that reaches the backend is
// counted (and traced, with the global tracer provider).
func Example() {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg})
	if err != nil {
		panic(err)
	}
	b := observe.Wrap(memory.New(), observe.Config{Backend: "memory", Metrics: m})
	app := krules.New(krules.WithStorage(b))
	user := app.Subject("user-1")
	_, _, _ = user.Set(ctx, "name", "Ann", krules.NoCache())
	_, _ = app.Subject("user-2").Get(ctx, "name", krules.NoCache())

	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != observe.TotalName {
			continue
		}
		for _, s := range mf.GetMetric() {
			l := s.GetLabel() // sorted: backend, operation, outcome
			fmt.Printf("%s %s %s %v\n", l[0].GetValue(), l[1].GetValue(), l[2].GetValue(), s.GetCounter().GetValue())
		}
	}
	// Output:
	// memory get not_found 1
	// memory set ok 1
}
