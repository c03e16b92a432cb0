package nats

import (
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
	// the server gives it to another worker. A running handler extends it
	// (the worker sends in-progress heartbeats every AckWait/3), so it
	// bounds how long a dead worker holds its partitions. It is a setting
	// of the group's consumers: every worker of a group must use the same
	// value (else NewWorker fails with ErrConsumerMismatch). Default
	// DefaultAckWait.
	AckWait time.Duration
	// MaxDeliver is how many deliveries an event gets; on the last one a
	// failure sends it to the dead-letter subject (and an event delivered
	// more often than that without ever finishing goes there too). Every
	// delivery counts, not only failed ones: an event a worker gives back
	// at shutdown (received but not started, or still running at the
	// ShutdownTimeout) or holds when it dies is delivered again, and that
	// delivery counts as well. Leave room for the rolling restarts and
	// crashes an event may meet besides its own failures. Default
	// DefaultMaxDeliver (10).
	MaxDeliver int
	// Backoff is the delay before redelivering an event whose handlers
	// failed, indexed by the failed delivery (1st failure: Backoff[0]); the
	// last value repeats. Default DefaultBackoff.
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

	handled, failed, redelivered, duplicates, dead, ackErrs atomic.Uint64
	running                                                 atomic.Bool

	// inflight holds the deliveries being handled; one ticker (Run's
	// heartbeat loop) sends their in-progress heartbeats.
	mu       sync.Mutex
	inflight map[jetstream.Msg]struct{}
}

// NewWorker checks the stream, creates the group's durable consumers (or
// checks that the existing ones have this worker's settings, else
// ErrConsumerMismatch) and returns a Worker ready to Run. It installs on app a
// middleware that lets the worker see handler errors and panics (they
// still reach the App's error handler).
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
	if cfg.Logger == nil {
		cfg.Logger = app.Logger()
	}
	n, created, err := streamInfo(ctx, js, cfg.Stream)
	if err != nil {
		return nil, err
	}
	w := &Worker{js: js, app: app, cfg: cfg, log: cfg.Logger, parts: n, epoch: strconv.FormatInt(created.UnixNano(), 36)}
	for k := range n {
		c, err := ensureConsumer(ctx, js, cfg.Stream, jetstream.ConsumerConfig{
			Durable:       fmt.Sprintf("%s-p%d", cfg.Group, k),
			Description:   fmt.Sprintf("krules-go worker group %s, partition %d of %d", cfg.Group, k, n),
			FilterSubject: PartitionSubject(cfg.Stream, k),
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       cfg.AckWait,
			MaxDeliver:    -1, // the worker enforces MaxDeliver itself, dead-lettering
			MaxAckPending: 1,  // one event of the partition in flight, group-wide
		})
		if err != nil {
			return nil, fmt.Errorf("krules/nats: stream %q, group %q: consumer for partition %d: %w", cfg.Stream, cfg.Group, k, err)
		}
		w.consum = append(w.consum, c)
	}
	return w, nil
}

// ensureConsumer creates the durable consumer, or returns the existing one
// when the settings the worker group relies on match; otherwise it fails
// with ErrConsumerMismatch and leaves the consumer as it is (overwriting it
// would change the lease of the group's running workers under them).
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
	if err := checkConsumer(c.CachedInfo().Config, want); err != nil {
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

// Stats returns the worker's counters.
func (w *Worker) Stats() Stats {
	return Stats{
		Handled: w.handled.Load(), Failed: w.failed.Load(), Redelivered: w.redelivered.Load(),
		Duplicates: w.duplicates.Load(), DeadLettered: w.dead.Load(), AckErrors: w.ackErrs.Load(),
	}
}

// Run consumes until ctx is cancelled, then shuts down gracefully: it stops
// taking events, hands events it had received but not started back to the
// server (nak, so another worker takes them at once), waits for running
// handlers up to ShutdownTimeout and returns nil.
//
// At the deadline it cancels the handlers' context and returns an error
// wrapping ErrShutdownTimeout, at most ShutdownGrace later, whether or not
// the handlers returned. Their events are neither committed nor acked: the
// worker stops their in-progress heartbeats, so the server hands each of
// them to another worker after AckWait (at once if the handler honours its
// context: it is nak'ed). A handler that ignores its context keeps running
// in the background after Run returned; when it finishes, its writes are
// not committed through the event's subject and its event is nak'ed —
// side effects it made by other means happen anyway (at least once).
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

	var wg sync.WaitGroup
	var mu sync.Mutex // guards errs: an abandoned loop may still write
	var errs []error
	for _, c := range w.consum {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.consume(loopCtx, hctx, c); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				stopLoops() // a fatal error stops the whole worker
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
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
	mu.Lock()
	err := errors.Join(errs...)
	mu.Unlock()
	if timedOut {
		err = errors.Join(fmt.Errorf("krules/nats: stream %q: %w (%s)", w.cfg.Stream, ErrShutdownTimeout, w.cfg.ShutdownTimeout), err)
	}
	return err
}

// consume runs one partition: fetch one event, handle it, ack it, repeat.
func (w *Worker) consume(loopCtx, hctx context.Context, c jetstream.Consumer) error {
	it, err := c.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("krules/nats: consumer %s: %w", c.CachedInfo().Name, err)
	}
	// On shutdown, stop pulling at once (even while a handler runs), so that
	// an event given back with a nak cannot come back to this worker.
	loopDone := make(chan struct{})
	defer close(loopDone)
	go func() {
		select {
		case <-loopCtx.Done():
			it.Drain()
		case <-loopDone:
		}
	}()
	var fatal error
	for {
		m, err := it.Next()
		if err != nil {
			if loopCtx.Err() != nil && errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break // drained
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, natsgo.ErrConnectionClosed) {
				fatal = fmt.Errorf("krules/nats: consumer %s: %w", c.CachedInfo().Name, err)
				break
			}
			w.log.Warn("krules/nats: fetch failed; retrying", "consumer", c.CachedInfo().Name, "error", err)
			continue
		}
		if loopCtx.Err() != nil {
			// Received but not started: give it back at once.
			_ = m.Nak()
			continue
		}
		w.handle(hctx, m)
	}
	it.Stop()
	return fatal
}

// handle processes one delivery. Every path ends in exactly one of: ack,
// nak (with delay), or dead letter + ack.
func (w *Worker) handle(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		w.log.Error("krules/nats: message without JetStream metadata; terminated", "subject", m.Subject(), "error", err)
		_ = m.Term()
		return
	}
	if md.NumDelivered > 1 {
		w.redelivered.Add(1)
	}
	e := new(event.Event)
	if err := json.Unmarshal(m.Data(), e); err != nil {
		w.deadLetter(ctx, m, md, ReasonMalformed, fmt.Errorf("%w: %v", cloudevents.ErrMalformed, err))
		return
	}
	if err := cloudevents.Check(e); err != nil {
		w.deadLetter(ctx, m, md, ReasonMalformed, err)
		return
	}
	payload, err := cloudevents.Payload(e)
	if err != nil {
		w.deadLetter(ctx, m, md, ReasonMalformed, err)
		return
	}

	w.track(m)
	defer w.untrack(m)

	s := w.app.Subject(e.Subject())
	var rec map[string]any
	if w.cfg.Idempotent {
		var applied bool
		rec, applied, err = w.applied(ctx, s, e, md.Sequence.Stream)
		if err != nil {
			w.retry(ctx, m, md, fmt.Errorf("read idempotency record: %w", err))
			return
		}
		if applied {
			w.duplicates.Add(1)
			w.ack(ctx, m, e)
			return
		}
	}
	if md.NumDelivered > uint64(w.cfg.MaxDeliver) {
		w.deadLetter(ctx, m, md, ReasonMaxDeliveries, fmt.Errorf("delivered %d times without an ack (max %d)", md.NumDelivered, w.cfg.MaxDeliver))
		return
	}

	f := &failures{}
	ectx := krules.ObserveErrors(cloudevents.NewContext(ctx, e), func(_ context.Context, ev *krules.Event, handler string, err error) {
		f.add(fmt.Errorf("handler %s of %s: %w", handler, ev, err))
	})
	opts := append([]krules.EmitOption{
		krules.WithMeta(cloudevents.MetaCloudEvent, e),
		krules.WithMeta(MetaStream, w.cfg.Stream),
		krules.WithMeta(MetaSequence, md.Sequence.Stream),
		krules.WithMeta(MetaDeliveries, md.NumDelivered),
	}, cloudevents.TraceOptions(e)...) // traceparent/tracestate metadata
	ectx, opts = feedEmit(ectx, e, opts) // change feed hook (feed.go): depth, Extra, version
	err = w.app.Emit(ectx, e.Type(), s, payload, opts...)
	err = errors.Join(err, f.err())
	if err == nil && ctx.Err() != nil {
		// Past the shutdown deadline: Run has given the event up (its lease
		// lapses, another worker may have it already); do not commit.
		err = ctx.Err()
	}
	if err == nil && w.cfg.Idempotent {
		_, _, err = s.SetExt(ctx, AppliedKey, w.record(rec, e, md.Sequence.Stream))
	}
	if err == nil {
		// Commit the subject's cache: the handlers' cached writes and, with
		// Idempotent, the record, in one atomic write.
		err = s.Store(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			// Shutdown deadline: give the event back at once.
			_ = m.Nak()
			return
		}
		w.retry(ctx, m, md, err)
		return
	}
	w.handled.Add(1)
	if testHookBeforeAck != nil {
		testHookBeforeAck()
	}
	w.ack(ctx, m, e)
}

// testHookBeforeAck is set by tests (export_test.go) to stall a worker
// between commit and ack.
var testHookBeforeAck func()

// ack acknowledges without waiting for the server's confirmation: the
// partition's next event is delivered only once the server has processed
// the ack (MaxAckPending 1), so waiting here would add a round trip per
// event and guard nothing — an ack that is lost makes the event come again
// after AckWait, confirmed or not. An ack that cannot be sent (connection
// closed) counts in Stats.AckErrors.
func (w *Worker) ack(_ context.Context, m jetstream.Msg, e *event.Event) {
	if err := m.Ack(); err != nil {
		w.ackErrs.Add(1)
		w.log.Warn("krules/nats: ack not confirmed; the event may be delivered again", "event", e.Type(), "id", e.ID(), "subject", e.Subject(), "error", err)
	}
}

func (w *Worker) retry(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, err error) {
	w.failed.Add(1)
	if md.NumDelivered >= uint64(w.cfg.MaxDeliver) {
		w.deadLetter(ctx, m, md, ReasonHandlerError, err)
		return
	}
	i := min(int(md.NumDelivered)-1, len(w.cfg.Backoff)-1)
	d := w.cfg.Backoff[max(i, 0)]
	w.log.Warn("krules/nats: event failed; will be redelivered", "stream_seq", md.Sequence.Stream, "delivery", md.NumDelivered, "delay", d, "error", err)
	if nerr := m.NakWithDelay(d); nerr != nil {
		w.log.Warn("krules/nats: nak failed; the event comes back after AckWait", "error", nerr)
	}
}

// deadLetter publishes the message to the dead-letter subject with the
// reason and error, then acks it. If the publish fails the message is
// nak'ed with the first backoff delay so that nothing is lost.
func (w *Worker) deadLetter(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, reason string, cause error) {
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
	dl.Header.Set(HeaderDeadSequence, strconv.FormatUint(md.Sequence.Stream, 10))
	dl.Header.Set(HeaderDeadDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	dl.Data = m.Data()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.AckWait)
	defer cancel()
	// The msg id makes a repeated dead-lettering (crash before the ack) a no-op.
	id := fmt.Sprintf("dead:%s:%d", w.cfg.Stream, md.Sequence.Stream)
	if _, err := w.js.PublishMsg(pctx, dl, jetstream.WithMsgID(id)); err != nil {
		w.log.Error("krules/nats: dead-letter publish failed; event will be redelivered", "stream_seq", md.Sequence.Stream, "reason", reason, "error", err)
		_ = m.NakWithDelay(w.cfg.Backoff[0])
		return
	}
	w.dead.Add(1)
	w.log.Warn("krules/nats: event dead-lettered", "stream_seq", md.Sequence.Stream, "reason", reason, "error", text)
	if err := m.DoubleAck(pctx); err != nil {
		w.ackErrs.Add(1)
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

// heartbeats tells the server every AckWait/3 that the deliveries being
// handled are still being worked on — one ticker for all of them —, until
// done is closed or ctx (the handlers' context) is cancelled at the
// shutdown deadline; then their leases lapse and the server hands them to
// another worker after AckWait. The period follows the consumers' AckWait
// (the lease the server applies; the same for all of them, see
// ErrConsumerMismatch), not only this worker's configuration.
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
			w.mu.Lock()
			for m := range w.inflight {
				batch = append(batch, m)
			}
			w.mu.Unlock()
			for _, m := range batch {
				if ctx.Err() != nil {
					return
				}
				if err := m.InProgress(); err != nil {
					w.log.Warn("krules/nats: in-progress heartbeat failed", "subject", m.Subject(), "error", err)
				}
			}
		}
	}
}

func (w *Worker) track(m jetstream.Msg) {
	w.mu.Lock()
	if w.inflight == nil {
		w.inflight = map[jetstream.Msg]struct{}{}
	}
	w.inflight[m] = struct{}{}
	w.mu.Unlock()
}

func (w *Worker) untrack(m jetstream.Msg) {
	w.mu.Lock()
	delete(w.inflight, m)
	w.mu.Unlock()
}

// applied reads the subject's idempotency record (loading the subject into
// the handle's cache, which the handlers then use) and reports whether the
// event was already applied: same stream incarnation and a sequence not
// beyond the recorded one, or an id among the recent ones.
func (w *Worker) applied(ctx context.Context, s *krules.Subject, e *event.Event, seq uint64) (map[string]any, bool, error) {
	v, err := s.GetExt(ctx, AppliedKey, krules.Default(nil))
	if err != nil {
		return nil, false, err
	}
	all, _ := v.(map[string]any)
	rec, _ := all[w.recordKey()].(map[string]any)
	if rec == nil {
		return all, false, nil
	}
	if rec["epoch"] == w.epoch {
		if last, ok := rec["seq"].(int64); ok && uint64(last) >= seq {
			return all, true, nil
		}
	}
	if ids, ok := rec["ids"].([]any); ok && slices.Contains(ids, any(e.ID())) {
		return all, true, nil
	}
	return all, false, nil
}

// record returns the updated idempotency record of a subject.
func (w *Worker) record(all map[string]any, e *event.Event, seq uint64) map[string]any {
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
	out[w.recordKey()] = map[string]any{"epoch": w.epoch, "seq": int64(seq), "ids": ids}
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
