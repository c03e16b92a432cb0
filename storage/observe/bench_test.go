package observe_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/observe"
)

// BenchmarkGet compares one Get on the bare memory backend (the baseline)
// with the wrapper: no-op tracer without metrics, metrics only, and an SDK
// tracer (recording, not exporting) with metrics.
func BenchmarkGet(b *testing.B) {
	m, err := observe.NewMetrics(observe.MetricsConfig{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	sdk := sdktrace.NewTracerProvider()
	defer func() { _ = sdk.Shutdown(context.Background()) }()
	cases := []struct {
		name string
		wrap func(storage.Backend) storage.Backend
	}{
		{"raw", func(x storage.Backend) storage.Backend { return x }},
		{"noop", func(x storage.Backend) storage.Backend {
			return observe.Wrap(x, observe.Config{TracerProvider: noop.NewTracerProvider()})
		}},
		{"metrics", func(x storage.Backend) storage.Backend {
			return observe.Wrap(x, observe.Config{Metrics: m, NoTracing: true})
		}},
		{"metrics+sdk", func(x storage.Backend) storage.Backend {
			return observe.Wrap(x, observe.Config{Metrics: m, TracerProvider: sdk})
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			bk := c.wrap(memory.New())
			k := storage.Key{Kind: storage.Default, Name: "n"}
			if _, _, err := bk.Set(ctx, "s", k, storage.Mutation{Value: int64(1)}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bk.Get(ctx, "s", k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
