// Command changefeed shows the transactional change feed (package feed):
// a writer process sets properties in Redis, a relay moves the committed
// changes to NATS JetStream, and worker processes react to them with
// ordinary krules handlers. Run each role in its own terminal:
//
//	go run ./examples/changefeed worker -name w1
//	go run ./examples/changefeed worker -name w2
//	go run ./examples/changefeed relay
//	go run ./examples/changefeed writer
//
// See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

const (
	stream = "changefeed_demo"
	prefix = "changefeed-demo:"
)

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: changefeed writer|relay|worker [-name NAME]")
		os.Exit(2)
	}
	role := os.Args[1]
	fs := flag.NewFlagSet(role, flag.ExitOnError)
	name := fs.String("name", fmt.Sprintf("%s-%d", role, os.Getpid()), "name shown in the output")
	sensors := fs.Int("sensors", 20, "writer: number of sensors")
	_ = fs.Parse(os.Args[2:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// Every process uses the store in feed mode: each committed change is
	// also written as a change record, in the same Lua script.
	store, err := redis.Open(ctx, env("KRULES_REDIS_URL", "redis://127.0.0.1:6379/0"), redis.Config{Prefix: prefix, ChangeFeed: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer store.Close()
	nc, err := knats.Connect(env("KRULES_NATS_URL", "nats://127.0.0.1:4222"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream})
	}
	if err == nil {
		switch role {
		case "writer":
			err = writer(ctx, store, *sensors)
		case "relay":
			err = relay(ctx, store, js, *name, log)
		case "worker":
			err = worker(ctx, store, js, *name, log)
		default:
			err = fmt.Errorf("unknown role %q (writer, relay or worker)", role)
		}
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// writer sets the temperature of each sensor five times. It registers no
// handler: the changes are handled by the workers, in other processes.
func writer(ctx context.Context, store *redis.Backend, sensors int) error {
	app := krules.New(krules.WithStorage(store))
	n := 0
	for round := 0; round < 5; round++ {
		for i := 0; i < sensors; i++ {
			s := app.Subject(fmt.Sprintf("sensor-%02d", i), krules.NoCache())
			temp := 18 + 4*round + i%3
			if _, _, err := s.Set(ctx, "temp", temp, krules.WithExtra(krules.Extra{"round": round})); err != nil {
				return err
			}
			n++
		}
	}
	fmt.Printf("writer: %d temperatures committed (each with its change record)\n", n)
	return nil
}

// relay moves the change records to the stream. Start two: one publishes,
// the other stands by and takes over within the lease time if it dies.
func relay(ctx context.Context, store *redis.Backend, js jetstream.JetStream, name string, log *slog.Logger) error {
	r, err := feed.NewRelay(ctx, store, js, feed.RelayConfig{Stream: stream, Owner: name, Logger: log})
	if err != nil {
		return err
	}
	fmt.Printf("relay %s: running (Ctrl-C to stop)\n", name)
	err = r.Run(ctx)
	fmt.Printf("relay %s: %+v\n", name, r.Stats())
	return err
}

// worker reacts to the changes made in any process. Its own writes (the
// alert flag) travel through the feed too, so FeedRemote keeps its
// handlers from also running in-process: each change is handled once, by
// the group.
func worker(ctx context.Context, store *redis.Backend, js jetstream.JetStream, name string, log *slog.Logger) error {
	app := krules.New(krules.WithStorage(store), krules.WithLogger(log),
		krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote}))
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		v, _ := ev.Meta(knats.MetaChangeSeq)
		fmt.Printf("%s: %s %s %v -> %v (version %v, extra %v)\n", name, ev.Subject.Name(), ev.PropertyName, ev.OldValue, ev.NewValue, v, ev.Extra)
		if ev.PropertyName == "temp" {
			t, _ := ev.Payload().Int(krules.KeyValue)
			_, _, err := ev.Subject.Set(ctx, "alert", t >= 30, krules.NoCache())
			return err
		}
		return nil
	})
	w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: stream, Group: "changefeed-demo"})
	if err != nil {
		return err
	}
	fmt.Printf("worker %s: running (Ctrl-C to stop)\n", name)
	return w.Run(ctx)
}
