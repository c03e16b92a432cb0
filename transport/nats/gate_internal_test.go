package nats

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestAllInHandCountsDeliveriesInFlight: the gate's check against a burst
// of deliveries in flight at the time of the consumer info. The plain
// count (NumAckPending against the events held before asking) fails as
// long as the burst goes on; allInHand waits until dispatch is through the
// server's last delivery and counts what was delivered up to it.
func TestAllInHandCountsDeliveriesInFlight(t *testing.T) {
	w := &Worker{}
	hold := func(p *partition, seq, dseq uint64) {
		p.mu.Lock()
		p.held[seq] = &item{seq: seq, dseq: dseq}
		p.dseq, p.rseq = dseq, dseq
		p.mu.Unlock()
	}
	newPart := func() *partition {
		return &partition{held: map[uint64]*item{}, stop: make(chan struct{}), gated: true}
	}
	info := func(ackPending int, delivered uint64) *jetstream.ConsumerInfo {
		return &jetstream.ConsumerInfo{NumAckPending: ackPending, Delivered: jetstream.SequenceInfo{Consumer: delivered}}
	}

	// Held 1-3 when asking; the server had delivered 5 (4 and 5 on their
	// way), all 5 unacknowledged. 4, 5 and a later 6 arrive meanwhile.
	p := newPart()
	for d := uint64(1); d <= 3; d++ {
		hold(p, 100+d, d)
	}
	before := len(p.held)
	in := info(5, 5)
	if in.NumAckPending <= before {
		t.Fatal("the plain count should not match while deliveries are in flight")
	}
	arrived := make(chan struct{})
	go func(p *partition) {
		defer close(arrived)
		time.Sleep(time.Millisecond) // allInHand waits for them
		for d := uint64(4); d <= 6; d++ {
			hold(p, 100+d, d)
		}
	}(p)
	if !w.allInHand(p, in) {
		t.Fatal("all 5 delivered events are held: the gate may open")
	}
	<-arrived

	// A previous owner's event: 5 unacknowledged, but delivery 2 went to
	// the previous owner's pull; we hold 1, 3, 4, 5 and a later 6.
	p = newPart()
	for _, d := range []uint64{1, 3, 4, 5, 6} {
		hold(p, 100+d, d)
	}
	if w.allInHand(p, info(5, 5)) {
		t.Fatal("delivery 2 is not held: the gate must stay closed")
	}

	// The server's last delivery never reaches us and is counted: closed
	// (after gateSettle).
	p = newPart()
	for d := uint64(1); d <= 3; d++ {
		hold(p, 100+d, d)
	}
	if w.allInHand(p, info(4, 4)) {
		t.Fatal("delivery 4 did not arrive: the gate must stay closed")
	}
	// ... and is not counted (its event was acked elsewhere): the three
	// unacknowledged ones are ours, nothing is missing.
	if !w.allInHand(p, info(3, 4)) {
		t.Fatal("delivery 4 is settled and 1-3 are held: the gate may open")
	}

	// An event whose ack was sent may already be off the server's count:
	// it must not stand in for one that went to another pull. We hold 1,
	// 3 and 4 (1 acked); delivery 2 went elsewhere; the server counts 3
	// (2, 3, 4).
	p = newPart()
	for _, d := range []uint64{1, 3, 4} {
		hold(p, 100+d, d)
	}
	p.held[101].acked = true
	if w.allInHand(p, info(3, 4)) {
		t.Fatal("delivery 2 is not held (1 is acked): the gate must stay closed")
	}
}
