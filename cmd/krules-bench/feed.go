package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

// Change-feed rows: the cost of writing the change record in the same
// atomic operation as the data. redis/set-feed and postgres/set-feed are a
// NoCache Set of a changing value on a backend in feed mode (the record is
// written, no relay runs); the baseline is the same Set with the feed off
// (the redis/set and postgres/set rows), on the same server in the same
// run. Keys and tables of this run are removed afterwards.
func init() {
	register(Group{
		Name:    "feed-redis",
		Enabled: func() bool { return os.Getenv("KRULES_REDIS_URL") != "" },
		Setup:   feedRedisSetup,
	})
	register(Group{
		Name:    "feed-postgres",
		Enabled: func() bool { return os.Getenv("KRULES_POSTGRES_URL") != "" },
		Setup:   feedPostgresSetup,
	})
}

// setOp is a NoCache Set of a changing value, so every call is an
// effective change (and, in feed mode, writes a record).
func setOp(app *krules.App) func(i int) error {
	ctx := context.Background()
	s := app.Subject("k-set", krules.NoCache())
	return func(i int) error {
		_, _, err := s.Set(ctx, "n", i)
		return err
	}
}

func feedRedisSetup() ([]Row, func(), error) {
	ctx := context.Background()
	url := os.Getenv("KRULES_REDIS_URL")
	prefix := fmt.Sprintf("krules-bench-feed-%d:", os.Getpid())
	plain, err := redis.Open(ctx, url, redis.Config{Prefix: prefix + "plain:"})
	if err != nil {
		return nil, nil, err
	}
	fed, err := redis.Open(ctx, url, redis.Config{Prefix: prefix + "feed:", ChangeFeed: true})
	if err != nil {
		plain.Close()
		return nil, nil, err
	}
	done := func() {
		c := plain.Client()
		for _, p := range []string{prefix + "plain:", prefix + "feed:"} {
			c.Del(ctx, "s:"+p+"k-set", "f:"+p+"changes", "f:"+p+"seq", "f:"+p+"lease")
		}
		plain.Close()
		fed.Close()
	}
	rows := []Row{{
		Name:     "redis/set-feed",
		Op:       setOp(krules.New(krules.WithStorage(fed))),
		Baseline: "redis/set (feed off)",
		BaseOp:   setOp(krules.New(krules.WithStorage(plain))),
	}}
	return rows, done, nil
}

func feedPostgresSetup() ([]Row, func(), error) {
	ctx := context.Background()
	url := os.Getenv("KRULES_POSTGRES_URL")
	table := fmt.Sprintf("krules_bench_feed_%d", os.Getpid())
	plain, err := postgres.Open(ctx, url, postgres.Config{Table: table + "_plain"})
	if err != nil {
		return nil, nil, err
	}
	fed, err := postgres.Open(ctx, url, postgres.Config{Table: table, ChangeFeed: true})
	if err != nil {
		plain.Close()
		return nil, nil, err
	}
	done := func() {
		for _, t := range []string{table + "_plain", table, table + "_feed", table + "_feed_seq"} {
			if _, err := plain.Pool().Exec(ctx, `DROP TABLE IF EXISTS "`+t+`"`); err != nil {
				fmt.Fprintf(os.Stderr, "krules-bench: postgres cleanup: %v\n", err)
			}
		}
		plain.Close()
		fed.Close()
	}
	rows := []Row{{
		Name:     "postgres/set-feed",
		Op:       setOp(krules.New(krules.WithStorage(fed))),
		Baseline: "postgres/set (feed off)",
		BaseOp:   setOp(krules.New(krules.WithStorage(plain))),
	}}
	return rows, done, nil
}

// End-to-end rows: feed/redis-e2e and feed/postgres-e2e, a change
// committed by a NoCache Set in the writer App until a worker-side handler
// ran, through the store's feed, one relay and three workers (all in this
// process, each its own App and connection). ns_per_op is the wall time per
// change of b.N changes made by 8 writer goroutines over 200 subjects
// (1e9/ns_per_op changes/s); the p50 and p99 latency from the Set's start
// to the handler are printed to stderr. Needs KRULES_NATS_URL.
func init() {
	register(Group{
		Name: "feed-e2e",
		Enabled: func() bool {
			return os.Getenv("KRULES_NATS_URL") != "" && (os.Getenv("KRULES_REDIS_URL") != "" || os.Getenv("KRULES_POSTGRES_URL") != "")
		},
		Setup: feedE2ESetup,
	})
}

func feedE2ESetup() ([]Row, func(), error) {
	ctx := context.Background()
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"), natsgo.RetryOnFailedConnect(false))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	var cleanups []func()
	done := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		nc.Close()
	}
	var rows []Row
	add := func(name string, b feedStore, drop func()) {
		stream := fmt.Sprintf("krules_bench_feed_%s_%d", name, os.Getpid())
		cleanups = append(cleanups, drop)
		if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream}); err != nil {
			fmt.Fprintf(os.Stderr, "krules-bench: feed/%s-e2e: %v\n", name, err)
			return
		}
		cleanups = append(cleanups, func() {
			_ = js.DeleteStream(ctx, stream)
			_ = js.DeleteStream(ctx, knats.DeadLetterStream(stream))
		})
		rctx, cancel := context.WithCancel(ctx)
		cleanups = append(cleanups, cancel)
		rows = append(rows, Row{Name: "feed/" + name + "-e2e", Run: e2eRun(rctx, js, stream, b, name)})
	}
	if url := os.Getenv("KRULES_REDIS_URL"); url != "" {
		prefix := fmt.Sprintf("krules-bench-e2e-%d:", os.Getpid())
		b, err := redis.Open(ctx, url, redis.Config{Prefix: prefix, ChangeFeed: true})
		if err == nil {
			add("redis", b, func() {
				c := b.Client()
				it := c.Scan(ctx, 0, "s:"+prefix+"*", 1000).Iterator()
				for it.Next(ctx) {
					c.Del(ctx, it.Val())
				}
				c.Del(ctx, "f:"+prefix+"changes", "f:"+prefix+"seq", "f:"+prefix+"lease")
				b.Close()
			})
		}
	}
	if url := os.Getenv("KRULES_POSTGRES_URL"); url != "" {
		table := fmt.Sprintf("krules_bench_e2e_%d", os.Getpid())
		b, err := postgres.Open(ctx, url, postgres.Config{Table: table, ChangeFeed: true})
		if err == nil {
			add("postgres", b, func() {
				for _, t := range []string{table, table + "_feed", table + "_feed_seq"} {
					_, _ = b.Pool().Exec(ctx, `DROP TABLE IF EXISTS "`+t+`"`)
				}
				b.Close()
			})
		}
	}
	return rows, done, nil
}

type feedStore interface {
	storage.Backend
	storage.FeedStore
}

// e2eRun starts the relay and three workers once, then measures b.N
// changes per run.
func e2eRun(ctx context.Context, js jetstream.JetStream, stream string, store feedStore, name string) func(b *testing.B) {
	var once sync.Once
	var mu sync.Mutex
	var lat []time.Duration
	var handled atomic.Int64
	setup := func() error {
		for i := 0; i < 3; i++ {
			app := krules.New()
			app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
				if t, ok := ev.Extra["t"].(int64); ok {
					d := time.Since(time.Unix(0, t))
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
				handled.Add(1)
				return nil
			})
			w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: stream})
			if err != nil {
				return err
			}
			go func() { _ = w.Run(ctx) }()
		}
		r, err := feed.NewRelay(ctx, store, js, feed.RelayConfig{Stream: stream})
		if err != nil {
			return err
		}
		go func() { _ = r.Run(ctx) }()
		return nil
	}
	writer := krules.New(krules.WithStorage(store))
	var counter atomic.Int64
	return func(b *testing.B) {
		var err error
		once.Do(func() { err = setup() })
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		lat = lat[:0]
		mu.Unlock()
		start := handled.Load()
		b.ResetTimer()
		n := int64(b.N)
		var wg sync.WaitGroup
		var next atomic.Int64
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				for next.Add(1) <= n {
					i := counter.Add(1)
					s := writer.Subject(fmt.Sprintf("e2e-%03d", i%200), krules.NoCache())
					if _, _, err := s.Set(ctx, "v", i, krules.WithExtra(krules.Extra{"t": time.Now().UnixNano()})); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		for deadline := time.Now().Add(time.Minute); handled.Load()-start < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d changes handled", handled.Load()-start, n)
			}
		}
		b.StopTimer()
		mu.Lock()
		l := append([]time.Duration(nil), lat...)
		mu.Unlock()
		if len(l) > 100 {
			slices.Sort(l)
			fmt.Fprintf(os.Stderr, "  feed/%s-e2e: %d changes, p50 %v, p99 %v\n", name, len(l), l[len(l)/2], l[len(l)*99/100])
		}
	}
}
