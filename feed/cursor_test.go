package feed_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	knats "github.com/krules-go/krules/transport/nats"
)

// countingCursor counts how often each record is returned by a read.
type countingCursor struct {
	storage.FeedCursor
	mu    sync.Mutex
	reads map[string]int
}

func (c *countingCursor) note(recs []storage.PendingChange) {
	c.mu.Lock()
	for _, r := range recs {
		c.reads[r.Ref]++
	}
	c.mu.Unlock()
}

func (c *countingCursor) ReadChanges(ctx context.Context, n int, wait time.Duration) ([]storage.PendingChange, error) {
	recs, err := c.FeedCursor.ReadChanges(ctx, n, wait)
	c.note(recs)
	return recs, err
}

func (c *countingCursor) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	recs, err := c.FeedCursor.ReadChangesAfter(ctx, after, n, wait)
	c.note(recs)
	return recs, err
}

// TestRelayReadsEachRecordOnce: over a store with a cursor
// (storage.FeedCursor) the relay reads every record once, also while
// JetStream is slow to acknowledge and records are committed meanwhile (a
// relay reading the oldest pending records reads the unacknowledged ones
// again), and relays all of them in order per subject.
func TestRelayReadsEachRecordOnce(t *testing.T) {
	t.Parallel()
	js := connect(t)
	stream := newStream(t, js)
	mem := memory.New(memory.WithChangeFeed())
	store := &countingCursor{FeedCursor: mem, reads: map[string]int{}}
	const subjects, per = 20, 10
	s := newSeen(subjects * per)
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(s.handler)
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})

	ctx := context.Background()
	r, open := startHeldRelay(t, store, js, stream)

	writer := krules.New(krules.WithStorage(mem))
	write := func(k int) {
		t.Helper()
		for i := range subjects {
			if _, _, err := writer.Subject(fmt.Sprintf("subj-%03d", i), krules.NoCache()).Set(ctx, "v", k, krules.WithExtra(krules.Extra{"k": k})); err != nil {
				t.Fatal(err)
			}
		}
	}
	// waitRead waits until the relay read n distinct records.
	waitRead := func(n int) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			store.mu.Lock()
			got := len(store.reads)
			store.mu.Unlock()
			if got >= n {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("relay read %d of %d records", got, n)
			}
		}
	}
	// Half the changes while the acknowledgements are held: the relay
	// waits on them, with more records committed behind, each round
	// read before the next is written.
	for k := range per / 2 {
		write(k)
		waitRead((k + 1) * subjects)
	}
	open()
	for k := per / 2; k < per; k++ {
		write(k)
	}
	s.wait(t, 30*time.Second)
	s.checkOrder(t, per)
	for end := time.Now().Add(10 * time.Second); r.Stats().Published < subjects*per; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("relay removed %d of %d records", r.Stats().Published, subjects*per)
		}
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.reads) != subjects*per {
		t.Errorf("%d records read, want %d", len(store.reads), subjects*per)
	}
	again := 0
	for _, n := range store.reads {
		if n > 1 {
			again++
		}
	}
	if again > 0 {
		t.Errorf("%d of %d records read more than once", again, len(store.reads))
	}
}

// readCalls counts the reads of a cursor store.
type readCalls struct {
	storage.FeedCursor
	n atomic.Int64
}

func (c *readCalls) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	c.n.Add(1)
	return c.FeedCursor.ReadChangesAfter(ctx, after, n, wait)
}

// TestRelayIdleCursor: an idle relay over a cursor store makes one
// blocking read per LeaseTTL/3 (a loop that reads again at once would make
// thousands in the window), and still relays a change at once.
func TestRelayIdleCursor(t *testing.T) {
	t.Parallel()
	js := connect(t)
	stream := newStream(t, js)
	mem := memory.New(memory.WithChangeFeed())
	store := &readCalls{FeedCursor: mem}
	const ttl = 300 * time.Millisecond
	r, _ := startRelay(t, store, js, feed.RelayConfig{Stream: stream, LeaseTTL: ttl})
	for end := time.Now().Add(10 * time.Second); !r.Active(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("relay not active within 10 s")
		}
	}
	n0 := store.n.Load()
	const window = 600 * time.Millisecond
	time.Sleep(window) // the measurement window, not a synchronisation
	if n := store.n.Load() - n0; n > int64(window/(ttl/3))+3 {
		t.Errorf("idle relay read %d times in %v (LeaseTTL/3 = %v)", n, window, ttl/3)
	}
	if _, _, err := krules.New(krules.WithStorage(mem)).Subject("s", krules.NoCache()).Set(context.Background(), "v", 1); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); r.Stats().Published < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("change not relayed within 10 s")
		}
	}
	if store.n.Load() == 0 {
		t.Fatal("the relay never read through the cursor (the batch path ran)")
	}
}
