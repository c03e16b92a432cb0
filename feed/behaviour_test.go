package feed_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

// A record that cannot be decoded is dead-lettered with its reason and
// does not block the records after it.
func TestUndecodableRecordDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js := connect(t)
	stream := newStream(t, js)
	b := openRedis(t, "")
	s := newSeen(1)
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(s.handler)
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})
	// A foreign entry first, then a real change.
	if err := b.Client().XAdd(ctx, &goredis.XAddArgs{Stream: b.FeedKey(), Values: []any{"_id", "x1", "_s", "subj", "_q", "1", "_t", "c", "_p", "pv", "_n", "{not json"}}).Err(); err != nil {
		t.Fatal(err)
	}
	writer := krules.New(krules.WithStorage(b))
	if _, _, err := writer.Subject("ok", krules.NoCache()).Set(ctx, "v", 1); err != nil {
		t.Fatal(err)
	}
	r, _ := startRelay(t, b, js, feed.RelayConfig{Stream: stream})
	s.wait(t, 30*time.Second)
	c, err := js.OrderedConsumer(ctx, knats.DeadLetterStream(stream), jetstreamOrdered())
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Next(fetchWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Headers().Get(knats.HeaderDeadReason); got != feed.ReasonMalformedRecord {
		t.Errorf("dead-letter reason %q", got)
	}
	if m.Headers().Get(knats.HeaderDeadError) == "" {
		t.Error("no dead-letter error header")
	}
	if st := r.Stats(); st.DeadLettered != 1 {
		t.Errorf("stats %+v", st)
	}
}

// A handler loop spanning processes (each worker's handler writes the
// subject again, through the feed) ends in ErrCascadeDepth at the writer:
// the depth travels with the records.
func TestCascadeAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js := connect(t)
	stream := newStream(t, js)
	prefix := testenv.Unique("krloop") + ":"
	b := openRedis(t, prefix)
	const limit = 5
	var mu sync.Mutex
	var depthErr error
	var depths []int
	for i := 0; i < 2; i++ { // two "processes": Apps of their own on the shared store
		wb := openRedis(t, prefix)
		wapp := krules.New(krules.WithStorage(wb), krules.WithCascadeLimit(limit), krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote}))
		wapp.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
			mu.Lock()
			depths = append(depths, krules.CascadeDepth(ctx))
			mu.Unlock()
			_, _, err := ev.Subject.Set(ctx, "x", krules.Inc(1), krules.NoCache())
			if errors.Is(err, krules.ErrCascadeDepth) {
				mu.Lock()
				depthErr = err
				mu.Unlock()
				return nil // the loop is over
			}
			return err
		})
		startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})
	}
	startRelay(t, b, js, feed.RelayConfig{Stream: stream})
	writer := krules.New(krules.WithStorage(b))
	if _, _, err := writer.Subject("ping", krules.NoCache()).Set(ctx, "x", 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		done := depthErr != nil
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loop did not end: depths %v", depths)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // nothing more may come
	mu.Lock()
	defer mu.Unlock()
	want := []int{1, 2, 3, 4, 5}
	if len(depths) != len(want) {
		t.Fatalf("handler depths %v, want %v", depths, want)
	}
	for i := range want {
		if depths[i] != want[i] {
			t.Fatalf("handler depths %v, want %v", depths, want)
		}
	}
	v, err := writer.Subject("ping", krules.NoCache()).Get(ctx, "x")
	if err != nil || v != int64(limit-1) {
		t.Fatalf("x = %v (%v), want %d", v, err, limit-1)
	}
}
