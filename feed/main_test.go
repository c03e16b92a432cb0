package feed_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

// TestMain runs the writer child of the crash test when
// KRULES_FEED_CHILD is set (the test binary re-executed by TestCrash).
func TestMain(m *testing.M) {
	switch os.Getenv("KRULES_FEED_CHILD") {
	case "":
	case "relay":
		os.Exit(relayChild())
	case "writer":
		os.Exit(writerChild())
	case "worker":
		os.Exit(workerChild())
	default:
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// childBackend opens the backend the child's environment names.
func childBackend(ctx context.Context) (storage.Backend, error) {
	if table := os.Getenv("KRULES_FEED_TABLE"); table != "" {
		return postgres.Open(ctx, os.Getenv("KRULES_POSTGRES_URL"), postgres.Config{Table: table, ChangeFeed: true})
	}
	return redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv("KRULES_FEED_PREFIX"), ChangeFeed: true})
}

// writerChild makes KRULES_FEED_ROUNDS changes on each of
// KRULES_FEED_SUBJECTS subjects (NoCache Inc and cached Set + Store
// alternately) and exits.
func writerChild() int {
	ctx := context.Background()
	b, err := childBackend(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	app := krules.New(krules.WithStorage(b))
	var n, rounds int
	fmt.Sscan(os.Getenv("KRULES_FEED_SUBJECTS"), &n)
	fmt.Sscan(os.Getenv("KRULES_FEED_ROUNDS"), &rounds)
	for r := 0; r < rounds; r++ {
		for i := 0; i < n; i++ {
			s := app.Subject(fmt.Sprintf("m-%03d", i))
			if r%2 == 0 {
				_, _, err = s.Set(ctx, "n", krules.Inc(1), krules.NoCache())
			} else {
				_, _, _ = s.Set(ctx, "c", rand.Int64())
				err = s.Store(ctx)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		}
	}
	return 0
}

// workerChild runs a worker whose handler checks, in Redis, that each
// subject's versions come one after the other (the hash
// KRULES_FEED_CHECK: subject -> last version; field "!bad" counts
// violations, "!n" handled changes).
func workerChild() int {
	ctx := context.Background()
	c, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{})
	if err != nil {
		return 2
	}
	rc := c.Client()
	key := os.Getenv("KRULES_FEED_CHECK")
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"))
	if err != nil {
		return 2
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return 2
	}
	app := krules.New()
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		v, _ := ev.Meta(knats.MetaChangeSeq)
		q, _ := v.(int64)
		last, _ := rc.HGet(ctx, key, ev.Subject.Name()).Int64()
		if q != last+1 {
			rc.HIncrBy(ctx, key, "!bad", 1)
			fmt.Fprintf(os.Stderr, "subject %s: version %d after %d\n", ev.Subject.Name(), q, last)
		}
		rc.HSet(ctx, key, ev.Subject.Name(), q)
		rc.HIncrBy(ctx, key, "!n", 1)
		return nil
	})
	w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: os.Getenv("KRULES_FEED_STREAM")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("ready")
	_ = w.Run(ctx)
	return 0
}

// crashChild writes until it is killed: Inc with NoCache and cached Sets
// committed by Store, on KRULES_FEED_SUBJECTS subjects.
func crashChild() int {
	ctx := context.Background()
	b, err := childBackend(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	app := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote}))
	var n int
	fmt.Sscan(os.Getenv("KRULES_FEED_SUBJECTS"), &n)
	fmt.Println("ready")
	for i := rand.IntN(n); ; i = (i + 1) % n {
		s := app.Subject(fmt.Sprintf("c-%02d", i))
		if _, _, err := s.Set(ctx, "n", krules.Inc(1), krules.NoCache()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		if _, _, err := s.Set(ctx, "c", rand.Int64()); err != nil {
			return 2
		}
		if err := s.Store(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
}

// relayChild runs a relay until it is killed.
func relayChild() int {
	ctx := context.Background()
	b, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv("KRULES_FEED_PREFIX"), ChangeFeed: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return 2
	}
	r, err := feed.NewRelay(ctx, b, js, feed.RelayConfig{Stream: os.Getenv("KRULES_FEED_STREAM"), LeaseTTL: relayChildTTL, Batch: 64})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("ready")
	_ = r.Run(ctx)
	return 0
}

// relayChildTTL is the lease of the relays TestRelayKilled starts.
const relayChildTTL = 600 * time.Millisecond
