package feed_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	knats "github.com/krules-go/krules/transport/nats"
)

// futureOf is a PubAckFuture that fails when err gets a value and never
// succeeds.
type futureOf struct {
	jetstream.PubAckFuture
	err chan error
}

func (f *futureOf) Ok() <-chan *jetstream.PubAck { return nil }
func (f *futureOf) Err() <-chan error            { return f.err }

// TestCursorPublishFailureKeepsOrder: on the cursor path, a publish whose
// acknowledgement fails (nothing stored) and a refused publish are retried,
// and every subject's changes still reach JetStream in order, none lost.
func TestCursorPublishFailureKeepsOrder(t *testing.T) {
	t.Parallel()
	js := connect(t)
	stream := newStream(t, js)
	mem := memory.New(memory.WithChangeFeed())
	const subjects, per = 3, 10
	s := newSeen(subjects * per)
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(s.handler)
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})
	r, err := feed.NewRelay(context.Background(), mem, js, feed.RelayConfig{Stream: stream, LeaseTTL: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	tried := map[string]bool{}
	var fails atomic.Int64
	feed.ReplacePublish(r, func(pub feed.PublishFunc) feed.PublishFunc {
		return func(ctx context.Context, stream string, e *event.Event) (jetstream.PubAckFuture, error) {
			key := fmt.Sprint(e.Subject(), "/", e.Extensions()[knats.ExtChangeSeq])
			mu.Lock()
			first := !tried[key]
			tried[key] = true
			mu.Unlock()
			switch {
			case first && key == "s-0/2":
				fails.Add(1)
				f := &futureOf{err: make(chan error, 1)}
				f.err <- errors.New("injected: no ack")
				return f, nil
			case first && key == "s-1/5":
				fails.Add(1)
				return nil, errors.New("injected: refused")
			}
			return pub(ctx, stream, e)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = r.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	w := krules.New(krules.WithStorage(mem))
	for k := 1; k <= per; k++ {
		for i := range subjects {
			if _, _, err := w.Subject(fmt.Sprintf("s-%d", i), krules.NoCache()).Set(context.Background(), "v", k); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.wait(t, 30*time.Second)
	s.checkOrder(t, per)
	if fails.Load() != 2 {
		t.Errorf("%d injected failures, want 2", fails.Load())
	}
	if r.Stats().Errors < 2 {
		t.Errorf("relay counted %d errors, want >= 2", r.Stats().Errors)
	}
}

// waits records the wait of each read of a cursor store, and whether a
// publish was outstanding when it started.
type waits struct {
	storage.FeedCursor
	outstanding atomic.Bool
	mu          sync.Mutex
	busy        []time.Duration // waits of reads started while a publish was outstanding
}

func (w *waits) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	if w.outstanding.Load() {
		w.mu.Lock()
		w.busy = append(w.busy, wait)
		w.mu.Unlock()
	}
	return w.FeedCursor.ReadChangesAfter(ctx, after, n, wait)
}

// TestCursorReadWaitIsShortWhilePublishing: while a publish is
// outstanding, the relay's reads block for a short time only, so that a
// failed publish is retried after the relay's short pause and not after a
// read that waits up to LeaseTTL/3 (go-redis ends a blocking XREAD only at
// its timeout; a publish error waited 2.1 s with LeaseTTL 6 s before).
func TestCursorReadWaitIsShortWhilePublishing(t *testing.T) {
	t.Parallel()
	js := connect(t)
	stream := newStream(t, js)
	mem := memory.New(memory.WithChangeFeed())
	store := &waits{FeedCursor: mem}
	r, err := feed.NewRelay(context.Background(), store, js, feed.RelayConfig{Stream: stream, LeaseTTL: 6 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var calls atomic.Int64
	feed.ReplacePublish(r, func(pub feed.PublishFunc) feed.PublishFunc {
		return func(ctx context.Context, stream string, e *event.Event) (jetstream.PubAckFuture, error) {
			if calls.Add(1) == 1 {
				// The first publish hangs until the test has seen the
				// reads, then fails.
				store.outstanding.Store(true)
				f := &futureOf{err: make(chan error, 1)}
				go func() { <-release; store.outstanding.Store(false); f.err <- errors.New("injected: late publish error") }()
				return f, nil
			}
			return pub(ctx, stream, e)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = r.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	if _, _, err := krules.New(krules.WithStorage(mem)).Subject("x", krules.NoCache()).Set(context.Background(), "v", 1); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		store.mu.Lock()
		n := len(store.busy)
		store.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d reads while the publish was outstanding, want 2 within 20 s (a read waits for its full wait)", n)
		}
	}
	close(release)
	store.mu.Lock()
	for _, w := range store.busy {
		if w > time.Second {
			t.Errorf("a read started while a publish was outstanding waits %v", w)
		}
	}
	store.mu.Unlock()
	for end := time.Now().Add(20 * time.Second); r.Stats().Published < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the change was not relayed after the failed publish")
		}
	}
}

// slowRemoval makes AckChanges slow and records the largest removal.
type slowRemoval struct {
	*memory.Backend
	delay time.Duration
	max   atomic.Int64
}

func (s *slowRemoval) AckChanges(ctx context.Context, refs []string) error {
	if n := int64(len(refs)); n > s.max.Load() {
		s.max.Store(n)
	}
	time.Sleep(s.delay) // a slow store
	return s.Backend.AckChanges(ctx, refs)
}

// TestCursorSlowRemovalHoldsReadsBack: a slow AckChanges holds the
// pipeline back: acknowledged records waiting for removal stay bounded
// (a few Batches), they do not grow with the write rate (2,900 of them in
// one removal with Batch 64 before).
func TestCursorSlowRemovalHoldsReadsBack(t *testing.T) {
	t.Parallel()
	js := connect(t)
	stream := newStream(t, js)
	store := &slowRemoval{Backend: memory.New(memory.WithChangeFeed()), delay: 200 * time.Millisecond}
	const n, batch = 1500, 64
	w := krules.New(krules.WithStorage(store))
	for i := range n {
		if _, _, err := w.Subject(fmt.Sprintf("s-%d", i%50), krules.NoCache()).Set(context.Background(), "v", i); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := startRelay(t, store, js, feed.RelayConfig{Stream: stream, Batch: batch})
	for end := time.Now().Add(60 * time.Second); r.Stats().Published < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("removed %d of %d", r.Stats().Published, n)
		}
	}
	if m := store.max.Load(); m > 5*batch {
		t.Errorf("one removal held %d records (Batch %d)", m, batch)
	}
}
