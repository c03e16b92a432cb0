package feed_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	knats "github.com/krules-go/krules/transport/nats"
)

// outage makes the relay's side of a real feed store fail while down is
// set, as a store that cannot be reached would.
type outage struct {
	storage.FeedStore
	down atomic.Bool
}

var errDown = errors.New("store unreachable")

func (o *outage) ReadChanges(ctx context.Context, n int, wait time.Duration) ([]storage.PendingChange, error) {
	if o.down.Load() {
		return nil, errDown
	}
	return o.FeedStore.ReadChanges(ctx, n, wait)
}

func (o *outage) FeedLease(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	if o.down.Load() {
		return false, errDown
	}
	return o.FeedStore.FeedLease(ctx, owner, ttl)
}

// A store outage pauses the relay; it resumes by itself and relays what
// was committed meanwhile.
func TestRelayResumesAfterOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js := connect(t)
	stream := newStream(t, js)
	b := openRedis(t, "")
	s := newSeen(20)
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(s.handler)
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})
	o := &outage{FeedStore: b}
	r, _ := startRelay(t, o, js, feed.RelayConfig{Stream: stream, LeaseTTL: 300 * time.Millisecond})
	writer := krules.New(krules.WithStorage(b))
	sub := writer.Subject("o", krules.NoCache())
	for i := 1; i <= 10; i++ {
		if _, _, err := sub.Set(ctx, "v", i); err != nil {
			t.Fatal(err)
		}
	}
	o.down.Store(true)
	for i := 11; i <= 20; i++ {
		if _, _, err := sub.Set(ctx, "v", i); err != nil {
			t.Fatal(err)
		}
	}
	for end := time.Now().Add(10 * time.Second); r.Stats().Errors == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the relay saw no error during the outage")
		}
	}
	o.down.Store(false)
	s.wait(t, 30*time.Second)
	s.checkOrder(t, 20)
}
