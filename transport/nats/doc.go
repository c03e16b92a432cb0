// Package nats scales a KRules App out over NATS JetStream: a Publisher
// puts events on a stream as CloudEvents, and a group of Workers — in any
// number of processes sharing one store (Redis, PostgreSQL) — emits them
// into their Apps, with per-subject order, at-least-once delivery,
// redelivery with backoff, dead letters, optional exactly-once effects and
// graceful shutdown.
//
// # Usage
//
// Producer:
//
//	nc, _ := nats.Connect("nats://127.0.0.1:4222")    // reconnects forever
//	js, _ := jetstream.New(nc)
//	_, _ = nats.EnsureStream(ctx, js, nats.StreamConfig{Name: "orders"})
//	pub, _ := nats.NewPublisher(ctx, js, nats.PublisherConfig{Stream: "orders"})
//	id, err := pub.Publish(ctx, "order.created", "order-42", krules.Payload{"amount": 1500})
//
// Or from inside an App: pub.Install(app) publishes every event whose
// metadata has "topic" (krules.WithMeta(nats.MetaTopic, "orders"); policy
// "direct" — the default — runs no local handler, "both" runs them) and
// every event matching PublisherConfig.Patterns.
//
// Worker (run as many processes as you like):
//
//	app := krules.New(krules.WithStorage(redisBackend))
//	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
//		_, _, err := ev.Subject.Set(ctx, "status", "new") // committed by the worker
//		return err                                         // an error means: redeliver later
//	})
//	w, _ := nats.NewWorker(ctx, js, app, nats.WorkerConfig{Stream: "orders"})
//	err := w.Run(ctx) // until ctx is cancelled (SIGTERM), then a graceful shutdown
//
// # Wire format
//
// Each event is one message holding the CloudEvent in structured JSON mode
// (Content-Type application/cloudevents+json, built with
// github.com/cloudevents/sdk-go/v2), with Nats-Msg-Id set to the event id so
// the stream drops a repeated publish within its de-duplication window
// (StreamConfig.Duplicates). The CloudEvent subject is the KRules subject;
// the data is the payload; originid and propertyname extensions and the
// subject's extended properties travel as in package transport/cloudevents,
// and so does the trace context: the "traceparent"/"tracestate" metadata
// (written by middleware/otel's Inject, or given with krules.WithMeta) becomes the CloudEvent extensions
// of those names, and the Worker puts them back into the metadata of the
// event it emits, where the otel middleware (installed on the worker's App)
// continues the producer's trace.
//
// # Per-subject order: partitions
//
// A stream has N partitions (StreamConfig.Partitions, default
// DefaultPartitions = 12, fixed for the stream's life and recorded in its
// description so publishers and workers agree). Each partition is a
// filtered consumer per worker group, and the server's CPU per event grows
// with the number of filtered consumers: take no more partitions than you
// need to spread the subjects over the workers you run (parallelism within
// a worker comes from the lanes, not from partitions). An event of subject s goes to the NATS subject
// "<stream>.p.<k>" with k = FNV-1a-32(s) mod N, so all events of a subject
// are in one partition, in publish order.
//
// Every partition has one durable pull consumer per worker group
// ("<group>-p<k>", MaxAckPending 1000, explicit acks), and exactly one
// worker of the group pulls it at a time: its owner.
//
// # Ownership: partition leases
//
// The workers of a group coordinate in a NATS KV bucket,
// LeaseBucket(stream, group) = "<stream>_leases_<group>" (created by
// NewWorker; TTL = AckWait; it needs nothing newer than nats-server 2.9).
// Every running worker keeps a member key "m.<id>" there, and the owner of
// partition k keeps the lease key "p.<k>", both renewed every AckWait/3. A
// key that is not renewed expires with the TTL. Every worker computes the
// same assignment from the live members (rendezvous hashing bounded to a
// fair share: each member gets the number of partitions divided by the
// number of members, rounded up or down, and a join or a leave moves few
// partitions) and takes the leases of
// its share that are free; a partition that is no longer its share it
// releases: it stops pulling, lets the events it received run to the end
// (an event waiting for a retry delay is handed back at once), hands back
// (nak, in stream order) what it did not finish, and marks the lease free.
// The revision of the lease key when taken is the owner's epoch: it grows
// with every new owner.
//
// Fencing: a worker counts its lease as valid for AckWait - AckWait/5 from
// the moment it sent its last successful renewal; the server cannot expire
// the key before that. Past it, the worker acts on nothing of the partition
// (no handler start, no commit, no ack) until a renewal tells: it succeeded
// (the key never expired, so nobody else took it) or found the key changed
// (the lease is lost for good: the worker stops pulling and leaves the
// events to the new owner). With the idempotency option, the epoch is also
// written into the subject's idempotency record, and a worker that finds a
// newer epoch there stops at once.
//
// A new owner does not trust the server's delivery order: until the server
// counts no more events of the partition as delivered and unacknowledged
// than the new owner holds — that is, until everything a previous owner had
// left (acked late, handed back, or expired after AckWait and redelivered)
// is settled or in its hands — it holds what it receives, then sorts it by
// stream sequence. The same happens when an owner sees a gap in the
// delivery sequence (a delivery lost in flight at a reconnect): nothing of
// the partition goes on until the missing event is back. After a crash the
// partitions of the dead worker are therefore taken over about AckWait
// after its last renewal (key expiry) and resume once its unacknowledged
// events were redelivered (AckWait after its last heartbeat).
//
// # Pipelining: lanes
//
// An owner pulls continuously (up to 128 events requested ahead; it holds
// at most 256 received and unacknowledged events per partition, except
// while it waits for a takeover or a gap to settle, when the consumer's
// MaxAckPending, 1000, bounds it) and runs each subject's events in a
// lane: one after the other, in stream order; different subjects run in
// parallel (WorkerConfig.Concurrency, default 64, over all the partitions
// the worker owns). A pull whose request the server dropped without
// telling the client (nats-server 2.9 does at times, when an event arrives
// as the request expires; the client would wait for it until it missed the
// request's heartbeats, 5 s with the default AckWait) is noticed after 1 s
// without a delivery — the server has events of the partition and no pull
// request of it — and started again. Acks are sent without waiting for a
// confirmation. A failed event holds its lane: it is retried there after the Backoff delay
// and dead-lettered on its MaxDeliver-th failure, and no later event of
// its subject starts before it finished (if the events waiting behind it
// fill the 256, the other subjects of its partition wait as well). One ticker per worker sends the
// in-progress heartbeats (every AckWait/3) of all the events it holds,
// running or waiting in their lanes. Events the client pulled ahead (up to
// 128) but the owner does not hold yet get none: behind a slow event their
// AckWait can lapse and the server send them again. A copy of an event the
// owner already finished (it remembers the last 2,000 of each partition)
// is acked and dropped, not run again after later events of its subject.
//
// Why it stays correct:
//
//   - Failure: retried in its lane; the events behind it wait.
//   - Worker death: its events stay unacknowledged; its leases expire after
//     AckWait; the new owners hold the partition until those events were
//     redelivered, then run them first.
//   - Shutdown: Run stops pulling, lets the received events run to the end
//     (up to WorkerConfig.ShutdownTimeout; events waiting for a retry delay
//     are handed back), hands back what is left in stream order, releases
//     its leases and leaves. A handler still running at the deadline is
//     given up: its context is cancelled, nothing of it is committed or
//     acked, and Run returns ErrShutdownTimeout without waiting for it.
//   - Connection loss: the worker acts on nothing past its lease's validity
//     and goes on only if a renewal shows the lease is still its own.
//
// What it does not cover: a worker frozen (stopped, swapping) longer than
// its lease while a pull request of it is still at the server may receive
// events after another worker took over; and handler effects that do not
// go through the worker's commit (NoCache writes, other subjects, external
// calls) of events that were running when a lease was lost happen again
// when the new owner runs those events (at least once). A lost lease is
// rare (renewals every AckWait/3, validity 4/5 AckWait); keep AckWait well
// above the renewal latency you expect under load.
//
// AckWait belongs to the group's consumers: every worker of a group must
// use the same one. NewWorker refuses (ErrConsumerMismatch) a worker whose
// AckWait differs from the existing consumers' rather than change the lease
// of the running workers; to change it, stop the group and delete its
// consumers, or start a new Group.
//
// KRULES_NATS_DEBUG=1 (EnvDebug) in a worker's environment logs (Warn)
// every owned partition that finished nothing for more than a second
// while its consumer has events pending or unacknowledged, with its state:
// lease, gate, lanes, the last pull and dispatch times and the consumer's
// counters.
//
// # Delivery: at least once
//
// The worker acks an event only after all its handlers — and the handlers of
// the events they emit with their ctx — returned without error or panic,
// and after committing the subject handle's cache (Subject.Store on
// ev.Subject, so cache-mode writes of handlers are saved, and discarded when
// the handlers fail). Handler errors still reach the App's error handler.
// A failed event is redelivered after WorkerConfig.Backoff (default 0.5 s,
// 2 s, 10 s, 30 s); on its MaxDeliver-th failed delivery (default 10) it is
// published to the dead-letter subject "<stream>.dead" (stored in its own
// stream, DeadLetterStream: "<stream>_dead", limits retention, kept until
// deleted unless StreamConfig.DeadLetterMaxAge is set) with headers
// Krules-Dead-Reason (handler-error), Krules-Dead-Error (the error),
// Krules-Dead-Subject, -Sequence and -Deliveries, and acked. An event
// delivered more than MaxDeliver times without ever finishing (its workers
// crash on it) goes there too, reason max-deliveries. A message that is not
// a valid KRules CloudEvent (bad JSON, missing id/type/source/subject, data
// not a JSON object) is dead-lettered at once with reason malformed and the
// parse error; it never reaches the App and never blocks its partition.
//
// MaxDeliver counts deliveries: the server's delivery count of the event
// plus the retries of the current owner. An event given back at a graceful
// shutdown or a rebalance (nak), or held by a worker that died, is
// delivered again, and that delivery counts too (the retries of the
// previous owner do not carry over). An event that meets crashes while it
// also fails can reach the dead letters after fewer than MaxDeliver
// failures of its own, and an event given back more than MaxDeliver times
// is dead-lettered (reason max-deliveries) without being handled again.
// Set MaxDeliver with room for the restarts an event may meet (the
// default, 10, allows several).
//
// # Retention
//
// By default (StreamConfig.Retention = RetentionInterest) the stream deletes
// an event once every worker group (durable consumer) acknowledged it, so
// handled events do not stay on disk. Events published while the stream
// has no worker group are not kept: create the group first (NewWorker
// creates its durable consumers). RetentionLimits keeps an event log
// instead (MaxAge, MaxBytes). The de-duplication window defaults to 5
// minutes, above the span of the default redelivery backoff.
//
// Without the idempotency option an event whose effects were written but
// whose ack was lost (the worker died in between) is handled again.
//
// # Events emitted while handling: deterministic ids
//
// Handlers run with a ctx that carries the delivery (cloudevents.NewContext),
// and every CloudEvent built with that ctx — Publisher.Publish, the
// Publisher's middleware and Patterns (cloudevents.FromKrules), the HTTP
// Dispatcher — gets a deterministic id: a name-based UUID of the incoming
// event's source and id, the emitted event's type and subject, and its
// ordinal among the events of that type and subject built in the delivery.
// When a delivery fails after publishing and the event is redelivered, the
// handlers publish the same events again under the same ids, so the target
// stream drops the copies by Nats-Msg-Id. Guaranteed: one message per
// emitted event as long as the redelivery comes within the target stream's
// duplicate window (StreamConfig.Duplicates, counted from the first
// publish: keep it above the sum of the Backoff delays the redeliveries
// may take, which with the defaults is about 3 minutes for 10 deliveries
// against a default window of 2) and the handlers emit
// deterministically — the same events of each type and subject, in the
// same order, on every delivery (the payload does not enter the id: a
// redelivery that emits a different payload under the same ordinal is
// dropped as a duplicate). Events built with another ctx (for example
// context.Background() in a goroutine) get random ids, as do events built
// outside any delivery.
//
// # Idempotency (WorkerConfig.Idempotent)
//
// With Idempotent, the worker keeps in the event subject's extended
// property "_krules_applied" a record {"<stream>/<group>": {epoch, seq,
// ids, leases, lease}} (one entry per stream and worker group, so that
// several groups consuming one stream each apply every event once): the
// stream incarnation, the stream sequence of the last event applied to the
// subject, the ids of the last IdempotencyIDs CloudEvents applied, and the
// lease bucket's incarnation and the epoch of the partition lease under
// which it was written (a worker that finds a newer epoch stops: fencing). The
// record is read (with the subject, into ev.Subject's cache) before the
// handlers run and written into the same cache after they succeed, and one
// Subject.Store commits handlers' writes and record in one atomic store
// operation (one MULTI in Redis, one transaction in PostgreSQL). Then:
//
//   - death before the commit: nothing of the event was written; it is
//     redelivered and applied;
//   - death after the commit, before the ack: the redelivered event finds its
//     sequence (or its id) in the record and is acked without running the
//     handlers (Stats.Duplicates).
//
// Because events of a subject are applied strictly in stream order, "seq <=
// recorded seq" is exact for redeliveries; the id list also catches an event
// republished under the same CloudEvent id after the stream's de-duplication
// window, as long as fewer than IdempotencyIDs later events of the subject
// came in between.
//
// Guaranteed exactly once: the effects of writes made through ev.Subject in
// cache mode (the default mode of a Set without krules.NoCache) — including
// built-in ops such as krules.Inc, which then apply to the value loaded with
// the subject. Not covered (still at least once): writes with NoCache, writes
// to other subjects, Flush, Store called by a handler itself, and any
// side effect outside the store (HTTP calls, emitted messages). Make those
// idempotent yourself, for example with the event id (cloudevents.FromContext).
// Only one worker group should write a given subject, and nothing outside the
// group should write it while events for it are in flight: the commit writes
// the values computed from the loaded subject.
//
// # Connection loss
//
// Connect sets reconnect-forever options; with them the pull consumers
// resume by themselves after a reconnect, and acks issued while
// disconnected are sent when the connection is back (or the event is
// redelivered after AckWait). Run returns an error only when the connection
// is closed for good or a consumer is deleted. A restart of the NATS server
// (it writes its state on shutdown) loses nothing and keeps the order; a
// server that crashes (SIGKILL, power loss) may forget the acks of its last
// moments and deliver events again that were already handled — after
// later ones of their subject: at least once, which the idempotency option
// recognises (their sequence is not beyond the recorded one).
package nats
