// Command observability is a krules worker that shows what a user sees of a
// running App: Prometheus metrics on /metrics (handlers, storage, and with
// -nats the NATS worker and its lag), a health check on /healthz, and
// OpenTelemetry traces printed to stdout.
//
//	go run ./examples/observability                      # standalone, memory store
//	go run ./examples/observability -nats nats://127.0.0.1:4222 -stream obs-demo
//	curl -s localhost:8080/metrics | grep krules_
//	curl -s localhost:8080/healthz
//
// Standalone it generates orders itself (-rate per second) and emits them
// into the App; with -nats it publishes them to a stream and a worker of the
// same process consumes them (the stream is created if missing). Each order
// cascades: order.created sets the order's status, whose change event
// (subject-property-changed) is handled again, so one trace holds several
// handler spans and the storage spans under them. -duration stops it after
// a while (0: until Ctrl-C); -traces=false keeps stdout quiet. Spans are
// printed one JSON object per line (pipe through jq to read them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/krules-go/krules"
	krotel "github.com/krules-go/krules/middleware/otel"
	"github.com/krules-go/krules/middleware/prom"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/observe"
	knats "github.com/krules-go/krules/transport/nats"
)

// config is the command line.
type config struct {
	addr     string
	natsURL  string
	stream   string
	rate     float64
	duration time.Duration
	traces   bool
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "listen `address` of /metrics and /healthz")
	flag.StringVar(&cfg.natsURL, "nats", "", "NATS server `URL`; empty: standalone, events emitted in-process")
	flag.StringVar(&cfg.stream, "stream", "obs-demo", "JetStream stream `name` (with -nats)")
	flag.Float64Var(&cfg.rate, "rate", 2, "generate `n` orders per second")
	flag.DurationVar(&cfg.duration, "duration", 0, "stop after this `duration` (0: until interrupted)")
	flag.BoolVar(&cfg.traces, "traces", true, "print the spans to stdout")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error("listen", "error", err)
		os.Exit(1)
	}
	log.Info("serving", "metrics", "http://"+ln.Addr().String()+"/metrics", "healthz", "http://"+ln.Addr().String()+"/healthz")
	if err := run(ctx, cfg, ln, os.Stdout, log); err != nil {
		log.Error("observability example failed", "error", err)
		os.Exit(1)
	}
}

// run serves on ln and generates and handles orders until ctx is done.
// Spans go to traces (when cfg.traces).
func run(ctx context.Context, cfg config, ln net.Listener, traces io.Writer, log *slog.Logger) error {
	if cfg.rate <= 0 {
		return fmt.Errorf("-rate must be positive, got %v", cfg.rate)
	}
	// Tracing: every span printed as one line of JSON when it ends.
	tpOpts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "krules-observability"))),
	}
	if cfg.traces {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(traces))
		if err != nil {
			return err
		}
		tpOpts = append(tpOpts, sdktrace.WithSyncer(exp))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	defer func() { _ = tp.Shutdown(context.Background()) }()

	// Metrics: one registry for the handlers, the store and the worker.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	hm, err := prom.New(prom.Config{Registerer: reg})
	if err != nil {
		return err
	}
	sm, err := observe.NewMetrics(observe.MetricsConfig{Registerer: reg})
	if err != nil {
		return err
	}
	store := observe.Wrap(memory.New(), observe.Config{Backend: "memory", Metrics: sm, TracerProvider: tp})

	app := krules.New(krules.WithStorage(store), krules.WithLogger(log))
	app.Use(krotel.Middleware(krotel.Config{TracerProvider: tp}), hm.Middleware())
	app.On("order.created").Named("accept").Do(func(ctx context.Context, ev *krules.Event) error {
		_, _, err := ev.Subject.Set(ctx, "status", "accepted", krules.NoCache())
		return err
	})
	app.On(krules.PropertyChanged).Named("count-status").When(func(_ context.Context, ev *krules.Event) bool { return ev.PropertyName == "status" }).Do(func(ctx context.Context, ev *krules.Event) error {
		_, _, err := app.Subject("stats").Set(ctx, fmt.Sprint("status_", ev.NewValue), krules.Inc(1), krules.NoCache())
		return err
	})

	// The event source: in-process, or a NATS stream and a worker.
	healthy := func() error { return nil }
	emit := func(ctx context.Context, subject string, amount int) error {
		return app.Emit(ctx, "order.created", app.Subject(subject), krules.Payload{"amount": amount})
	}
	var workerDone chan error
	if cfg.natsURL != "" {
		nc, err := knats.Connect(cfg.natsURL)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		js = knats.TracePublishes(js, knats.TraceConfig{TracerProvider: tp})
		if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: cfg.stream, Partitions: 4}); err != nil {
			return err
		}
		w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: cfg.stream, Group: "obs"})
		if err != nil {
			return err
		}
		reg.MustRegister(knats.NewWorkerCollector(knats.CollectorConfig{}, w))
		pub, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: cfg.stream, Source: "examples/observability"})
		if err != nil {
			return err
		}
		workerDone = make(chan error, 1)
		go func() { workerDone <- w.Run(ctx) }()
		healthy = func() error {
			if !nc.IsConnected() {
				return fmt.Errorf("NATS %s", nc.Status())
			}
			return nil
		}
		emit = func(ctx context.Context, subject string, amount int) error {
			_, err := pub.Publish(ctx, "order.created", subject, krules.Payload{"amount": amount})
			return err
		}
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()

	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.rate))
	defer tick.Stop()
	for n := 1; ctx.Err() == nil; n++ {
		select {
		case <-ctx.Done():
		case <-tick.C:
			// Each order starts a trace of its own.
			if err := emit(context.WithoutCancel(ctx), fmt.Sprintf("order-%d", n), 10*n); err != nil {
				log.Warn("emit failed", "error", err)
			}
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	if serr := <-srvDone; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if workerDone != nil {
		err = errors.Join(err, <-workerDone)
	}
	return err
}
