package main

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
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

// setLoop is a NoCache Set of a changing value, so every call is an
// effective change (and, in feed mode, writes a record).
func setLoop(app *krules.App) func(b *testing.B) {
	return func(b *testing.B) {
		ctx := context.Background()
		s := app.Subject("k-set", krules.NoCache())
		for i := 0; b.Loop(); i++ {
			if _, _, err := s.Set(ctx, "n", i); err != nil {
				b.Fatal(err)
			}
		}
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
		Run:      setLoop(krules.New(krules.WithStorage(fed))),
		Baseline: "redis/set (feed off)",
		Base:     setLoop(krules.New(krules.WithStorage(plain))),
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
		Run:      setLoop(krules.New(krules.WithStorage(fed))),
		Baseline: "postgres/set (feed off)",
		Base:     setLoop(krules.New(krules.WithStorage(plain))),
	}}
	return rows, done, nil
}
