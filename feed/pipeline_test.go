package feed_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// slowAck is a feed store whose removal of published records takes a
// while, so the relay reads them again while they are being removed.
type slowAck struct {
	*memory.Backend
	delay time.Duration
	acks  atomic.Int64
}

func (s *slowAck) AckChanges(ctx context.Context, refs []string) error {
	s.acks.Add(1)
	time.Sleep(s.delay)
	return s.Backend.AckChanges(ctx, refs)
}

// TestRelaySkipsRecordsBeingRemoved: the relay removes a published batch
// while it reads and publishes the next one; the records it reads again
// because their removal has not finished are not published a second time
// (seen on a core NATS subscription, which JetStream's de-duplication does
// not hide), the next batch is, and every record is removed in the end.
// Over the memory store as it is (the relay reads with its cursor and never
// reads a record again) and with the cursor hidden (the batch path).
func TestRelaySkipsRecordsBeingRemoved(t *testing.T) {
	t.Parallel()
	for _, cursor := range []bool{true, false} {
		t.Run(map[bool]string{true: "cursor", false: "batch"}[cursor], func(t *testing.T) {
			t.Parallel()
			testRelaySkipsRecordsBeingRemoved(t, cursor)
		})
	}
}

func testRelaySkipsRecordsBeingRemoved(t *testing.T, cursor bool) {
	js := connect(t)
	stream := newStream(t, js)
	store := &slowAck{Backend: memory.New(memory.WithChangeFeed()), delay: 300 * time.Millisecond}
	var mu sync.Mutex
	ids := map[string]int{}
	sub, err := js.Conn().Subscribe(stream+".p.*", func(m *natsgo.Msg) {
		mu.Lock()
		ids[m.Header.Get(natsgo.MsgIdHdr)]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	writer := krules.New(krules.WithStorage(store))
	write := func(from, to int) {
		for i := from; i < to; i++ {
			if _, _, err := writer.Subject(fmt.Sprintf("s-%02d", i%10), krules.NoCache()).Set(ctx, "v", i); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 20) // one batch
	var rs storage.FeedStore = store
	if !cursor {
		rs = noCursor{store}
	}
	r, _ := startRelay(t, rs, js, feed.RelayConfig{Stream: stream})
	// The first batch is published and its removal runs; the next changes
	// arrive while it runs.
	for end := time.Now().Add(10 * time.Second); store.acks.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the relay removed nothing within 10 s")
		}
	}
	write(20, 40)
	for end := time.Now().Add(10 * time.Second); r.Stats().Published < 40; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("relay published %d of 40 records", r.Stats().Published)
		}
	}
	pending, err := store.ReadChanges(ctx, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 0 {
		t.Errorf("%d records left in the store", len(pending))
	}
	time.Sleep(100 * time.Millisecond) // let the subscription catch up
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 40 {
		t.Errorf("%d distinct records published, want 40", len(ids))
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("record %s published %d times", id, n)
		}
	}
	if st := r.Stats(); st.Published != 40 || st.Errors != 0 {
		t.Errorf("stats %+v, want 40 published, no error", st)
	}
}
