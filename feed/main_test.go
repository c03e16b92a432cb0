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
	default:
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// crashChild writes until it is killed: Inc with NoCache and cached Sets
// committed by Store, on KRULES_FEED_SUBJECTS subjects.
func crashChild() int {
	ctx := context.Background()
	var b storage.Backend
	var err error
	if table := os.Getenv("KRULES_FEED_TABLE"); table != "" {
		b, err = postgres.Open(ctx, os.Getenv("KRULES_POSTGRES_URL"), postgres.Config{Table: table, ChangeFeed: true})
	} else {
		b, err = redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv("KRULES_FEED_PREFIX"), ChangeFeed: true})
	}
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
