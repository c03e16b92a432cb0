// Package feed is the transactional change feed of KRules: every committed
// property change reaches the handlers of worker processes, in per-subject
// commit order, with no window in which a crash loses it.
//
// # How it works
//
// A backend in feed mode writes a change record (storage.Change) in the
// same atomic operation as every effective change of a default property —
// NoCache Set (plain values, built-in operations, update functions),
// Delete, the batch of Store — and for every Flush:
//
//	redis.Config{ChangeFeed: true}       XADD to the stream "f:<prefix>changes" inside the write's Lua script
//	postgres.Config{ChangeFeed: true}    a row of <table>_feed in the write's statement or transaction
//	bolt.Config{ChangeFeed: true}        a key of the bucket "\x00feed" in the write's bbolt transaction
//	memory.New(memory.WithChangeFeed())  a slice, under the subject's lock (tests, one process)
//
// A Relay moves the records to a NATS JetStream stream (nats.EnsureStream)
// as the CloudEvents of the krules built-in events, in the wire format of
// nats.Publisher, and removes each record only after JetStream acknowledged
// it. The worker groups of package transport/nats consume that stream as
// any other: a handler of subject-property-changed in any process sees
// PropertyName, OldValue, NewValue, Extra and the subject, as if the Set had
// been local, plus the subject's version in the metadata nats.MetaChangeSeq.
//
//	writer := krules.New(krules.WithStorage(backend)) // backend in feed mode
//	relay, _ := feed.NewRelay(ctx, backend, js, feed.RelayConfig{Stream: "changes"})
//	go relay.Run(ctx)                                 // in one or more processes
//	w, _ := nats.NewWorker(ctx, js, workerApp, nats.WorkerConfig{Stream: "changes"})
//	go w.Run(ctx)                                     // in any number of processes
//
// Create the worker group (NewWorker creates its consumers) before the
// relay publishes: a stream with the default interest retention keeps no
// event for a group that does not exist yet.
//
// # What a record carries
//
// Event type, subject, property, old and new value (Flush: one
// subject-property-deleted per property, default then extended, and a
// subject-deleted with the last content), the write's Extra
// (krules.WithExtra), the subject's version (Seq: +1 per record of the
// subject, in commit order, never reused — the counter outlives a Flush;
// it costs one small entry per subject ever written in feed mode), the
// cascade depth, the trace context (krules.FeedConfig.Trace) and an id,
// which the relay uses as the CloudEvent id and Nats-Msg-Id.
//
// A muted write (krules.Muted) and extended properties write no record;
// neither does a write that leaves the value as it was. Cached writes
// travel when Store commits them: one record per property whose stored
// value changed, with the options of its last cached write (intermediate
// values that were never stored do not travel). The App hands this
// metadata to the backend in the context (storage.WithChange), so the
// storage.Backend interface is unchanged, and the subject data layout
// (Redis hash, PostgreSQL subjects table) is exactly that of a backend
// without the feed: Python KRules reads and writes it as before (its
// writes produce no record).
//
// Redis compares texts: a value rewritten by another program with a
// different JSON spelling of the same value makes a record whose old and
// new values are equal. PostgreSQL compares JSONB values.
//
// # Guarantees
//
//   - Atomic: a change is stored if and only if its record is. A writer
//     killed at any moment leaves no change without a record and no record
//     without a change (TestCrash kills writer processes hundreds of times).
//   - Order: per subject, records are relayed in commit order (Redis: one
//     script per write, the stream order; PostgreSQL: the record is written
//     after the subject's row lock and the version row's lock, so per
//     subject its pos follows commit order; the relay reads the oldest rows
//     and deletes what it published, it never skips a late commit by
//     remembering a "last id"). The relay publishes a subject's records one
//     after another (its next record when JetStream acknowledged the
//     previous one; different subjects in parallel, none waiting for the
//     acks of another) and stops a subject at its first failed publish
//     (the cursor pipeline below: every subject, until it restarts), so
//     JetStream holds them in order; the workers' partitions keep that
//     order to the handlers.
//   - Reading: over a store whose feed order is commit order across
//     subjects (storage.FeedCursor: Redis stream ids, memory) the relay
//     is one continuous pipeline: it reads with a cursor only the records
//     committed after the last one it read (each record is read once),
//     while earlier ones are in flight. PostgreSQL runs the same pipeline
//     with postgres.Backend.ReadNewChanges instead of a cursor: each read
//     leaves out the records it returned that are not yet removed (per
//     subject they come in commit order, which is all the pipeline
//     needs), so a record is read when its NOTIFY arrives, not after the
//     acknowledgements of the records read before it. A new record is
//     published at once unless its subject has one in flight, up to
//     RelayConfig.Batch records unacknowledged; acknowledged records are
//     removed in batches (64, or after 20 ms) while reading and publishing
//     go on (a slow removal pauses reading at 4 x Batch records waiting
//     for it; while anything is in flight a read blocks for 50 ms at
//     most, so a failed publish is retried after the short pause of the
//     doc). An error or a lost lease drops the pipeline: the next start
//     reads the feed from the beginning, and what was published but not
//     yet removed is published again under the same Nats-Msg-Id. Without
//     either (bbolt) the relay works in batches of the oldest records: the
//     removal of a published batch runs while the next batch is read and
//     published; a record read again while its removal runs is skipped,
//     not republished. A batch that emptied the feed (under 32 records) is
//     refilled while JetStream is slow to acknowledge (an ack not in after
//     2 ms: the feed is read again, the new records join the running
//     batch, each behind its own subject's), so a change never waits for
//     the acks of other subjects.
//   - At least once to the stream, once in it: a record published and not
//     yet removed when the relay dies is published again under the same
//     Nats-Msg-Id and dropped by JetStream within the stream's
//     de-duplication window (nats.StreamConfig.Duplicates). Two relays
//     publishing the same records at once (a lease lost while the old
//     holder still runs) keep the order for the same reason.
//   - Delivery to handlers is that of the worker group: at least once;
//     exactly once for cache-mode writes with nats.WorkerConfig.Idempotent.
//     TestCrash checks both on every store: 200 writer processes killed
//     with a plain worker (every committed change handled, in order) and
//     idempotent worker processes killed mid-handling (each change applied
//     exactly once).
//   - A record the relay cannot decode is published to the stream's
//     dead-letter subject (nats.DeadLetterSubject, reason
//     ReasonMalformedRecord and the error in the headers) and removed; it
//     never blocks the feed.
//   - A store or NATS outage pauses the relay (Stats.Errors); it resumes
//     by itself.
//
// # One active relay: the lease
//
// Run a Relay in as many processes as you like; one holds the lease and
// publishes, the others stand by. Redis: a key "f:<prefix>lease" set with
// NX and a TTL (RelayConfig.LeaseTTL, default 5 s), renewed every TTL/3; a
// standby checks every TTL/3, so it takes over at most TTL + TTL/3 after
// the holder died. PostgreSQL: a session advisory lock on the relay's own
// connection, released by the server when that connection ends (a killed
// process: at once; a host cut off: when the server notices the dead
// connection, bounded by its TCP keepalive settings); standbys try every
// TTL/3.
//
// bbolt: only one process can open a bolt file, so the relay runs in the
// process that writes (go relay.Run(ctx) next to the App, on the same
// *bolt.Backend). The lease lives in that Backend's memory: it makes one of
// the process's relays active and the others stand by, with the same TTL
// rules; there is no standby in another process. The records are in the
// file: after a crash of the process, the next process that opens the file
// (and runs a relay) publishes what the dead one had not (TestCrash/bolt).
//
// Waking is by notification: Redis XREAD BLOCK on the stream, PostgreSQL
// LISTEN/NOTIFY (every record's transaction notifies the channel
// postgres.Backend.FeedChannel), bbolt an in-process notification sent by
// every commit that wrote a record. An idle relay makes one blocking call per
// TTL/3 and otherwise sleeps; a busy one over Redis makes one XREAD per
// group of records that arrive together.
//
// # Which handlers run: the policy
//
// With krules.FeedBoth (the default) the writing App runs its own handlers
// synchronously, as without the feed, and the workers run theirs: use it
// when the writer and the workers register different handlers (an API
// process writes, worker processes react). A handler registered in both
// runs twice for one change, once in each; that is asking for it. With
// krules.FeedRemote the writing App runs no handler for the three built-in
// events (krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote})):
// use it in processes that both write and run workers with the same
// handlers, so each change is handled once, by the worker group.
//
// # Cascades and traces across processes
//
// A record carries the cascade depth of its write; the worker emits the
// event at that depth (krules.WithCascadeDepth), so handlers in another
// process continue the count, and a write at or beyond the cascade limit
// is refused with krules.ErrCascadeDepth in feed mode even when no local
// handler matches: a handler loop spanning processes ends there, after the
// limit's number of hops. With FeedConfig.Trace set (for OpenTelemetry,
// middleware/otel.TraceParent) the records carry the write's trace context
// as the CloudEvent traceparent/tracestate, which the worker puts back into
// the event metadata for the otel middleware: one trace from the Set in one
// process to the handler in another.
//
// # Limits
//
//   - Redis Cluster: a feed script touches the subject's hash, the feed
//     stream and the version hash, so they must share a slot: use a Prefix
//     with a hash tag (redis.Config{Prefix: "{myapp}:"}), which puts all
//     of the App's keys on one node. Without it the script fails with
//     CROSSSLOT and nothing is written.
//   - The Redis lease is a TTL lease: a relay stalled longer than its TTL
//     while still running may publish alongside its successor (duplicates
//     are dropped by JetStream, see above).
//   - PostgreSQL: every record's transaction sends a NOTIFY, and PostgreSQL
//     serialises the commits of notifying transactions on one lock; very
//     high write concurrency on one database pays for it.
//   - bbolt: one process (see the lease above); a record costs two more
//     bucket writes in the write's transaction (the fsync, which dominates a
//     durable write, is shared).
package feed
