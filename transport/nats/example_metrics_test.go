package nats_test

import (
	"context"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/krules-go/krules"
	knats "github.com/krules-go/krules/transport/nats"
)

// Export a worker's Stats and its group's lag, and trace every publish.
func ExampleNewWorkerCollector() {
	ctx := context.Background()
	nc, _ := knats.Connect("nats://127.0.0.1:4222")
	js, _ := jetstream.New(nc)
	js = knats.TracePublishes(js, knats.TraceConfig{}) // producer spans, global tracer provider
	app := krules.New()
	w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: "orders"})
	if err != nil {
		return
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(knats.NewWorkerCollector(knats.CollectorConfig{}, w))
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	go func() { _ = w.Run(ctx) }()
}
