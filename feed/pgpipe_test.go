package feed_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// readCount is a PostgreSQL backend that counts, per record, how often a
// read (ReadChanges or ReadNewChanges) returned it.
type readCount struct {
	*postgres.Backend
	mu    sync.Mutex
	reads map[string]int // record id -> times returned
}

func (c *readCount) note(recs []storage.PendingChange) {
	c.mu.Lock()
	for _, r := range recs {
		c.reads[r.Change.ID]++
	}
	c.mu.Unlock()
}

func (c *readCount) ReadChanges(ctx context.Context, n int, wait time.Duration) ([]storage.PendingChange, error) {
	recs, err := c.Backend.ReadChanges(ctx, n, wait)
	c.note(recs)
	return recs, err
}

func (c *readCount) ReadNewChanges(ctx context.Context, fresh bool, n int, wait time.Duration) ([]storage.PendingChange, error) {
	recs, err := c.Backend.ReadNewChanges(ctx, fresh, n, wait)
	c.note(recs)
	return recs, err
}

// TestRelayPostgresPipeline: over PostgreSQL the relay reads and publishes
// a record committed while 40 records of other subjects wait for their
// JetStream acknowledgements (held back), without waiting for them, and
// reads every record once: a read leaves out the records in flight
// (ReadNewChanges). Without the pipeline (batches of the oldest records) the
// new record waited for the 40 acknowledgements (a batch of 32 records or
// more is not refilled), and a refill read the batch's records again.
func TestRelayPostgresPipeline(t *testing.T) {
	t.Parallel()
	js := connect(t)
	stream := newStream(t, js)
	pg := openPostgres(t, "")
	store := &readCount{Backend: pg, reads: map[string]int{}}
	published := watchPublished(t, js, stream)
	ctx := context.Background()
	writer := krules.New(krules.WithStorage(pg))
	set := func(subject string, v int) {
		t.Helper()
		if _, _, err := writer.Subject(subject, krules.NoCache()).Set(ctx, "v", v); err != nil {
			t.Fatal(err)
		}
	}
	const first = 40
	for i := range first {
		set(fmt.Sprintf("s%02d", i), 1)
	}
	r, open := startHeldRelay(t, store, js, stream)
	waitSeen := func(n int, what string) []string {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
			s := published()
			if len(s) >= n {
				for _, x := range s {
					if x == what || what == "" {
						return s
					}
				}
			}
			if time.Now().After(end) {
				t.Fatalf("%d published within 10 s, want %d and %q (published: %v)", len(s), n, what, s)
			}
		}
	}
	waitSeen(first, "") // all published; their acknowledgements are held
	set("b", 1)
	waitSeen(first+1, "b/1")
	store.mu.Lock()
	for id, n := range store.reads {
		if n != 1 {
			t.Errorf("record %s read %d times while in flight, want once", id, n)
		}
	}
	if len(store.reads) != first+1 {
		t.Errorf("%d records read, want %d", len(store.reads), first+1)
	}
	store.mu.Unlock()
	open()
	for end := time.Now().Add(10 * time.Second); r.Stats().Published < first+1; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("relay removed %d of %d records", r.Stats().Published, first+1)
		}
	}
	pending, err := pg.ReadChanges(ctx, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 0 {
		t.Errorf("%d records left in the store", len(pending))
	}
	time.Sleep(50 * time.Millisecond) // a second publish would arrive by now
	if seen := published(); len(seen) != first+1 {
		t.Errorf("published %d messages, want %d: %v", len(seen), first+1, seen)
	}
}
