// Command feedchild is the child process of the feed package's crash,
// relay-kill and multi-process tests. The tests build it once without the
// race detector and run it many times (a child is killed hundreds of times;
// a race-instrumented child would start and write several times slower).
// The role is KRULES_FEED_CHILD; the rest of the environment says which
// store and stream to use. It prints "ready" when set up.
package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

func main() {
	var code int
	switch os.Getenv("KRULES_FEED_CHILD") {
	case "crash":
		code = crash()
	case "relay":
		code = relay()
	case "writer":
		code = writer()
	case "worker":
		code = worker()
	case "idemworker":
		code = idemWorker()
	default:
		fmt.Fprintln(os.Stderr, "feedchild: unknown role", os.Getenv("KRULES_FEED_CHILD"))
		code = 2
	}
	os.Exit(code)
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "feedchild:", err)
	return 2
}

// backend opens the store the environment names: a bolt file
// (KRULES_FEED_BOLT), a PostgreSQL table (KRULES_FEED_TABLE) or a Redis
// prefix (KRULES_FEED_PREFIX), in feed mode.
func backend(ctx context.Context) (storage.Backend, error) {
	if path := os.Getenv("KRULES_FEED_BOLT"); path != "" {
		// The previous (killed) child's file lock is gone when it is reaped.
		return bolt.Open(path, bolt.Config{ChangeFeed: true, Timeout: 5 * time.Second})
	}
	if table := os.Getenv("KRULES_FEED_TABLE"); table != "" {
		return postgres.Open(ctx, os.Getenv("KRULES_POSTGRES_URL"), postgres.Config{Table: table, ChangeFeed: true})
	}
	return redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv("KRULES_FEED_PREFIX"), ChangeFeed: true})
}

func jetStream() (jetstream.JetStream, error) {
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"))
	if err != nil {
		return nil, err
	}
	return jetstream.New(nc)
}

func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

// crash writes until it is killed: Inc with NoCache and cached Sets
// committed by Store, on KRULES_FEED_SUBJECTS subjects "c-NN". On a bolt
// store (one process only) it also runs the relay to KRULES_FEED_STREAM.
func crash() int {
	ctx := context.Background()
	b, err := backend(ctx)
	if err != nil {
		return fail(err)
	}
	if bb, ok := b.(*bolt.Backend); ok {
		js, err := jetStream()
		if err != nil {
			return fail(err)
		}
		r, err := feed.NewRelay(ctx, bb, js, feed.RelayConfig{Stream: os.Getenv("KRULES_FEED_STREAM"), Batch: 64})
		if err != nil {
			return fail(err)
		}
		go func() { _ = r.Run(ctx) }()
	}
	app := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote}))
	n := envInt("KRULES_FEED_SUBJECTS")
	fmt.Println("ready")
	for i := rand.IntN(n); ; i = (i + 1) % n {
		s := app.Subject(fmt.Sprintf("c-%02d", i))
		if _, _, err := s.Set(ctx, "n", krules.Inc(1), krules.NoCache()); err != nil {
			return fail(err)
		}
		if _, _, err := s.Set(ctx, "c", rand.Int64()); err != nil {
			return fail(err)
		}
		if err := s.Store(ctx); err != nil {
			return fail(err)
		}
		if i%4 == 3 {
			time.Sleep(time.Millisecond) // a steady flow the test's consumers keep up with
		}
	}
}

// relay runs a relay on the Redis store until it is killed, with the lease
// KRULES_FEED_TTL (milliseconds).
func relay() int {
	ctx := context.Background()
	b, err := backend(ctx)
	if err != nil {
		return fail(err)
	}
	js, err := jetStream()
	if err != nil {
		return fail(err)
	}
	ttl := time.Duration(envInt("KRULES_FEED_TTL")) * time.Millisecond
	r, err := feed.NewRelay(ctx, b.(storage.FeedStore), js, feed.RelayConfig{Stream: os.Getenv("KRULES_FEED_STREAM"), LeaseTTL: ttl, Batch: 64})
	if err != nil {
		return fail(err)
	}
	fmt.Println("ready")
	_ = r.Run(ctx)
	return 0
}

// writer makes KRULES_FEED_ROUNDS changes on each of KRULES_FEED_SUBJECTS
// subjects "m-NNN" (NoCache Inc and cached Set + Store alternately) and
// exits.
func writer() int {
	ctx := context.Background()
	b, err := backend(ctx)
	if err != nil {
		return fail(err)
	}
	app := krules.New(krules.WithStorage(b))
	n, rounds := envInt("KRULES_FEED_SUBJECTS"), envInt("KRULES_FEED_ROUNDS")
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
				return fail(err)
			}
		}
	}
	return 0
}

// worker runs a worker whose handler checks, in Redis, that each subject's
// versions come one after the other (the hash KRULES_FEED_CHECK: subject
// -> last version; field "!bad" counts violations, "!n" handled changes).
func worker() int {
	ctx := context.Background()
	c, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{})
	if err != nil {
		return fail(err)
	}
	rc := c.Client()
	key := os.Getenv("KRULES_FEED_CHECK")
	js, err := jetStream()
	if err != nil {
		return fail(err)
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
		return fail(err)
	}
	fmt.Println("ready")
	_ = w.Run(ctx)
	return 0
}

// idemWorker runs a worker of the group "idem" with the idempotency option (unless
// KRULES_FEED_IDEM=0) on a Redis store of its own (prefix
// KRULES_FEED_WPREFIX, no feed, AckWait KRULES_FEED_ACKWAIT ms). Its
// handler counts, in cache mode through the event's subject, the changes
// applied ("count"), remembers the last version ("last") and counts
// versions that do not follow the last one ("bad"): exactly-once effects
// leave count equal to the subject's committed versions and bad 0. Its
// writes are muted: they must not trigger the handler again.
func idemWorker() int {
	ctx := context.Background()
	store, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv("KRULES_FEED_WPREFIX")})
	if err != nil {
		return fail(err)
	}
	js, err := jetStream()
	if err != nil {
		return fail(err)
	}
	app := krules.New(krules.WithStorage(store))
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		v, _ := ev.Meta(knats.MetaChangeSeq)
		q, _ := v.(int64)
		last, err := ev.Subject.Get(ctx, "last")
		if err != nil && !errors.Is(err, krules.ErrNotFound) {
			return err
		}
		l, _ := last.(int64)
		if q != l+1 {
			if _, _, err := ev.Subject.Set(ctx, "bad", krules.Inc(1), krules.Muted()); err != nil {
				return err
			}
		}
		if _, _, err := ev.Subject.Set(ctx, "last", q, krules.Muted()); err != nil {
			return err
		}
		_, _, err = ev.Subject.Set(ctx, "count", krules.Inc(1), krules.Muted())
		return err
	})
	w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{
		Stream:     os.Getenv("KRULES_FEED_STREAM"),
		Group:      "idem",
		Idempotent: os.Getenv("KRULES_FEED_IDEM") != "0",
		AckWait:    time.Duration(envInt("KRULES_FEED_ACKWAIT")) * time.Millisecond,
		MaxDeliver: 1000,
	})
	if err != nil {
		return fail(err)
	}
	fmt.Println("ready")
	_ = w.Run(ctx)
	return 0
}
