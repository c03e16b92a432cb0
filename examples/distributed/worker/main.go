// Command worker is one member of the examples/distributed worker group: it
// consumes the "orders" stream from NATS JetStream and keeps per-customer
// totals in Redis. Start as many as you like; see ../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

func main() {
	name := flag.String("name", fmt.Sprintf("worker-%d", os.Getpid()), "name shown in the logs")
	stream := flag.String("stream", "orders", "JetStream stream")
	prefix := flag.String("prefix", "demo:", "Redis key prefix")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("worker", *name)
	if err := run(*stream, *prefix, log); err != nil {
		log.Error("worker failed", "error", err)
		os.Exit(1)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(stream, prefix string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	store, err := redis.Open(ctx, env("KRULES_REDIS_URL", "redis://127.0.0.1:6379/0"), redis.Config{Prefix: prefix})
	if err != nil {
		return err
	}
	defer store.Close()
	app := krules.New(krules.WithStorage(store), krules.WithLogger(log))

	// One handler per business event. Writes go to the subject's cache; the
	// worker commits them together with its idempotency record, so a
	// redelivered order is never counted twice.
	app.On("order.placed").Do(func(ctx context.Context, ev *krules.Event) error {
		if _, _, err := ev.Subject.Set(ctx, "orders", krules.Inc(1)); err != nil {
			return err
		}
		_, _, err := ev.Subject.Set(ctx, "total", krules.Inc(ev.Payload()["amount"]))
		return err
	})
	// Property changes are events too: a derived flag, in the same commit.
	app.On(krules.PropertyChanged).When(func(_ context.Context, ev *krules.Event) bool {
		return ev.PropertyName == "total"
	}).Do(func(ctx context.Context, ev *krules.Event) error {
		total, _ := ev.NewValue.(int64)
		_, _, err := ev.Subject.Set(ctx, "vip", total >= 1000)
		return err
	})

	nc, err := knats.Connect(env("KRULES_NATS_URL", "nats://127.0.0.1:4222"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream}); err != nil {
		return err
	}
	w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{
		Stream:          stream,
		Idempotent:      true,
		AckWait:         10 * time.Second,
		ShutdownTimeout: 10 * time.Second,
		Logger:          log,
	})
	if err != nil {
		return err
	}
	log.Info("consuming", "stream", stream, "partitions", w.Partitions())
	err = w.Run(ctx)
	log.Info("stopped", "stats", fmt.Sprintf("%+v", w.Stats()))
	return err
}
