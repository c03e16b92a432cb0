package feed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/transport/cloudevents"
	"github.com/krules-go/krules/transport/nats"
)

// Defaults of RelayConfig.
const (
	DefaultLeaseTTL = 5 * time.Second
	DefaultBatch    = 512
)

// ReasonMalformedRecord is the dead-letter reason (nats.HeaderDeadReason) of
// a change record the relay cannot decode.
const ReasonMalformedRecord = "malformed-record"

// ErrConfig is wrapped by NewRelay's errors about its arguments.
var ErrConfig = errors.New("feed: invalid relay configuration")

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Stream is the JetStream stream (made by nats.EnsureStream) the
	// changes are published to. Required.
	Stream string
	// Source is the CloudEvent source. Default cloudevents.DefaultSource().
	Source string
	// Owner names this relay in the feed lease. Default: a random id.
	Owner string
	// LeaseTTL is the lease of the active relay: it renews it every
	// LeaseTTL/3; a standby checks every LeaseTTL/3 and takes over at most
	// LeaseTTL + LeaseTTL/3 after the active relay died. Default
	// DefaultLeaseTTL (5 s).
	LeaseTTL time.Duration
	// Batch bounds the records read and published at once: over a store
	// with a cursor (storage.FeedCursor: Redis, memory) or
	// ReadNewChanges (PostgreSQL) the records read
	// and not yet acknowledged by JetStream (and reading pauses while 4 x
	// Batch acknowledged records wait for their removal), else the records
	// of one batch. Default DefaultBatch.
	Batch int
	// Logger for store and publish problems. Default slog.Default().
	Logger *slog.Logger
}

// Stats counts what a Relay did since NewRelay.
type Stats struct {
	Published    uint64 // records removed after JetStream acknowledged them (dead letters included)
	DeadLettered uint64 // undecodable records sent to the dead-letter subject
	Errors       uint64 // failed store or publish calls (each paused the relay)
	Takeovers    uint64 // times this relay acquired the lease
}

// Relay moves change records from a store's feed to a JetStream stream. See
// the package doc for the guarantees. Run it in one or more processes per
// store: one holds the lease and publishes, the others stand by.
type Relay struct {
	store storage.FeedStore
	js    jetstream.JetStream
	pub   *nats.Publisher
	cfg   RelayConfig
	log   *slog.Logger

	// publishAsync is pub.PublishEventAsync (tests replace it).
	publishAsync func(ctx context.Context, stream string, e *event.Event) (jetstream.PubAckFuture, error)

	pipe *pipe // the cursor relay's pipeline (pipe.go), while it holds the lease

	active                           atomic.Bool
	published, dead, errs, takeovers atomic.Uint64
}

// NewRelay returns a relay from store to cfg.Stream; it reads the stream's
// partition count (the stream must exist).
func NewRelay(ctx context.Context, store storage.FeedStore, js jetstream.JetStream, cfg RelayConfig) (*Relay, error) {
	if store == nil || js == nil {
		return nil, fmt.Errorf("%w: nil store or JetStream", ErrConfig)
	}
	if cfg.Stream == "" {
		return nil, fmt.Errorf("%w: empty Stream", ErrConfig)
	}
	if cfg.Source == "" {
		cfg.Source = cloudevents.DefaultSource()
	}
	if cfg.Owner == "" {
		cfg.Owner = storage.NewChangeID()
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	pub, err := nats.NewPublisher(ctx, js, nats.PublisherConfig{Stream: cfg.Stream, Source: cfg.Source})
	if err != nil {
		return nil, fmt.Errorf("feed: relay to %s: %w", cfg.Stream, err)
	}
	return &Relay{store: store, js: js, pub: pub, cfg: cfg, log: log, publishAsync: pub.PublishEventAsync}, nil
}

// Active reports whether the relay holds the lease.
func (r *Relay) Active() bool { return r.active.Load() }

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{Published: r.published.Load(), DeadLettered: r.dead.Load(), Errors: r.errs.Load(), Takeovers: r.takeovers.Load()}
}

// Run relays until ctx is done, then gives the lease up (if held) and
// returns nil. Without the lease it stands by, trying every LeaseTTL/3. A
// store or NATS outage pauses it (a growing pause, at most LeaseTTL/3,
// counted in Stats.Errors and logged at level Warn) and it resumes by
// itself. Run may be called once at a time per Relay.
func (r *Relay) Run(ctx context.Context) error {
	defer func() {
		r.dropPipe()
		if r.active.Swap(false) {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = r.store.ReleaseFeedLease(rctx, r.cfg.Owner)
			cancel()
		}
	}()
	tick := r.cfg.LeaseTTL / 3
	pause := time.Duration(0)
	for ctx.Err() == nil {
		if pause > 0 {
			if !sleep(ctx, pause) {
				break
			}
		}
		start := time.Now()
		ok, err := r.store.FeedLease(ctx, r.cfg.Owner, r.cfg.LeaseTTL)
		if err != nil {
			r.fail("lease", err)
			r.dropPipe()
			r.active.Store(false)
			pause = min(max(2*pause, 50*time.Millisecond), tick)
			continue
		}
		if !ok {
			r.dropPipe()
			r.active.Store(false)
			pause = tick // standby
			continue
		}
		if !r.active.Swap(true) {
			r.takeovers.Add(1)
			r.log.Info("feed: relay active", "owner", r.cfg.Owner, "stream", r.cfg.Stream)
		}
		pause = 0
		renew := start.Add(tick)
		if err := r.work(ctx, renew); err != nil {
			r.dropPipe()
			if ctx.Err() != nil {
				break
			}
			r.fail("relay", err)
			pause = min(max(2*pause, 50*time.Millisecond), tick)
		}
	}
	return nil
}

func (r *Relay) fail(what string, err error) {
	r.errs.Add(1)
	r.log.Warn("feed: relay paused", "step", what, "error", err, "owner", r.cfg.Owner)
}

// storeAck is a running AckChanges of the records of one batch.
type storeAck struct {
	refs map[string]bool
	done chan struct{} // closed when AckChanges returned
	err  error         // its result, set before done is closed
}

func (a *storeAck) finished() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// work relays batches until the lease must be renewed (until). The removal
// of a published batch from the store (AckChanges) runs while the next
// batch is read and published: a record that read returns again because
// its removal had not finished when the read started is skipped, not
// republished. At most one removal runs at a time; work waits for it
// before it returns.
func (r *Relay) work(ctx context.Context, until time.Time) (err error) {
	if fc, ok := r.store.(storage.FeedCursor); ok {
		return r.workCursor(ctx, fc, until)
	}
	if nr, ok := r.store.(newReader); ok {
		return r.workCursor(ctx, newCursor{r.store, nr}, until)
	}
	var ack *storeAck
	// settle waits for the running removal and reports its error.
	settle := func() error {
		if ack == nil {
			return nil
		}
		<-ack.done
		err := ack.err
		ack = nil
		return err
	}
	defer func() {
		if serr := settle(); err == nil {
			err = serr
		}
	}()
	for {
		left := time.Until(until)
		if left <= 0 {
			return nil
		}
		if ack != nil && ack.finished() {
			// A read from now on no longer sees its records.
			if err := settle(); err != nil {
				return err
			}
		}
		recs, err := r.store.ReadChanges(ctx, r.cfg.Batch, left)
		if err != nil {
			return err
		}
		full := len(recs) >= r.cfg.Batch
		var removing map[string]bool
		if ack != nil {
			removing = ack.refs
			// Its records may be in recs (read while they were being removed).
			kept := recs[:0]
			for _, p := range recs {
				if !ack.refs[p.Ref] {
					kept = append(kept, p)
				}
			}
			recs = kept
			if len(recs) == 0 {
				// Only records being removed: wait for the removal
				// instead of reading them again at once.
				if err := settle(); err != nil {
					return err
				}
				continue
			}
		}
		if len(recs) == 0 {
			continue
		}
		// A publish must not outlive the lease.
		pctx, cancel := context.WithDeadline(ctx, until.Add(r.cfg.LeaseTTL-r.cfg.LeaseTTL/3))
		done, perr := r.publish(pctx, recs, full, removing)
		cancel()
		if err := settle(); err != nil { // the previous removal, long finished as a rule
			return err
		}
		if len(done) > 0 {
			a := &storeAck{refs: make(map[string]bool, len(done)), done: make(chan struct{})}
			for _, ref := range done {
				a.refs[ref] = true
			}
			ack = a
			go func() {
				if a.err = r.store.AckChanges(ctx, done); a.err == nil {
					r.published.Add(uint64(len(done)))
				}
				close(a.done)
			}()
		}
		if perr != nil {
			return perr
		}
	}
}

// newReader is a FeedStore that can leave out the records it returned
// before and that are not yet removed (postgres.Backend.ReadNewChanges):
// the relay then runs the cursor pipeline over it (newCursor) instead of
// batches, so a record is read as soon as it commits (its NOTIFY), while
// earlier records are still in flight. Its records come in commit order per
// subject, which is all the pipeline needs: it chains each subject's
// records in read order.
type newReader interface {
	ReadNewChanges(ctx context.Context, fresh bool, n int, wait time.Duration) ([]storage.PendingChange, error)
}

// newCursor is a newReader seen as a storage.FeedCursor: the pipeline's
// empty cursor (its start, or nothing in flight) is a fresh read.
type newCursor struct {
	storage.FeedStore
	nr newReader
}

func (c newCursor) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	return c.nr.ReadNewChanges(ctx, after == "", n, wait)
}

// refillAfter is how long publish waits on an acknowledgement before it
// looks for records committed meanwhile, and refillMax the batch size up to
// which it does (see publish): a refill reads the batch's own records again
// (the store has no cursor), so it is kept to small batches, where the
// feed's load is low and a change would otherwise wait longest.
const (
	refillAfter = 2 * time.Millisecond
	refillMax   = 32
)

// publish sends a batch, keeping each subject's records in order: the
// first record of every subject is published at once (asynchronously); a
// subject's next record is published when JetStream acknowledged its
// previous one, so one subject waits for its own acks only, never for
// those of other subjects. A subject whose record failed publishes nothing
// more of the batch. It returns the refs of the records JetStream
// acknowledged (or dead-lettered).
//
// Refill: when the batch emptied the feed (full is false), holds fewer
// than refillMax records and an acknowledgement takes longer than
// refillAfter, publish reads the feed again without waiting and adds the
// records committed since (up to Batch in all, the refs of removing
// skipped) to the running batch: a new
// subject's first record goes out at once, a subject of the batch gets
// them queued behind its own records. So a change committed while
// JetStream is slow to acknowledge the previous one waits for nothing
// else but its own subject's earlier records.
func (r *Relay) publish(ctx context.Context, recs []storage.PendingChange, full bool, removing map[string]bool) ([]string, error) {
	type item struct {
		p storage.PendingChange
		e *event.Event
	}
	// chain is a subject's records of the batch; items[:sent] were sent.
	type chain struct {
		items        []item
		sent         int
		busy, failed bool // one in flight; one failed (send no more)
	}
	// In flight, in publish order. JetStream acknowledges one stream's
	// messages in the order they were stored, so waiting on the oldest
	// future first loses nothing, and no goroutine per record is needed.
	type flight struct {
		f   jetstream.PubAckFuture
		c   *chain
		ref string
	}
	chains := map[string]*chain{}
	known := make(map[string]bool, len(recs)) // refs of the batch
	var queue []flight
	var done []string
	var firstErr error
	// add puts a record into its subject's chain (dead-letters an
	// undecodable one at once) and returns the chain, nil if none.
	add := func(p storage.PendingChange) (*chain, error) {
		known[p.Ref] = true
		if p.Err != nil {
			if err := r.deadLetter(ctx, p); err != nil {
				return nil, err
			}
			done = append(done, p.Ref)
			return nil, nil
		}
		e, err := Event(p.Change, r.cfg.Source)
		if err != nil {
			p.Err = err
			if err := r.deadLetter(ctx, p); err != nil {
				return nil, err
			}
			done = append(done, p.Ref)
			return nil, nil
		}
		c := chains[p.Change.Subject]
		if c == nil {
			c = &chain{}
			chains[p.Change.Subject] = c
		}
		c.items = append(c.items, item{p, e})
		return c, nil
	}
	// send publishes the chain's next record unless one is in flight.
	send := func(c *chain) {
		if c == nil || c.busy || c.failed || c.sent == len(c.items) {
			return
		}
		it := c.items[c.sent]
		f, err := r.publishAsync(ctx, r.cfg.Stream, it.e)
		if err != nil {
			firstErr = cmpErr(firstErr, err)
			c.failed = true // the subject's later records stay in the store
			return
		}
		c.sent++
		c.busy = true
		queue = append(queue, flight{f: f, c: c, ref: it.p.Ref})
	}
	var starts []*chain
	for _, p := range recs {
		c, err := add(p)
		if err != nil {
			return done, err
		}
		if c != nil && len(c.items) == 1 {
			starts = append(starts, c)
		}
	}
	for _, c := range starts {
		send(c)
	}
	// refill reads the records committed since the batch was read.
	refill := func() {
		more, err := r.store.ReadChanges(ctx, r.cfg.Batch+len(removing), 0)
		if err != nil {
			firstErr = cmpErr(firstErr, err)
			return
		}
		for _, p := range more {
			if known[p.Ref] || removing[p.Ref] {
				continue
			}
			if len(known) >= r.cfg.Batch {
				break
			}
			c, err := add(p)
			if err != nil {
				firstErr = cmpErr(firstErr, err)
				return
			}
			send(c)
		}
	}
	var timer *time.Timer
	var tick <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for head := 0; head < len(queue); head++ {
		fl := queue[head]
		queue[head] = flight{}
		if tick == nil && !full && firstErr == nil && len(known) < min(refillMax, r.cfg.Batch) {
			if timer == nil {
				timer = time.NewTimer(refillAfter)
			} else {
				timer.Reset(refillAfter)
			}
			tick = timer.C
		}
		var err error
	wait:
		select {
		case <-fl.f.Ok():
		case err = <-fl.f.Err():
		case <-ctx.Done():
			select { // an ack that is already in wins over the deadline
			case <-fl.f.Ok():
			case err = <-fl.f.Err():
			default:
				err = ctx.Err()
			}
		case <-tick:
			tick = nil
			refill()
			if firstErr == nil && len(known) < min(refillMax, r.cfg.Batch) {
				timer.Reset(refillAfter)
				tick = timer.C
			}
			goto wait
		}
		fl.c.busy = false
		if err != nil {
			fl.c.failed = true
			firstErr = cmpErr(firstErr, err)
			continue
		}
		done = append(done, fl.ref)
		send(fl.c)
	}
	return done, firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return fmt.Errorf("feed: publish: %w", err)
}

// deadLetter publishes an undecodable record to the stream's dead-letter
// subject with the reason and error in headers.
func (r *Relay) deadLetter(ctx context.Context, p storage.PendingChange) error {
	body, _ := json.Marshal(p.Change)
	msg := natsgo.NewMsg(nats.DeadLetterSubject(r.cfg.Stream))
	msg.Data = body
	msg.Header.Set(nats.HeaderDeadReason, ReasonMalformedRecord)
	msg.Header.Set(nats.HeaderDeadError, p.Err.Error())
	msg.Header.Set("Krules-Feed-Ref", p.Ref)
	opts := []jetstream.PublishOpt{}
	if p.Change.ID != "" {
		opts = append(opts, jetstream.WithMsgID("dead-"+p.Change.ID))
	}
	if _, err := r.js.PublishMsg(ctx, msg, opts...); err != nil {
		return fmt.Errorf("feed: dead-letter record %s: %w", p.Ref, err)
	}
	r.dead.Add(1)
	r.log.Error("feed: undecodable change record dead-lettered", "ref", p.Ref, "error", p.Err)
	return nil
}

// Event builds the CloudEvent a relay publishes for a change record: the
// record's type, subject, id (so Nats-Msg-Id de-duplicates a republished
// record) and time; the payload of the krules built-in event
// ({property_name, old_value, value}, {property_name, old_value} or
// {props, ext_props}); the extensions nats.ExtChangeSeq, nats.ExtDepth,
// nats.ExtExtra and the trace context (traceparent, tracestate).
func Event(c storage.Change, source string) (*event.Event, error) {
	var p krules.Payload
	switch c.Type {
	case storage.ChangePropertyChanged:
		p = krules.Payload{krules.KeyPropertyName: c.Property, krules.KeyOldValue: c.Old, krules.KeyValue: c.New}
	case storage.ChangePropertyDeleted:
		p = krules.Payload{krules.KeyPropertyName: c.Property, krules.KeyOldValue: c.Old}
	case storage.ChangeSubjectDeleted:
		props, ext := c.Props, c.ExtProps
		if props == nil {
			props = map[string]any{}
		}
		if ext == nil {
			ext = map[string]any{}
		}
		p = krules.Payload{"props": props, "ext_props": ext}
	default:
		return nil, fmt.Errorf("%w: change record %s: unknown type %q", cloudevents.ErrMalformed, c.ID, c.Type)
	}
	ext := map[string]any{nats.ExtChangeSeq: strconv.FormatInt(c.Seq, 10)}
	if c.Depth > 0 {
		ext[nats.ExtDepth] = strconv.Itoa(c.Depth)
	}
	if c.Extra != nil {
		v, err := storage.Normalize(map[string]any(c.Extra))
		var data []byte
		if err == nil {
			data, err = storage.Marshal(v)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: change record %s: extra: %v", cloudevents.ErrMalformed, c.ID, err)
		}
		ext[nats.ExtExtra] = string(data)
	}
	if c.TraceParent != "" {
		ext[cloudevents.ExtTraceParent] = c.TraceParent
		if c.TraceState != "" {
			ext[cloudevents.ExtTraceState] = c.TraceState
		}
	}
	return cloudevents.NewEvent(context.Background(), c.Type, c.Subject, p, cloudevents.EventOptions{
		ID: c.ID, Source: source, Time: c.Time, Extensions: ext,
	})
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
