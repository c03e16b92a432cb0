package nats

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// Defaults of WorkerConfig.
const (
	DefaultGroup           = "krules"
	DefaultAckWait         = 30 * time.Second
	DefaultMaxDeliver      = 10
	DefaultShutdownTimeout = 30 * time.Second
	// ShutdownGrace is how long Run, past ShutdownTimeout, lets handlers
	// that honour their cancelled context hand their events back before it
	// returns without them.
	ShutdownGrace         = time.Second
	DefaultIdempotencyIDs = 16
	// DefaultConcurrency is the default WorkerConfig.Concurrency.
	DefaultConcurrency = 64
)

// DefaultBackoff is the default redelivery delay after the 1st, 2nd, 3rd...
// failed delivery (the last value repeats).
var DefaultBackoff = []time.Duration{500 * time.Millisecond, 2 * time.Second, 10 * time.Second, 30 * time.Second}

// AppliedKey is the extended property in which the idempotency option keeps
// its record (see WorkerConfig.Idempotent).
const AppliedKey = cloudevents.InternalPrefix + "_applied"

// Dead-letter message headers. The body is the original message's data;
// the original headers are kept.
const (
	HeaderDeadReason     = "Krules-Dead-Reason"     // one of the Reason* values
	HeaderDeadError      = "Krules-Dead-Error"      // the error text (one line, at most 1 KiB)
	HeaderDeadSubject    = "Krules-Dead-Subject"    // the NATS subject the message was on
	HeaderDeadSequence   = "Krules-Dead-Sequence"   // its stream sequence
	HeaderDeadDeliveries = "Krules-Dead-Deliveries" // how many times it was delivered
)

// Dead-letter reasons.
const (
	// ReasonMalformed: the message is not a valid KRules CloudEvent; it was
	// never handed to the App.
	ReasonMalformed = "malformed"
	// ReasonHandlerError: the handlers failed on the last allowed delivery.
	ReasonHandlerError = "handler-error"
	// ReasonMaxDeliveries: the message was delivered more than MaxDeliver
	// times without an ack or a nak (the workers handling it died), and was
	// not handled again.
	ReasonMaxDeliveries = "max-deliveries"
)

// ErrShutdownTimeout is returned by Run when handlers were still running at
// the shutdown deadline; their events were not acked and will be
// redelivered (see Worker.Run).
var ErrShutdownTimeout = errors.New("worker shutdown deadline exceeded")

// ErrConsumerMismatch is returned by NewWorker when the group's durable
// consumers already exist with other settings than this worker's (AckWait,
// or settings changed outside krules: MaxAckPending, filter, ack policy,
// MaxDeliver). All workers of a group must use the same AckWait: a worker
// that silently changed it would shorten the lease of the others and make
// the server hand their running events to a second worker. To change the
// AckWait of a group, stop its workers and delete its consumers
// ("<group>-p<k>") or start a new Group.
var ErrConsumerMismatch = errors.New("worker group consumer exists with different settings")

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Stream to consume; required, created by EnsureStream.
	Stream string
	// Group names the worker group: workers with the same Stream and Group
	// share the work (one durable consumer "<Group>-p<k>" per partition k).
	// Default DefaultGroup.
	Group string
	// AckWait is how long a delivered event may stay unacknowledged before
	// the server delivers it again, and the TTL of the group's partition
	// leases (renewed every AckWait/3). The worker's heartbeats extend it
	// for the events it holds, so it bounds how long a dead worker holds
	// its partitions: they are taken over about AckWait after its last
	// renewal and resume about AckWait after its last heartbeat. It is a
	// setting of the group's consumers and lease bucket: every worker of a
	// group must use the same value (else NewWorker fails with
	// ErrConsumerMismatch). Default DefaultAckWait.
	AckWait time.Duration
	// MaxDeliver is how many deliveries (tries) an event gets; on the last
	// one a failure sends it to the dead-letter subject (and an event
	// delivered more often than that without ever finishing goes there
	// too). A retry in the event's lane counts as a delivery, and so does
	// every delivery by the server, not only failed ones: an event a worker
	// gives back (shutdown, rebalance) or holds when it dies is delivered
	// again, and that delivery counts as well. Leave room for the rolling restarts and
	// crashes an event may meet besides its own failures. Default
	// DefaultMaxDeliver (10).
	MaxDeliver int
	// Backoff is the delay before retrying an event whose handlers failed
	// (in its lane: later events of its subject wait), indexed by the
	// failed try (1st failure: Backoff[0]); the last value repeats.
	// Default DefaultBackoff.
	Backoff []time.Duration
	// Idempotent turns on exactly-once effects for writes made through the
	// event's subject in cache mode (see the package doc). Default false.
	Idempotent bool
	// IdempotencyIDs is how many recent event ids the idempotency record of
	// a subject remembers (to recognise an event republished under the same
	// id after the stream's de-duplication window). Default
	// DefaultIdempotencyIDs.
	IdempotencyIDs int
	// ShutdownTimeout bounds how long Run waits for running handlers after
	// its context is cancelled; then their context is cancelled too, and
	// Run returns ErrShutdownTimeout at most ShutdownGrace later, even if a
	// handler ignores its context. Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Concurrency bounds how many events this worker handles at the same
	// time, over all the partitions it owns (events of one subject never
	// run at the same time). Default DefaultConcurrency.
	Concurrency int
	// Logger for delivery problems. Default: the App's logger.
	Logger *slog.Logger
}

// Stats counts what a Worker did. Fields are totals since NewWorker.
type Stats struct {
	Handled      uint64 // events whose handlers succeeded and that were acked
	Failed       uint64 // deliveries whose handlers failed (nak'ed for redelivery or dead-lettered)
	Redelivered  uint64 // deliveries that were not the first of their event
	Duplicates   uint64 // deliveries skipped by the idempotency option (already applied)
	DeadLettered uint64 // events sent to the dead-letter subject
	AckErrors    uint64 // acks (or dead-letter acks) that could not be sent or confirmed (the event may come again)
}

// Worker consumes a stream and emits every event into an App. See the
// package doc for the delivery, ordering and idempotency guarantees.
type Worker struct {
	js     jetstream.JetStream
	app    *krules.App
	cfg    WorkerConfig
	log    *slog.Logger
	parts  int
	epoch  string
	consum []jetstream.Consumer
	kv     jetstream.KeyValue
	leases string // incarnation of the lease bucket (its creation time)
	id     string
	t0     time.Time
	sem    chan struct{} // Concurrency slots

	handled, failed, redelivered, duplicates, dead, ackErrs atomic.Uint64
	running                                                 atomic.Bool

	debug bool // EnvDebug: run a stall watchdog per partition

	// abandon is closed when Run returns past the shutdown deadline.
	abandon chan struct{}

	ownedMu sync.Mutex
	owned   []int

	// parts being run, for the heartbeats.
	pmu    sync.Mutex
	active map[*partition]struct{}
}

// NewWorker checks the stream, creates the group's durable consumers (or
// checks that the existing ones have this worker's settings, else
// ErrConsumerMismatch) and its lease bucket (LeaseBucket), and returns a
// Worker ready to Run. It installs on app a middleware that lets the worker
// see handler errors and panics (they still reach the App's error handler).
func NewWorker(ctx context.Context, js jetstream.JetStream, app *krules.App, cfg WorkerConfig) (*Worker, error) {
	if app == nil {
		return nil, errors.New("krules/nats: NewWorker: nil App")
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if err := validStreamName(cfg.Group); err != nil {
		return nil, fmt.Errorf("krules/nats: group: %w", err)
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.MaxDeliver <= 0 {
		cfg.MaxDeliver = DefaultMaxDeliver
	}
	if len(cfg.Backoff) == 0 {
		cfg.Backoff = DefaultBackoff
	}
	cfg.Backoff = slices.Clone(cfg.Backoff)
	if cfg.IdempotencyIDs <= 0 {
		cfg.IdempotencyIDs = DefaultIdempotencyIDs
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Logger == nil {
		cfg.Logger = app.Logger()
	}
	n, created, err := streamInfo(ctx, js, cfg.Stream)
	if err != nil {
		return nil, err
	}
	w := &Worker{
		js: js, app: app, cfg: cfg, log: cfg.Logger, parts: n, epoch: strconv.FormatInt(created.UnixNano(), 36),
		id: newMemberID(), t0: time.Now(), sem: make(chan struct{}, cfg.Concurrency),
		abandon: make(chan struct{}), active: map[*partition]struct{}{}, debug: debugOn(),
	}
	for k := range n {
		c, err := ensureConsumer(ctx, js, cfg.Stream, jetstream.ConsumerConfig{
			Durable:       fmt.Sprintf("%s-p%d", cfg.Group, k),
			Description:   fmt.Sprintf("krules-go worker group %s, partition %d of %d", cfg.Group, k, n),
			FilterSubject: PartitionSubject(cfg.Stream, k),
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       cfg.AckWait,
			MaxDeliver:    -1, // the worker enforces MaxDeliver itself, dead-lettering
			MaxAckPending: partitionMaxAckPending,
		})
		if err != nil {
			return nil, fmt.Errorf("krules/nats: stream %q, group %q: consumer for partition %d: %w", cfg.Stream, cfg.Group, k, err)
		}
		w.consum = append(w.consum, c)
	}
	var bucketCreated time.Time
	if w.kv, bucketCreated, err = ensureLeaseBucket(ctx, js, cfg.Stream, cfg.Group, cfg.AckWait, 1); err != nil {
		return nil, fmt.Errorf("krules/nats: stream %q, group %q: %w", cfg.Stream, cfg.Group, err)
	}
	w.leases = strconv.FormatInt(bucketCreated.UnixNano(), 36)
	return w, nil
}

// ensureConsumer creates the durable consumer, or returns the existing one
// when the settings the worker group relies on match; otherwise it fails
// with ErrConsumerMismatch and leaves the consumer as it is (overwriting it
// would change the lease of the group's running workers under them). A
// consumer of the earlier layout (MaxAckPending 1, no partition leases) is
// raised to the current MaxAckPending: stop the group's old workers first.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	// Look first: servers before 2.10 treat a create as create-or-update.
	c, err := js.Consumer(ctx, stream, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		c, err = js.CreateConsumer(ctx, stream, want)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			// Created meanwhile by another worker with other settings.
			c, err = js.Consumer(ctx, stream, want.Durable)
		}
	}
	if err != nil {
		return nil, err
	}
	have := c.CachedInfo().Config
	if have.MaxAckPending == 1 && want.MaxAckPending != 1 {
		up := have
		up.MaxAckPending = want.MaxAckPending
		if c, err = js.UpdateConsumer(ctx, stream, up); err != nil {
			return nil, err
		}
		have = c.CachedInfo().Config
	}
	if err := checkConsumer(have, want); err != nil {
		return nil, err
	}
	return c, nil
}

// checkConsumer reports (ErrConsumerMismatch) how an existing consumer's
// settings differ from those the worker group relies on.
func checkConsumer(have, want jetstream.ConsumerConfig) error {
	var diff []string
	if have.AckWait != want.AckWait {
		diff = append(diff, fmt.Sprintf("AckWait %s (this worker: %s)", have.AckWait, want.AckWait))
	}
	if have.MaxAckPending != want.MaxAckPending {
		diff = append(diff, fmt.Sprintf("MaxAckPending %d (want %d)", have.MaxAckPending, want.MaxAckPending))
	}
	if have.FilterSubject != want.FilterSubject || len(have.FilterSubjects) > 0 {
		diff = append(diff, fmt.Sprintf("filter %q %q (want %q)", have.FilterSubject, have.FilterSubjects, want.FilterSubject))
	}
	if have.AckPolicy != want.AckPolicy {
		diff = append(diff, fmt.Sprintf("AckPolicy %s (want %s)", have.AckPolicy, want.AckPolicy))
	}
	if have.MaxDeliver != want.MaxDeliver {
		diff = append(diff, fmt.Sprintf("MaxDeliver %d (want %d)", have.MaxDeliver, want.MaxDeliver))
	}
	if len(diff) > 0 {
		return fmt.Errorf("%w: consumer %s has %s", ErrConsumerMismatch, want.Durable, strings.Join(diff, ", "))
	}
	return nil
}

// Partitions returns the stream's partition count.
func (w *Worker) Partitions() int { return w.parts }

// Owned returns the partitions whose lease this worker holds and pulls
// (sorted; empty before Run and after it returned). For monitoring and
// tests: ownership moves as workers join and leave. Safe for concurrent use.
func (w *Worker) Owned() []int {
	w.ownedMu.Lock()
	defer w.ownedMu.Unlock()
	return slices.Clone(w.owned)
}

// ID returns the worker's member id in its group's lease bucket.
func (w *Worker) ID() string { return w.id }

// Stats returns the worker's counters.
func (w *Worker) Stats() Stats {
	return Stats{
		Handled: w.handled.Load(), Failed: w.failed.Load(), Redelivered: w.redelivered.Load(),
		Duplicates: w.duplicates.Load(), DeadLettered: w.dead.Load(), AckErrors: w.ackErrs.Load(),
	}
}

// Run joins the worker group and consumes the partitions it is given until
// ctx is cancelled, then shuts down gracefully: it stops pulling, lets the
// events it had received run to completion (events waiting for a retry
// delay are handed back at once, in stream order, with a nak), waits up to
// ShutdownTimeout, releases its partition leases, leaves the group and
// returns nil.
//
// At the deadline it cancels the handlers' context and returns an error
// wrapping ErrShutdownTimeout, at most ShutdownGrace later, whether or not
// the handlers returned. Their events are neither committed nor acked: they
// are handed back (nak, in stream order) so that the next owner of the
// partition gets them first. A handler that ignores its context keeps
// running in the background after Run returned; when it finishes, its
// writes are not committed through the event's subject and its event is not
// acked — side effects it made by other means happen anyway (at least once).
//
// Run returns early with an error if the connection is closed or a
// consumer disappears. Run may be called once.
func (w *Worker) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("krules/nats: Worker.Run called twice")
	}
	// Handlers get a context that survives ctx's cancellation until the
	// shutdown deadline.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()

	var mu sync.Mutex // guards errs
	var errs []error
	fatal := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		stopLoops() // a fatal error stops the whole worker
	}
	forced := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); w.coordinate(loopCtx, hctx, forced, fatal) }()
	go w.renewLoop(loopCtx, done)
	go w.heartbeats(hctx, done)

	var timedOut bool
	select {
	case <-done:
	case <-loopCtx.Done():
		t := time.NewTimer(w.cfg.ShutdownTimeout)
		select {
		case <-done:
			t.Stop()
		case <-t.C:
			timedOut = true
			hcancel() // also stops the heartbeats of the running events
			close(forced)
			grace := time.NewTimer(ShutdownGrace)
			select {
			case <-done:
			case <-grace.C:
				w.log.Error("krules/nats: handlers still running after the shutdown deadline; returning without them (their events will be redelivered)",
					"stream", w.cfg.Stream, "timeout", w.cfg.ShutdownTimeout)
			}
			grace.Stop()
		}
	}
	close(w.abandon)
	mu.Lock()
	err := errors.Join(errs...)
	mu.Unlock()
	if timedOut {
		err = errors.Join(fmt.Errorf("krules/nats: stream %q: %w (%s)", w.cfg.Stream, ErrShutdownTimeout, w.cfg.ShutdownTimeout), err)
	}
	return err
}

// item is an event received by a partition owner and not yet acked.
type item struct {
	m       jetstream.Msg // the latest delivery (a redelivery replaces it)
	seq     uint64        // stream sequence
	dseq    uint64        // consumer (delivery) sequence of its first delivery to this owner
	md      *jetstream.MsgMetadata
	e       *event.Event
	payload krules.Payload
	bad     error // not a valid KRules CloudEvent
	// acked: its ack (or dead-letter ack) is sent or about to be, so the
	// server may no longer count it as pending (allInHand). Guarded by p.mu.
	acked bool
}

// lane runs the events of one subject of a partition, in order.
type lane struct {
	key  string
	q    []*item
	dead bool // abandoned: holds its events, runs nothing
}

// errAbandon: the event is not finished here (lease lost, shutdown): it is
// neither acked nor nak'ed by its lane.
var errAbandon = errors.New("abandoned")

// dispatch puts a delivery into the lane of its subject.
func (w *Worker) dispatch(p *partition, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		w.log.Error("krules/nats: message without JetStream metadata; terminated", "subject", m.Subject(), "error", err)
		_ = m.Term()
		return
	}
	p.mu.Lock()
	if p.dseq != 0 && md.Sequence.Consumer != p.dseq+1 {
		// A delivery did not reach us (lost in flight at a reconnect, or
		// sent to a previous owner's pull): it comes again after AckWait.
		// Hold everything from here until it did (watchGate), so that
		// nothing of its subject overtakes it.
		if p.dbg != nil {
			p.dbg.gaps.Add(1)
		}
		if !p.gated {
			p.gated = true
			select {
			case p.gates <- struct{}{}: // wake watchGate
			default:
			}
		}
	}
	p.dseq = md.Sequence.Consumer
	if _, ok := p.fin[md.Sequence.Stream]; ok {
		// A copy of an event this owner finished: the server sent it
		// again before it had our ack (its AckWait lapsed while it
		// waited behind a slow event in the client's pull buffer, where
		// it gets no heartbeat). Running it again would run it after
		// later events of its subject: ack it (again) and drop it.
		p.rseq = md.Sequence.Consumer
		p.mu.Unlock()
		if w.valid(p) {
			_ = m.Ack()
		}
		return
	}
	if it, ok := p.held[md.Sequence.Stream]; ok {
		// A redelivery of an event we hold (its AckWait lapsed): keep one
		// copy, acked through the latest delivery.
		it.m = m
		p.rseq = md.Sequence.Consumer
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	it := &item{m: m, seq: md.Sequence.Stream, dseq: md.Sequence.Consumer, md: md}
	e := new(event.Event)
	// json.Valid, then the event's own decoder: json.Unmarshal would scan
	// the text once more (its skip of the value it hands to UnmarshalJSON)
	// and costs ~30% more than this in the profile.
	// json.Valid keeps the refusal of what is not JSON (the event's
	// decoder is laxer: trailing text, for one).
	data := m.Data()
	switch {
	case !json.Valid(data):
		var v any
		err := json.Unmarshal(data, &v) // for its error text
		it.bad = fmt.Errorf("%w: %v", cloudevents.ErrMalformed, err)
	default:
		if err := e.UnmarshalJSON(data); err != nil {
			it.bad = fmt.Errorf("%w: %v", cloudevents.ErrMalformed, err)
			break
		}
		if err := cloudevents.Check(e); err != nil {
			it.bad = err
		} else if it.payload, err = cloudevents.Payload(e); err != nil {
			it.bad = err
		}
	}
	it.e = e
	if p.dbg != nil {
		p.dbg.dispatch.Store(time.Now().UnixNano())
	}
	p.mu.Lock()
	p.held[it.seq] = it
	p.rseq = md.Sequence.Consumer
	if p.gated {
		p.gate = append(p.gate, it)
		p.mu.Unlock()
		return
	}
	start := p.enqueueLocked(it)
	p.mu.Unlock()
	if start != nil {
		go w.runLane(p, start)
	}
}

// enqueueLocked appends the item to the lane of its subject and returns the
// lane if it is new (the caller starts it). p.mu is held.
func (p *partition) enqueueLocked(it *item) *lane {
	key := ""
	if it.bad == nil {
		key = "s:" + it.e.Subject()
	}
	l, ok := p.lanes[key]
	if !ok {
		l = &lane{key: key}
		p.lanes[key] = l
		p.wg.Add(1)
	}
	l.q = append(l.q, it) // a dead lane keeps it, unhandled
	if ok {
		return nil
	}
	return l
}

// openGate ends the start of a partition's ownership: once the server has
// nothing of the partition delivered that this worker does not hold (every
// event a previous owner left unacknowledged has been redelivered to us),
// the events received so far go to their lanes in stream order.
func (w *Worker) openGate(p *partition) {
	p.mu.Lock()
	gate := p.gate
	p.gate, p.gated = nil, false
	if p.dbg != nil {
		p.dbg.opened.Store(time.Now().UnixNano())
	}
	slices.SortFunc(gate, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	var start []*lane
	for _, it := range gate {
		if l := p.enqueueLocked(it); l != nil {
			start = append(start, l)
		}
	}
	p.mu.Unlock()
	for _, l := range start {
		go w.runLane(p, l)
	}
}

// runLane handles the lane's events one after the other; it ends when the
// lane is empty. An event that is abandoned stops the lane: the events after
// it stay held (handed back, or left to the next owner), never overtaking it.
func (w *Worker) runLane(p *partition, l *lane) {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if len(l.q) == 0 {
			delete(p.lanes, l.key)
			p.mu.Unlock()
			return
		}
		it := l.q[0]
		p.mu.Unlock()
		if err := w.process(p, it); err != nil {
			// Abandoned: the rest of the lane — and whatever of its
			// subject comes later — stays held, unhandled (handed back,
			// or left to the next owner).
			p.mu.Lock()
			l.dead = true
			p.mu.Unlock()
			return
		}
		if p.dbg != nil {
			p.dbg.done.Store(time.Now().UnixNano())
		}
		p.mu.Lock()
		delete(p.held, it.seq)
		p.finishedLocked(it.seq)
		l.q = l.q[1:]
		wake := len(p.held) == resumeHeld
		p.mu.Unlock()
		if wake {
			select {
			case p.room <- struct{}{}:
			default:
			}
		}
	}
}

// process handles one event to its end: acked (handled, duplicate, dead
// letter) or abandoned (errAbandon). A failure is retried here, in its lane,
// after the Backoff delay, so nothing of its subject overtakes it.
func (w *Worker) process(p *partition, it *item) error {
	ctx := p.hctx
	for attempt := uint64(0); ; attempt++ {
		if !w.valid(p) || ctx.Err() != nil {
			return errAbandon
		}
		deliveries := it.md.NumDelivered + attempt
		if deliveries > 1 {
			w.redelivered.Add(1)
		}
		select {
		case w.sem <- struct{}{}:
		case <-ctx.Done():
			return errAbandon
		}
		err := w.handle(ctx, p, it, deliveries)
		<-w.sem
		if err == nil || errors.Is(err, errAbandon) {
			return err
		}
		// Failed.
		w.failed.Add(1)
		if deliveries >= uint64(w.cfg.MaxDeliver) {
			return w.deadLetter(ctx, p, it, deliveries, ReasonHandlerError, err)
		}
		i := min(int(deliveries)-1, len(w.cfg.Backoff)-1)
		d := w.cfg.Backoff[max(i, 0)]
		w.log.Warn("krules/nats: event failed; will be retried", "stream_seq", it.seq, "delivery", deliveries, "delay", d, "error", err)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-p.stop: // released or shutting down: hand it back instead of waiting
			t.Stop()
			return errAbandon
		case <-ctx.Done():
			t.Stop()
			return errAbandon
		}
	}
}

// handle runs one delivery of an event: nil when it is finished (acked,
// duplicate, dead-lettered), errAbandon when it must be left, any other
// error when the handlers (or the commit) failed.
func (w *Worker) handle(ctx context.Context, p *partition, it *item, deliveries uint64) error {
	if it.bad != nil {
		return w.deadLetter(ctx, p, it, deliveries, ReasonMalformed, it.bad)
	}
	e := it.e
	s := w.app.Subject(e.Subject())
	var rec map[string]any
	if w.cfg.Idempotent {
		var applied, stale bool
		var err error
		rec, applied, stale, err = w.applied(ctx, s, e, it.seq, p.epoch)
		if err != nil {
			return fmt.Errorf("read idempotency record: %w", err)
		}
		if stale {
			// A newer owner of the partition applied events of this
			// subject: our lease is gone.
			p.fence()
			return errAbandon
		}
		if applied {
			w.duplicates.Add(1)
			return w.ack(p, it)
		}
	}
	if deliveries > uint64(w.cfg.MaxDeliver) {
		return w.deadLetter(ctx, p, it, deliveries, ReasonMaxDeliveries, fmt.Errorf("delivered %d times without an ack (max %d)", deliveries, w.cfg.MaxDeliver))
	}

	f := &failures{}
	ectx := krules.ObserveErrors(cloudevents.NewContext(ctx, e), func(_ context.Context, ev *krules.Event, handler string, err error) {
		f.add(fmt.Errorf("handler %s of %s: %w", handler, ev, err))
	})
	opts := append([]krules.EmitOption{
		krules.WithMeta(cloudevents.MetaCloudEvent, e),
		krules.WithMeta(MetaStream, w.cfg.Stream),
		krules.WithMeta(MetaSequence, it.seq),
		krules.WithMeta(MetaDeliveries, deliveries),
	}, cloudevents.TraceOptions(e)...) // traceparent/tracestate metadata
	ectx, opts = feedEmit(ectx, e, opts) // change feed hook (feed.go): depth, Extra, version
	err := w.app.Emit(ectx, e.Type(), s, it.payload, opts...)
	err = errors.Join(err, f.err())
	if ctx.Err() != nil || !w.valid(p) {
		// Past the shutdown deadline, or the lease is gone: another worker
		// may have the event already; commit nothing.
		return errAbandon
	}
	if err == nil && w.cfg.Idempotent {
		_, _, err = s.SetExt(ctx, AppliedKey, w.record(rec, e, it.seq, p.epoch))
	}
	if err == nil {
		if !w.valid(p) {
			return errAbandon
		}
		// Commit the subject's cache: the handlers' cached writes and, with
		// Idempotent, the record, in one atomic write.
		err = s.Store(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			return errAbandon
		}
		return err
	}
	w.handled.Add(1)
	if testHookBeforeAck != nil {
		testHookBeforeAck()
	}
	return w.ack(p, it)
}

// testHookBeforeAck is set by tests (export_test.go) to stall a worker
// between commit and ack.
var testHookBeforeAck func()

// ack acknowledges without waiting for the server's confirmation (a lost ack
// makes the event come again after AckWait, to the partition's owner, which
// recognises it if it still holds it, or with the idempotency option). A
// worker that lost the partition's lease does not ack (errAbandon). An ack
// that cannot be sent (connection closed) counts in Stats.AckErrors.
func (w *Worker) ack(p *partition, it *item) error {
	if !w.valid(p) {
		return errAbandon
	}
	p.mu.Lock()
	m := it.m
	it.acked = true
	p.mu.Unlock()
	if err := m.Ack(); err != nil {
		w.ackErrs.Add(1)
		w.log.Warn("krules/nats: ack failed; the event may be delivered again", "stream_seq", it.seq, "error", err)
	}
	return nil
}

// deadLetter publishes the message to the dead-letter subject with the
// reason and error, then acks it. If the publish fails the event is retried
// in its lane after the first backoff delay (errAbandon if the lease or
// the worker goes meanwhile) so that nothing is lost.
func (w *Worker) deadLetter(ctx context.Context, p *partition, it *item, deliveries uint64, reason string, cause error) error {
	for {
		if !w.valid(p) {
			return errAbandon
		}
		p.mu.Lock()
		m := it.m
		p.mu.Unlock()
		dl := natsgo.NewMsg(DeadLetterSubject(w.cfg.Stream))
		for k, v := range m.Headers() {
			if strings.HasPrefix(k, "Nats-") {
				continue
			}
			dl.Header[k] = slices.Clone(v)
		}
		text := truncateUTF8(strings.Join(strings.Fields(cause.Error()), " "), maxDeadErrorBytes)
		dl.Header.Set(HeaderDeadReason, reason)
		dl.Header.Set(HeaderDeadError, text)
		dl.Header.Set(HeaderDeadSubject, m.Subject())
		dl.Header.Set(HeaderDeadSequence, strconv.FormatUint(it.seq, 10))
		dl.Header.Set(HeaderDeadDeliveries, strconv.FormatUint(deliveries, 10))
		dl.Data = m.Data()
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.AckWait/3)
		// The msg id makes a repeated dead-lettering (crash before the ack) a no-op.
		id := fmt.Sprintf("dead:%s:%d", w.cfg.Stream, it.seq)
		_, err := w.js.PublishMsg(pctx, dl, jetstream.WithMsgID(id))
		if err == nil {
			w.dead.Add(1)
			w.log.Warn("krules/nats: event dead-lettered", "stream_seq", it.seq, "reason", reason, "error", text)
			if !w.valid(p) {
				cancel()
				return errAbandon
			}
			p.mu.Lock()
			it.acked = true
			p.mu.Unlock()
			if err := m.DoubleAck(pctx); err != nil {
				w.ackErrs.Add(1)
			}
			cancel()
			return nil
		}
		cancel()
		w.log.Error("krules/nats: dead-letter publish failed; retrying", "stream_seq", it.seq, "reason", reason, "error", err)
		t := time.NewTimer(w.cfg.Backoff[0])
		select {
		case <-t.C:
		case <-p.stop:
			t.Stop()
			return errAbandon
		case <-ctx.Done():
			t.Stop()
			return errAbandon
		}
	}
}

// maxDeadErrorBytes bounds the Krules-Dead-Error header.
const maxDeadErrorBytes = 1024

// truncateUTF8 returns the longest prefix of s of at most n bytes that does
// not split a UTF-8 sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// heartbeats tells the server every AckWait/3 that the events the worker
// holds (running, waiting in their lane, or waiting for a retry) are still
// being worked on — one ticker for all of them —, until done is closed or
// ctx (the handlers' context) is cancelled at the shutdown deadline; then
// their AckWait lapses. Events of a partition whose lease is no longer
// valid get no heartbeat.
func (w *Worker) heartbeats(ctx context.Context, done <-chan struct{}) {
	ackWait := w.cfg.AckWait
	if len(w.consum) > 0 {
		if a := w.consum[0].CachedInfo().Config.AckWait; a > 0 {
			ackWait = a
		}
	}
	every := ackWait / 3
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var batch []jetstream.Msg
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			batch = batch[:0]
			w.pmu.Lock()
			for p := range w.active {
				if p.lost.Load() {
					continue
				}
				p.mu.Lock()
				for _, it := range p.held {
					batch = append(batch, it.m)
				}
				p.mu.Unlock()
			}
			w.pmu.Unlock()
			for _, m := range batch {
				if ctx.Err() != nil {
					return
				}
				if err := m.InProgress(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
					w.log.Warn("krules/nats: in-progress heartbeat failed", "subject", m.Subject(), "error", err)
				}
			}
		}
	}
}

// applied reads the subject's idempotency record (loading the subject into
// the handle's cache, which the handlers then use) and reports whether the
// event was already applied: same stream incarnation and a sequence not
// beyond the recorded one, or an id among the recent ones. stale reports
// that the record was written under a newer lease of the partition than
// lease (same lease bucket): this worker lost the partition.
func (w *Worker) applied(ctx context.Context, s *krules.Subject, e *event.Event, seq, lease uint64) (all map[string]any, applied, stale bool, err error) {
	v, err := s.GetExt(ctx, AppliedKey, krules.Default(nil))
	if err != nil {
		return nil, false, false, err
	}
	all, _ = v.(map[string]any)
	rec, _ := all[w.recordKey()].(map[string]any)
	if rec == nil {
		return all, false, false, nil
	}
	if rec["leases"] == w.leases {
		if l, ok := rec["lease"].(int64); ok && uint64(l) > lease {
			return all, false, true, nil
		}
	}
	if rec["epoch"] == w.epoch {
		if last, ok := rec["seq"].(int64); ok && uint64(last) >= seq {
			return all, true, false, nil
		}
	}
	if ids, ok := rec["ids"].([]any); ok && slices.Contains(ids, any(e.ID())) {
		return all, true, false, nil
	}
	return all, false, false, nil
}

// record returns the updated idempotency record of a subject.
func (w *Worker) record(all map[string]any, e *event.Event, seq, lease uint64) map[string]any {
	out := make(map[string]any, len(all)+1)
	for k, v := range all {
		out[k] = v
	}
	var ids []any
	if rec, ok := all[w.recordKey()].(map[string]any); ok {
		if old, ok := rec["ids"].([]any); ok {
			ids = old
		}
	}
	ids = append(slices.Clone(ids), e.ID())
	if len(ids) > w.cfg.IdempotencyIDs {
		ids = ids[len(ids)-w.cfg.IdempotencyIDs:]
	}
	out[w.recordKey()] = map[string]any{"epoch": w.epoch, "seq": int64(seq), "ids": ids, "leases": w.leases, "lease": int64(lease)}
	return out
}

// recordKey is the key of this worker group's entry in the idempotency
// record: "<stream>/<group>", so that two groups consuming one stream each
// apply every event once (neither takes the other's events as duplicates).
func (w *Worker) recordKey() string { return w.cfg.Stream + "/" + w.cfg.Group }

// failures collects the errors of the handlers of one delivery (including
// the handlers of events they emit with their ctx).
type failures struct {
	mu   sync.Mutex
	errs []error
}

func (f *failures) add(err error) {
	f.mu.Lock()
	f.errs = append(f.errs, err)
	f.mu.Unlock()
}

func (f *failures) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}
