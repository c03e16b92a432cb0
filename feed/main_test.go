package feed_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
)

// TestMain runs the writer child of the crash test when
// KRULES_FEED_CHILD is set (the test binary re-executed by TestCrash).
func TestMain(m *testing.M) {
	if os.Getenv("KRULES_FEED_CHILD") != "" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// crashChild writes until it is killed: Inc with NoCache and cached Sets
// committed by Store, on KRULES_FEED_SUBJECTS subjects.
func crashChild() int {
	ctx := context.Background()
	b, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv("KRULES_FEED_PREFIX"), ChangeFeed: true})
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
