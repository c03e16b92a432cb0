package feed

import (
	"context"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules/storage"
)

// The relay over a storage.FeedCursor (Redis, memory), or a store whose
// reads leave out what they returned before (newReader: PostgreSQL): one
// continuous pipeline instead of batches. A read returns only the records committed
// after the last one read (the cursor), so a record is read once, while
// earlier ones are still being published or removed; each subject's
// records are published one after another (the next when JetStream
// acknowledged the previous one), different subjects in parallel; acked
// records are removed in batches (AckChanges) while reading and publishing
// go on. The pipeline's state outlives a work call (the lease renewal); an
// error or a lost lease drops it, and the next holder starts from the
// beginning of the feed: what was published and not yet removed is
// published again under the same Nats-Msg-Id (JetStream drops the copy).

// removeAt and removeAfter: acked records are removed when removeAt of them
// are waiting or the oldest has waited removeAfter (one AckChanges for
// many records at a low rate: the removal is off the latency path).
const (
	removeAt    = 64
	removeAfter = 20 * time.Millisecond
)

// busyWait caps a read's blocking wait while publishes or removals are in
// flight: go-redis ends a blocking XREAD only at its own timeout, not when
// ctx is cancelled, and an error of a publish must be retried after the
// relay's short pause, not after the read's full wait (up to LeaseTTL/3).
const busyWait = 50 * time.Millisecond

// maxAckedBatches: reading stops while more than this many Batches of
// acknowledged records wait for their removal (a slow AckChanges must hold
// the pipeline back, not let the store and the pipeline's memory grow).
const maxAckedBatches = 4

// pipe is the state of a cursor relay while it holds the lease.
type pipe struct {
	cursor  string             // Ref of the last record read
	chains  map[string]*pchain // subjects with records not yet acknowledged
	queue   []pflight          // in flight, in publish order; queue[head:] pending
	head    int
	pending int       // records read and not yet acknowledged
	acked   []string  // acknowledged, not yet removed
	ackedAt time.Time // when acked got its first ref
	ack     *storeAck // the running removal
}

// pchain is one subject's records; items[0] is in flight when busy.
type pchain struct {
	subject string
	items   []pitem
	busy    bool
}

type pitem struct {
	ref string
	e   *event.Event
}

type pflight struct {
	f        jetstream.PubAckFuture
	c        *pchain
	deadline time.Time // the lease end of the work call that sent it
}

// dropPipe ends the pipeline (an error, a lost lease, Run's end): the
// running removal is awaited, in-flight publishes are forgotten (their
// records stay in the store and are published again).
func (r *Relay) dropPipe() {
	p := r.pipe
	if p == nil {
		return
	}
	r.pipe = nil
	if p.ack != nil {
		<-p.ack.done
	}
}

type readResult struct {
	recs []storage.PendingChange
	err  error
}

// workCursor is work over a FeedCursor: it relays until the lease must be
// renewed (until), then returns nil with the pipeline kept (r.pipe), or an
// error (Run drops the pipeline).
func (r *Relay) workCursor(ctx context.Context, fc storage.FeedCursor, until time.Time) error {
	p := r.pipe
	if p == nil {
		p = &pipe{chains: map[string]*pchain{}}
		r.pipe = p
	}
	if p.pending == 0 && len(p.acked) == 0 && p.ack == nil {
		// Nothing in flight: read from the start of the feed again (what
		// is there was committed after the last removal). A cursor kept
		// while the feed was replaced underneath (a stream deleted and
		// recreated, a failover to a replica with an earlier clock) would
		// otherwise hide new records until the next error or lease change.
		p.cursor = ""
	}
	leaseEnd := until.Add(r.cfg.LeaseTTL - r.cfg.LeaseTTL/3)
	// A publish must not outlive the lease (it bounds the wait for room
	// among the async publishes).
	pctx, cancel := context.WithDeadline(ctx, leaseEnd)
	defer cancel()
	// One reader goroutine per work call (a goroutine per read would grow
	// a fresh stack every time): it reads on request, one read at a time.
	type readReq struct {
		after string
		n     int
		wait  time.Duration
	}
	reqs := make(chan readReq, 1)
	results := make(chan readResult, 1)
	readerDone := make(chan struct{})
	defer func() {
		// A running read ends by until (its wait) or with ctx: when work
		// returns, the relay no longer uses the store.
		close(reqs)
		<-readerDone
	}()
	go func() {
		defer close(readerDone)
		for q := range reqs {
			recs, err := fc.ReadChangesAfter(ctx, q.after, q.n, q.wait)
			results <- readResult{recs, err}
		}
	}()
	var reading chan readResult // results while a read runs, else nil
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()

	send := func(c *pchain) error {
		it := c.items[0]
		f, err := r.publishAsync(pctx, r.cfg.Stream, it.e)
		if err != nil {
			return fmt.Errorf("feed: publish: %w", err)
		}
		c.busy = true
		p.queue = append(p.queue, pflight{f: f, c: c, deadline: leaseEnd})
		return nil
	}
	done := func(ref string) {
		if len(p.acked) == 0 {
			p.ackedAt = time.Now()
		}
		p.acked = append(p.acked, ref)
	}
	// acked: the head flight was acknowledged.
	acked := func() error {
		fl := p.queue[p.head]
		p.queue[p.head] = pflight{}
		p.head++
		if p.head == len(p.queue) {
			p.queue, p.head = p.queue[:0], 0
		} else if p.head >= 256 && p.head*2 >= len(p.queue) {
			// Never empty at saturation: move the pending part down.
			n := copy(p.queue, p.queue[p.head:])
			clear(p.queue[n:])
			p.queue, p.head = p.queue[:n], 0
		}
		c := fl.c
		done(c.items[0].ref)
		p.pending--
		c.items[0] = pitem{}
		c.items = c.items[1:]
		c.busy = false
		if len(c.items) == 0 {
			delete(p.chains, c.subject)
			return nil
		}
		return send(c)
	}
	add := func(recs []storage.PendingChange) error {
		for _, rec := range recs {
			p.cursor = rec.Ref
			if rec.Err == nil {
				e, err := Event(rec.Change, r.cfg.Source)
				if err == nil {
					c := p.chains[rec.Change.Subject]
					if c == nil {
						c = &pchain{subject: rec.Change.Subject}
						p.chains[c.subject] = c
					}
					c.items = append(c.items, pitem{ref: rec.Ref, e: e})
					p.pending++
					if !c.busy {
						if err := send(c); err != nil {
							return err
						}
					}
					continue
				}
				rec.Err = err
			}
			if err := r.deadLetter(pctx, rec); err != nil {
				return err
			}
			done(rec.Ref)
		}
		return nil
	}
	settle := func() error {
		a := p.ack
		p.ack = nil
		return a.err
	}
	for {
		// The acknowledgements already in, without waiting.
	heads:
		for p.head < len(p.queue) {
			fl := p.queue[p.head]
			select {
			case <-fl.f.Ok():
				if err := acked(); err != nil {
					return err
				}
			case err := <-fl.f.Err():
				return fmt.Errorf("feed: publish: %w", err)
			default:
				break heads
			}
		}
		now := time.Now()
		if p.ack != nil && p.ack.finished() {
			if err := settle(); err != nil {
				return err
			}
		}
		if p.ack == nil && len(p.acked) > 0 && (len(p.acked) >= removeAt || now.Sub(p.ackedAt) >= removeAfter || !now.Before(until)) {
			refs := p.acked
			p.acked = nil
			a := &storeAck{done: make(chan struct{})}
			p.ack = a
			go func() {
				if a.err = r.store.AckChanges(ctx, refs); a.err == nil {
					r.published.Add(uint64(len(refs)))
				}
				close(a.done)
			}()
		}
		if reading == nil && p.pending < r.cfg.Batch && len(p.acked) < maxAckedBatches*r.cfg.Batch && now.Before(until) {
			reading = results
			wait := until.Sub(now)
			if p.pending > 0 || len(p.acked) > 0 || p.ack != nil {
				wait = min(wait, busyWait)
			}
			reqs <- readReq{p.cursor, r.cfg.Batch - p.pending, wait}
		}
		if reading == nil && !now.Before(until) {
			return nil // in-flight publishes and acked records stay in the pipeline
		}
		// Wait for the oldest acknowledgement, a read, the removal, or a
		// deadline.
		deadline := until
		var okc <-chan *jetstream.PubAck
		var errc <-chan error
		if p.head < len(p.queue) {
			fl := p.queue[p.head]
			okc, errc = fl.f.Ok(), fl.f.Err()
			if fl.deadline.Before(deadline) {
				deadline = fl.deadline
			}
		}
		var ackDone chan struct{}
		if p.ack != nil {
			ackDone = p.ack.done
		} else if len(p.acked) > 0 {
			if t := p.ackedAt.Add(removeAfter); t.Before(deadline) {
				deadline = t
			}
		}
		if reading != nil && !now.Before(until) {
			if !now.Before(leaseEnd) {
				return fmt.Errorf("feed: read change feed: %w", context.DeadlineExceeded)
			}
			deadline = leaseEnd // waiting for the read to end
		}
		timer.Reset(max(time.Until(deadline), 0))
		select {
		case <-okc:
			if err := acked(); err != nil {
				return err
			}
		case err := <-errc:
			return fmt.Errorf("feed: publish: %w", err)
		case res := <-reading:
			reading = nil
			if res.err != nil {
				return res.err
			}
			if err := add(res.recs); err != nil {
				return err
			}
		case <-ackDone:
		case <-timer.C:
			if p.head < len(p.queue) && !time.Now().Before(p.queue[p.head].deadline) {
				return fmt.Errorf("feed: publish: %w", context.DeadlineExceeded)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
