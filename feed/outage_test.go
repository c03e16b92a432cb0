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

// outageCursor is outage with the cursor of the store it wraps (outage
// alone hides storage.FeedCursor, so the relay takes its batch path).
type outageCursor struct {
	*outage
	fc    storage.FeedCursor
	calls atomic.Int64
}

func (o *outageCursor) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	o.calls.Add(1)
	if o.down.Load() {
		return nil, errDown
	}
	return o.fc.ReadChangesAfter(ctx, after, n, wait)
}

func (o *outageCursor) AckChanges(ctx context.Context, refs []string) error {
	if o.down.Load() {
		return errDown
	}
	return o.fc.AckChanges(ctx, refs)
}

// A store outage pauses the relay; it resumes by itself and relays what
// was committed meanwhile. On Redis, through both read paths: the batch
// path (outage hides the cursor) and the cursor pipeline.
func TestRelayResumesAfterOutage(t *testing.T) {
	t.Parallel()
	for _, cursor := range []bool{false, true} {
		t.Run(map[bool]string{false: "batch", true: "cursor"}[cursor], func(t *testing.T) {
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
			var store storage.FeedStore = o
			oc := &outageCursor{outage: o, fc: b}
			if cursor {
				store = oc
			}
			r, _ := startRelay(t, store, js, feed.RelayConfig{Stream: stream, LeaseTTL: 300 * time.Millisecond})
			sub := krules.New(krules.WithStorage(b)).Subject("o", krules.NoCache())
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
			if cursor && oc.calls.Load() == 0 {
				t.Fatal("the cursor path was not used")
			}
		})
	}
}
