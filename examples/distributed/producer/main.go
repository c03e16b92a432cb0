// Command producer publishes order events for the examples/distributed
// workers and waits until the workers have applied all of them; see
// ../README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

func main() {
	customers := flag.Int("customers", 50, "number of customers (subjects)")
	orders := flag.Int("orders", 20, "orders per customer")
	stream := flag.String("stream", "orders", "JetStream stream")
	prefix := flag.String("prefix", "demo:", "Redis key prefix (as the workers')")
	wait := flag.Duration("wait", 2*time.Minute, "how long to wait for the workers")
	flag.Parse()
	if err := run(*customers, *orders, *stream, *prefix, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		os.Exit(1)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(customers, orders int, stream, prefix string, wait time.Duration) error {
	ctx := context.Background()
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
	pub, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: stream, Source: "examples/distributed/producer"})
	if err != nil {
		return err
	}
	store, err := redis.Open(ctx, env("KRULES_REDIS_URL", "redis://127.0.0.1:6379/0"), redis.Config{Prefix: prefix})
	if err != nil {
		return err
	}
	defer store.Close()
	app := krules.New(krules.WithStorage(store))

	// Start from the current totals, so the example can be run again.
	base := make([]int, customers)
	for c := range customers {
		base[c], err = krules.GetAs[int](ctx, app.Subject(customer(c)), "orders", krules.Default(0))
		if err != nil {
			return err
		}
	}

	start := time.Now()
	for o := range orders {
		for c := range customers {
			e, err := cloudevents.NewEvent(ctx, "order.placed", customer(c), krules.Payload{"amount": 10 * (o + 1), "n": o + 1}, cloudevents.EventOptions{Source: "examples/distributed/producer"})
			if err != nil {
				return err
			}
			if _, err := pub.PublishEventAsync(ctx, stream, e); err != nil {
				return err
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return fmt.Errorf("publish not acknowledged within a minute")
	}
	total := customers * orders
	fmt.Printf("published %d order.placed events for %d customers in %s\n", total, customers, time.Since(start).Round(time.Millisecond))

	deadline := time.Now().Add(wait)
	for {
		done := 0
		for c := range customers {
			n, err := krules.GetAs[int](ctx, app.Subject(customer(c), krules.NoCache()), "orders", krules.Default(0))
			if err != nil {
				return err
			}
			done += min(n-base[c], orders)
		}
		if done == total {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d events applied after %s: are the workers running?", done, total, wait)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("all %d events applied by the workers in %s\n", total, time.Since(start).Round(time.Millisecond))
	for _, c := range []int{0, customers - 1} {
		d, err := app.Subject(customer(c)).Dict(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("%s: orders=%v total=%v vip=%v\n", customer(c), d["orders"], d["total"], d["vip"])
	}
	return nil
}

func customer(c int) string { return fmt.Sprintf("customer-%03d", c) }
