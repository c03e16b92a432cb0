package feed_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// heldAck is a PubAckFuture whose outcome is passed on only once gate is
// closed: JetStream "slow to acknowledge".
type heldAck struct {
	jetstream.PubAckFuture
	ok  chan *jetstream.PubAck
	err chan error
}

func (h *heldAck) Ok() <-chan *jetstream.PubAck { return h.ok }
func (h *heldAck) Err() <-chan error            { return h.err }

// startHeldRelay runs a relay over store whose JetStream acknowledgements
// are held back until open is called (also at the end of the test).
func startHeldRelay(t *testing.T, store storage.FeedStore, js jetstream.JetStream, stream string) (r *feed.Relay, open func()) {
	t.Helper()
	r, err := feed.NewRelay(context.Background(), store, js, feed.RelayConfig{Stream: stream})
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	var release sync.Once
	open = func() { release.Do(func() { close(gate) }) }
	t.Cleanup(open)
	feed.WrapPublish(r, holdAcks(gate))
	rctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = r.Run(rctx); close(stopped) }()
	t.Cleanup(func() { open(); cancel(); <-stopped })
	return r, open
}

func holdAcks(gate <-chan struct{}) func(jetstream.PubAckFuture) jetstream.PubAckFuture {
	return func(f jetstream.PubAckFuture) jetstream.PubAckFuture {
		h := &heldAck{PubAckFuture: f, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
		go func() {
			select {
			case a := <-f.Ok():
				<-gate
				h.ok <- a
			case err := <-f.Err():
				<-gate
				h.err <- err
			}
		}()
		return h
	}
}

// TestRelayRefillsWhileAcksAreSlow: while JetStream has not acknowledged
// subject a's first change, the relay publishes a change of subject b
// committed meanwhile (it does not wait for a's acknowledgement), but not
// a's second change, which waits for its predecessor's. Once the
// acknowledgements come, every record is published once, in order per
// subject, and removed.
//
// It runs on the memory store twice: as it is (the relay reads with its
// cursor, storage.FeedCursor) and behind a wrapper that hides the cursor
// (the relay refills its batch, the path of PostgreSQL and bbolt).
func TestRelayRefillsWhileAcksAreSlow(t *testing.T) {
	t.Parallel()
	for _, cursor := range []bool{true, false} {
		t.Run(map[bool]string{true: "cursor", false: "refill"}[cursor], func(t *testing.T) {
			t.Parallel()
			testRelayRefillsWhileAcksAreSlow(t, cursor)
		})
	}
}

// noCursor hides a store's storage.FeedCursor.
type noCursor struct{ storage.FeedStore }

func testRelayRefillsWhileAcksAreSlow(t *testing.T, cursor bool) {
	js := connect(t)
	stream := newStream(t, js)
	mem := memory.New(memory.WithChangeFeed())
	var store storage.FeedStore = mem
	if !cursor {
		store = noCursor{mem}
	}
	published := watchPublished(t, js, stream)
	ctx := context.Background()
	r, open := startHeldRelay(t, store, js, stream)

	writer := krules.New(krules.WithStorage(mem))
	set := func(subject string, v int) {
		t.Helper()
		if _, _, err := writer.Subject(subject, krules.NoCache()).Set(ctx, "v", v); err != nil {
			t.Fatal(err)
		}
	}
	waitSeen := func(what string) []string {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
			s := published()
			for _, x := range s {
				if x == what {
					return s
				}
			}
			if time.Now().After(end) {
				t.Fatalf("%s not published within 10 s (published: %v)", what, s)
			}
		}
	}
	set("a", 1)
	waitSeen("a/1") // published; its acknowledgement is held
	set("a", 2)
	set("b", 1)
	s := waitSeen("b/1")
	for _, x := range s {
		if x == "a/2" {
			t.Fatalf("a/2 published before a/1 was acknowledged: %v", s)
		}
	}
	open()
	waitSeen("a/2")
	for end := time.Now().Add(10 * time.Second); r.Stats().Published < 3; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("relay removed %d of 3 records", r.Stats().Published)
		}
	}
	pending, err := store.ReadChanges(ctx, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 0 {
		t.Errorf("%d records left in the store", len(pending))
	}
	time.Sleep(50 * time.Millisecond) // a second publish would arrive by now
	if seen, want := published(), []string{"a/1", "b/1", "a/2"}; !equalStrings(seen, want) {
		t.Errorf("published %v, want %v", seen, want)
	}
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
