package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/krules-go/krules/storage"
)

// Change feed (Config.ChangeFeed).
//
// Tables, next to the subjects table T (same schema):
//
//	T_feed      pos bigserial PRIMARY KEY, id, subject_name, seq, kind
//	            ('c' changed, 'd' deleted, 'f' subject deleted), property,
//	            ext, old_value, new_value, snapshot, meta (JSONB), created_at
//	T_feed_seq  subject_name PRIMARY KEY, seq: the subjects' versions
//
// Every record is written in the transaction of its data change, after the
// subject's row lock is taken (and the version row's lock, by its upsert),
// so that per subject the records' pos and seq follow commit order. The
// relay reads the oldest rows by pos and deletes the published ones; it
// never remembers a "last pos", so a transaction that commits late with a
// smaller pos (another subject) is still relayed: the read starts at a
// floor that passes only rows no transaction can still commit (readFloor). A NOTIFY on the channel
// FeedChannel(), sent after the commit (notify.go), wakes the relay.

var (
	_ storage.ChangeFeeder = (*Backend)(nil)
	_ storage.FeedStore    = (*Backend)(nil)
)

// feedState is the Backend's feed: the SQL and the relay's connection.
type feedState struct {
	table, seqTable, channel string
	sets                     map[string]string // set/op statement -> its feed variant
	del, insert, read, ack   string

	mu    sync.Mutex
	conn  *pgx.Conn // LISTEN + advisory lock; nil when none
	owner string    // lease owner holding the advisory lock on conn
	// leaseGone: the connection that held the lease was dropped or
	// replaced (the server released the lock with it); the next read fails
	// with errFeedLeaseLost, so that the relay asks FeedLease again rather
	// than reading on without the lock. FeedLease and ReleaseFeedLease
	// clear it.
	leaseGone bool
	notified  atomic.Bool // a NOTIFY came in (also while a query ran)

	// readNew, readPlainNew: read and readPlain without the rows in $3
	// (ReadNewChanges).
	readNew, readPlainNew string

	// horizon, seqCheck: the statements of the read floor (see readFloor).
	readPlain         string // read without the floor
	horizon, seqCheck string
	seqID             string // the sequence's identity (see readFloor.seq)
	fl                readFloor
}

// readFloor lets the relay's read skip the removed rows at the head of the
// feed table. The table is a queue: rows are inserted at the end and
// deleted from the head, and until VACUUM removes them (autovacuum visits
// a table at most once a minute) the deleted rows' index entries stay; a
// read "ORDER BY pos LIMIT n" walked all of them, and visited the heap for
// each one while a snapshot that might still see it existed anywhere in the
// server (measured: 14-24 ms per read of 10 rows behind 10,000 deleted ones;
// 0.03 ms from a floor). So the read starts at floor: every row with a
// smaller pos is removed or will never commit.
//
// The floor must never pass a row that may still commit: a transaction that
// took a pos from the sequence and commits later (another subject) has a
// smaller pos than rows already read. Every writer takes its pos after its
// transaction has an xid (the data and version rows are written first).
// So a read records the sequence's last value S and then, in a later
// statement of the same round trip, takes an xid N of its own
// (pg_current_xact_id; the snapshot's xmax is no such bound): every pos <= S
// belongs to a transaction with an xid < N. A later read whose snapshot's xmin is
// >= N sees every such row that committed; after it the floor may move up
// to S+1, but never past a row that a read returned and AckChanges has not
// removed (out), which the relay reads again until it removes it. The floor
// is off (0) when the server lacks pg_current_snapshot (PostgreSQL < 13),
// the role may not read the sequence, or the sequence caches values (then a
// pos handed out later may be smaller than S).
type readFloor struct {
	mu    sync.Mutex
	floor int64
	out   map[int64]struct{} // read, not yet removed by AckChanges
	given map[int64]struct{} // ReadNewChanges: returned since its last fresh read, not yet removed
	// gen counts the resets of the floor's state (a new connection, a
	// sequence found changed or gone back); givenGen is gen as of the
	// fresh read that started given. A ReadNewChanges that is not fresh
	// fails (errFeedRestarted) when they differ: the state given was
	// built on is gone (the floor no longer knows the records in flight;
	// after TRUNCATE ... RESTART IDENTITY given holds old positions that
	// new rows reuse), so the relay must drop its pipeline and start over.
	gen, givenGen uint64
	pending       bool // pendS, pendN hold a horizon to pass
	pendS, pendN  int64
	horizonAt     time.Time // when the last horizon was taken
	off           bool
	// seq identifies the feed's sequence (oid, filenode, cache) as of the
	// floor: TRUNCATE ... RESTART IDENTITY and ALTER SEQUENCE ... RESTART
	// give it a new filenode, a table created anew a new oid. Every read
	// checks it in the same round trip, after the read's statement (the
	// first read after connecting records it, from floor 0); on a change
	// the floor starts over and the read is done again from 0 (else the
	// rows of the new sequence below the old floor would never be read,
	// and the ones above it published first).
	seq string
}

// horizonEvery is the least time between two horizons of the read floor: a
// horizon costs the read a transaction with an xid (up to 100 xids a
// second while the relay is busy, which brings the anti-wraparound VACUUM
// of a busy server that much sooner), and a floor a few milliseconds
// behind skips nearly all removed rows.
const horizonEvery = 10 * time.Millisecond

// reset forgets the floor (a new relay connection).
func (fl *readFloor) reset() {
	fl.mu.Lock()
	fl.floor, fl.out, fl.pending, fl.seq = 0, nil, false, ""
	fl.restartedLocked()
	fl.mu.Unlock()
}

// restartedLocked marks the state of ReadNewChanges as gone (see gen).
// fl.mu is held.
func (fl *readFloor) restartedLocked() {
	fl.gen++
	fl.given = nil
}

// errFeedRestarted: a ReadNewChanges that is not fresh found the read
// state reset since its fresh read (see readFloor.gen).
var errFeedRestarted = errors.New("postgres: change feed read state was reset (new connection or sequence); read again from the start")

// sequenceChanged compares the feed sequence's identity id (oid/filenode/
// cache) with the floor's: on the first call it records it; on a change it
// resets the floor (and turns it off if the sequence now caches values).
func (fl *readFloor) sequenceChanged(id string) bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.seq == "" || fl.seq == id {
		fl.seq = id
		return false
	}
	fl.floor, fl.out, fl.pending, fl.seq = 0, nil, false, id
	fl.restartedLocked()
	if !strings.HasSuffix(id, "/1") {
		fl.off = true // a sequence with a cache (or gone): see readFloor
	}
	return true
}

// ChangeFeed implements storage.ChangeFeeder: Config.ChangeFeed.
func (b *Backend) ChangeFeed() bool { return b.cfg.ChangeFeed }

// FeedTable returns the quoted name of the feed table (the subjects table's
// name + "_feed").
func (b *Backend) FeedTable() string { return b.feed.table }

// FeedChannel returns the NOTIFY channel of the feed.
func (b *Backend) FeedChannel() string { return b.feed.channel }

func (b *Backend) initFeed() error {
	if !b.cfg.ChangeFeed {
		return nil
	}
	name := b.cfg.Table
	if len(name)+len("_feed_seq") > maxIdentifier {
		return fmt.Errorf("postgres: table name %q is too long for the change feed tables (at most %d bytes)", name, maxIdentifier-len("_feed_seq"))
	}
	ident := func(n string) string {
		if b.cfg.Schema != "" {
			return pgx.Identifier{b.cfg.Schema, n}.Sanitize()
		}
		return pgx.Identifier{n}.Sanitize()
	}
	f := &b.feed
	b.notify.done = make(chan struct{})
	f.table, f.seqTable = ident(name+"_feed"), ident(name+"_feed_seq")
	h := fnv.New32a()
	h.Write([]byte(b.table))
	f.channel = fmt.Sprintf("krules_feed_%08x", h.Sum32())
	r := strings.NewReplacer("{F}", f.table, "{Q}", f.seqTable, "{CH}", "'"+f.channel+"'")
	ret := "s.properties -> $2::text"
	f.sets = map[string]string{
		b.q[0].set:      b.buildFeedSet(arg, "true", "NULL::jsonb"),
		b.q[0].inc:      b.buildFeedSet(incExpr, incOK, ret),
		b.q[0].appendOp: b.buildFeedSet(appExpr, arrOK, ret),
		b.q[0].maxOp:    b.buildFeedSet(maxExpr, numOK, ret),
		b.q[0].minOp:    b.buildFeedSet(minExpr, numOK, ret),
	}
	f.del = r.Replace(feedDel(b.table))
	f.insert = r.Replace(feedInsert)
	// One row at least (pos NULL when the feed is empty): the xmin of the
	// read's snapshot (see readFloor).
	f.read = r.Replace(`SELECT h.x, r.pos, r.id, r.subject_name, r.seq, r.kind, r.property, r.ext, r.old_value, r.new_value, r.snapshot, r.meta, r.created_at
	FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x) AS h
	LEFT JOIN LATERAL (SELECT * FROM {F} WHERE pos >= $2::bigint ORDER BY pos LIMIT $1) AS r ON true
	ORDER BY r.pos`)
	f.readPlain = r.Replace(`SELECT 0::bigint, pos, id, subject_name, seq, kind, property, ext, old_value, new_value, snapshot, meta, created_at FROM {F} WHERE pos >= $2::bigint ORDER BY pos LIMIT $1`)
	f.readNew = strings.Replace(f.read, "WHERE pos >= $2::bigint", "WHERE pos >= $2::bigint AND pos <> ALL($3::bigint[])", 1)
	f.readPlainNew = strings.Replace(f.readPlain, "WHERE pos >= $2::bigint", "WHERE pos >= $2::bigint AND pos <> ALL($3::bigint[])", 1)
	f.horizon = r.Replace(`SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence('{F}', 'pos')::regclass), 0)`)
	f.seqCheck = r.Replace(`SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, s.seqcache FROM pg_sequence AS s
	WHERE s.seqrelid = pg_get_serial_sequence('{F}', 'pos')::regclass AND pg_sequence_last_value(s.seqrelid) IS DISTINCT FROM -1`)
	f.seqID = r.Replace(`SELECT COALESCE((SELECT s.seqrelid::oid::text || '/' || COALESCE(pg_relation_filenode(s.seqrelid)::text, '') || '/' || s.seqcache::text
	FROM pg_sequence AS s WHERE s.seqrelid = pg_get_serial_sequence('{F}', 'pos')::regclass), '')`)
	// By pos and id: after TRUNCATE ... RESTART IDENTITY a new row can
	// reuse the pos of a record in flight, whose removal must not take it.
	f.ack = r.Replace(`DELETE FROM {F} WHERE pos = ANY($1::bigint[]) AND id = ANY($2::text[])`)
	return nil
}

func (b *Backend) feedSchema() []string {
	f := &b.feed
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + f.table + ` (
			pos BIGSERIAL PRIMARY KEY,
			id TEXT NOT NULL,
			subject_name TEXT NOT NULL,
			seq BIGINT NOT NULL,
			kind CHAR(1) NOT NULL,
			property TEXT,
			ext BOOLEAN NOT NULL DEFAULT false,
			old_value JSONB,
			new_value JSONB,
			snapshot JSONB,
			meta JSONB,
			created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
		)`,
		`CREATE TABLE IF NOT EXISTS ` + f.seqTable + ` (
			subject_name TEXT PRIMARY KEY,
			seq BIGINT NOT NULL
		)`,
	}
}

// ensureFeedSchema creates the feed tables (under the schema lock).
func (b *Backend) ensureFeedSchema(ctx context.Context) error {
	if !b.cfg.ChangeFeed {
		return nil
	}
	var n int
	if err := b.pool.QueryRow(ctx, `SELECT (to_regclass($1) IS NOT NULL)::int + (to_regclass($2) IS NOT NULL)::int`, b.feed.table, b.feed.seqTable).Scan(&n); err != nil {
		return fmt.Errorf("postgres: check feed tables: %w", err)
	}
	if n == 2 {
		return nil
	}
	if b.cfg.NoCreate {
		return fmt.Errorf("postgres: change feed tables %s, %s do not exist and Config.NoCreate is set", b.feed.table, b.feed.seqTable)
	}
	for attempt := 0; ; attempt++ {
		err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
				return err
			}
			for _, s := range b.feedSchema() {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			return nil
		}
		if attempt < 3 && hasCode(err, "23505", "42P07", "42710", "42P06") {
			continue
		}
		return fmt.Errorf("postgres: create feed tables: %w", err)
	}
}

// feedSetTemplate is setTemplate plus the record: ch keeps the change when
// the new value differs from the old (jsonb equality), sq bumps the
// subject's version, rec writes the record (the relay is notified after
// the commit: notify.go). Every step reads the one before, so they run
// after the row lock of old.
// Extra parameters: $4 record id, $5 metadata (jsonb or NULL).
const feedSetTemplate = `WITH old AS MATERIALIZED (
	SELECT {C} -> $2::text AS v FROM {T} WHERE subject_name = $1::text FOR NO KEY UPDATE
), up AS (
	INSERT INTO {T} AS s (subject_name, {C})
	SELECT $1::text, jsonb_build_object($2::text, {NV}) FROM (SELECT 1) AS one LEFT JOIN old ON true WHERE {OK}
	ON CONFLICT (subject_name) DO UPDATE
		SET {C} = s.{C} || EXCLUDED.{C}, updated_at = NOW()
		WHERE EXISTS (SELECT 1 FROM old)
	RETURNING {RET} AS r, s.{C} -> $2::text AS nv
), ch AS MATERIALIZED (
	SELECT (SELECT v FROM old) AS o, nv FROM up WHERE (SELECT v FROM old) IS DISTINCT FROM nv
), sq AS (
	INSERT INTO {Q} AS q (subject_name, seq) SELECT $1::text, 1 FROM ch
	ON CONFLICT (subject_name) DO UPDATE SET seq = q.seq + 1
	RETURNING seq
), rec AS (
	INSERT INTO {F} (id, subject_name, seq, kind, property, old_value, new_value, meta)
	SELECT $4::text, $1::text, sq.seq, 'c', $2::text, ch.o, ch.nv, $5::jsonb FROM sq, ch
	RETURNING 1
)
SELECT (SELECT v FROM old), (SELECT r FROM up), EXISTS (SELECT 1 FROM up) AND (SELECT count(*) FROM rec) >= 0`

// feedDelTemplate is delTemplate plus the record. Extra parameters: $3
// record id, $4 metadata.
const feedDelTemplate = `WITH old AS MATERIALIZED (
	SELECT properties -> $2::text AS v FROM {T} WHERE subject_name = $1::text FOR NO KEY UPDATE
), up AS (
	UPDATE {T} SET properties = properties - $2::text, updated_at = NOW()
	WHERE subject_name = $1::text AND (SELECT v FROM old) IS NOT NULL
	RETURNING 1
), sq AS (
	INSERT INTO {Q} AS q (subject_name, seq) SELECT $1::text, 1 FROM up
	ON CONFLICT (subject_name) DO UPDATE SET seq = q.seq + 1
	RETURNING seq
), rec AS (
	INSERT INTO {F} (id, subject_name, seq, kind, property, old_value, meta)
	SELECT $3::text, $1::text, sq.seq, 'd', $2::text, (SELECT v FROM old), $4::jsonb FROM sq
	RETURNING 1
)
SELECT (SELECT v FROM old), (SELECT count(*) FROM up) + 0 * (SELECT count(*) FROM rec)`

func feedDel(table string) string { return strings.ReplaceAll(feedDelTemplate, "{T}", table) }

// feedInsert writes the records $3 (a JSON array of {"id", "k", "p", "x",
// "o", "n", "s", "m"}) of subject $1, $2 of them, with consecutive
// versions (the relay is notified after the commit: notify.go).
const feedInsert = `WITH sq AS (
	INSERT INTO {Q} AS q (subject_name, seq) VALUES ($1::text, $2::bigint)
	ON CONFLICT (subject_name) DO UPDATE SET seq = q.seq + $2::bigint
	RETURNING seq
), rec AS (
	INSERT INTO {F} (id, subject_name, seq, kind, property, ext, old_value, new_value, snapshot, meta)
	SELECT e.r ->> 'id', $1::text, (SELECT seq FROM sq) - $2::bigint + e.ord, e.r ->> 'k', e.r ->> 'p',
		COALESCE((e.r ->> 'x')::boolean, false), e.r -> 'o', e.r -> 'n', e.r -> 's', e.r -> 'm'
	FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS e(r, ord)
	ORDER BY e.ord
	RETURNING 1
)
SELECT count(*) FROM rec`

// buildFeedSet returns the feed variant of a set/op statement.
func (b *Backend) buildFeedSet(nv, ok, ret string) string {
	f := &b.feed
	return strings.NewReplacer("{T}", b.table, "{C}", "properties", "{NV}", nv, "{OK}", ok, "{RET}", ret,
		"{F}", f.table, "{Q}", f.seqTable, "{CH}", "'"+f.channel+"'").Replace(feedSetTemplate)
}

// metaJSON returns the metadata of a record as JSON (nil: none; muted true
// when the write must not be recorded).
func metaJSON(m *storage.ChangeMeta) (data []byte, muted bool, err error) {
	if m != nil && m.Muted {
		return nil, true, nil
	}
	data, err = storage.EncodeChangeMeta(m)
	return data, false, err
}

// feedRecord is one element of feedInsert's array.
type feedRecord struct {
	ID string
	K  string // c, d, f
	P  string
	X  bool
	O  []byte // JSON; nil: absent
	N  []byte
	S  []byte
	M  []byte
}

func (r feedRecord) json(w *strings.Builder) {
	enc := func(v any) string {
		b, _ := storage.Marshal(v)
		return string(b)
	}
	w.WriteString(`{"id":` + enc(r.ID) + `,"k":` + enc(r.K))
	if r.K != "f" {
		w.WriteString(`,"p":` + enc(r.P))
	}
	if r.X {
		w.WriteString(`,"x":true`)
	}
	for _, f := range []struct {
		k string
		v []byte
	}{{"o", r.O}, {"n", r.N}, {"s", r.S}, {"m", r.M}} {
		if f.v != nil {
			w.WriteString(`,"` + f.k + `":`)
			w.Write(f.v)
		}
	}
	w.WriteString("}")
}

func recordsJSON(recs []feedRecord) string {
	var w strings.Builder
	w.WriteByte('[')
	for i, r := range recs {
		if i > 0 {
			w.WriteByte(',')
		}
		r.json(&w)
	}
	w.WriteByte(']')
	return w.String()
}

// feedStore is Store in feed mode: one transaction that creates the row if
// missing (so a concurrent first write is waited for), locks it and reads
// the default properties (round trip 1), then applies the batch and writes
// the records of the effective changes (round trip 2).
func (b *Backend) feedStore(ctx context.Context, subject string, batch storage.Batch, storeSQL string, args []any) error {
	m := storage.ChangeFrom(ctx)
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return wrap(ctx, "store", subject, "", err)
	}
	defer conn.Release()
	committed := false
	defer func() {
		if !committed {
			rollback(conn)
		}
	}()
	q := pgx.Batch{}
	q.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	q.Queue(b.q[0].ensureRow, subject)
	q.Queue(`SELECT properties FROM `+b.table+` WHERE subject_name = $1::text FOR NO KEY UPDATE`, subject)
	var raw []byte
	br := conn.SendBatch(ctx, &q)
	_, err = br.Exec()
	var created bool
	if err == nil {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		created = tag.RowsAffected() == 1
	}
	if err == nil {
		err = br.QueryRow().Scan(&raw)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, pgx.ErrNoRows) {
		err = errRetry
	}
	if err != nil {
		return wrap(ctx, "store", subject, "", err)
	}
	if created && len(batch.Puts) == 0 {
		return nil // deletes on a missing subject: nothing to do (the rollback removes the row)
	}
	before, err := decodeObject(raw)
	if err != nil {
		return wrap(ctx, "store", subject, "", err)
	}
	old := make(map[string]any, len(before))
	for _, p := range before {
		old[p.Name] = p.Value
	}
	after := make(map[string]any, len(old))
	for k, v := range old {
		after[k] = v
	}
	var order []string
	seen := map[string]bool{}
	touch := func(name string) {
		if !seen[name] {
			seen[name] = true
			order = append(order, name)
		}
	}
	for _, k := range batch.Deletes {
		if k.Kind == storage.Default {
			delete(after, k.Name)
			touch(k.Name)
		}
	}
	for _, w := range batch.Puts {
		if w.Kind == storage.Default {
			after[w.Name] = w.Value
			touch(w.Name)
		}
	}
	var recs []feedRecord
	base := storage.NewChangeID()
	for _, name := range order {
		o, had := old[name]
		n, has := after[name]
		if had == has && (!has || storage.Equal(o, n)) {
			continue
		}
		meta, muted, err := metaJSON(m.For(name))
		if err != nil {
			return fmt.Errorf("postgres: store property %q of subject %q: %w", name, subject, err)
		}
		if muted {
			continue
		}
		r := feedRecord{ID: base + "-" + strconv.Itoa(len(recs)+1), K: "c", P: name, M: meta}
		if had {
			if r.O, err = storage.Marshal(o); err != nil {
				return fmt.Errorf("postgres: store property %q of subject %q: %w", name, subject, err)
			}
		}
		if has {
			if r.N, err = storage.Marshal(n); err != nil {
				return fmt.Errorf("postgres: store property %q of subject %q: %w", name, subject, err)
			}
		} else {
			r.K = "d"
		}
		recs = append(recs, r)
	}
	q = pgx.Batch{}
	q.Queue(storeSQL, args...)
	if len(recs) > 0 {
		q.Queue(b.feed.insert, subject, len(recs), recordsJSON(recs))
	}
	q.Queue(`COMMIT`)
	br = conn.SendBatch(ctx, &q)
	for i := 0; i < q.Len() && err == nil; i++ {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return wrap(ctx, "store", subject, "", err)
	}
	committed = true
	b.feedCommitted()
	return nil
}

// feedFlush is Flush in feed mode: one transaction that waits for a
// concurrent first write (ensureRow), deletes the row returning its content
// (round trip 1) and writes the deletion records (round trip 2).
func (b *Backend) feedFlush(ctx context.Context, subject string) error {
	meta, _, err := metaJSON(storage.ChangeFrom(ctx))
	if err != nil {
		return fmt.Errorf("postgres: flush subject %q: %w", subject, err)
	}
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return wrap(ctx, "flush", subject, "", err)
	}
	defer conn.Release()
	committed := false
	defer func() {
		if !committed {
			rollback(conn)
		}
	}()
	q := pgx.Batch{}
	q.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	q.Queue(b.q[0].ensureRow, subject)
	q.Queue(`DELETE FROM `+b.table+` WHERE subject_name = $1::text RETURNING properties, ext_properties`, subject)
	var rawP, rawE []byte
	br := conn.SendBatch(ctx, &q)
	_, err = br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		err = br.QueryRow().Scan(&rawP, &rawE)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return wrap(ctx, "flush", subject, "", err)
	}
	props, err := decodeObject(rawP)
	if err == nil {
		var ext []storage.Property
		if ext, err = decodeObject(rawE); err == nil {
			err = b.writeFlushRecords(ctx, conn, subject, props, ext, meta)
		}
	}
	if err != nil {
		return wrap(ctx, "flush", subject, "", err)
	}
	committed = true
	b.feedCommitted()
	return nil
}

func (b *Backend) writeFlushRecords(ctx context.Context, conn interface {
	SendBatch(context.Context, *pgx.Batch) pgx.BatchResults
}, subject string, props, ext []storage.Property, meta []byte) error {
	base := storage.NewChangeID()
	var recs []feedRecord
	pm, em := map[string]any{}, map[string]any{}
	for _, set := range []struct {
		ps  []storage.Property
		ext bool
		m   map[string]any
	}{{props, false, pm}, {ext, true, em}} {
		for _, p := range set.ps {
			o, err := storage.Marshal(p.Value)
			if err != nil {
				return err
			}
			set.m[p.Name] = p.Value
			recs = append(recs, feedRecord{ID: base + "-" + strconv.Itoa(len(recs)+1), K: "d", P: p.Name, X: set.ext, O: o, M: meta})
		}
	}
	snap, err := storage.Marshal(map[string]any{"props": pm, "ext_props": em})
	if err != nil {
		return err
	}
	recs = append(recs, feedRecord{ID: base + "-" + strconv.Itoa(len(recs)+1), K: "f", S: snap, M: meta})
	q := pgx.Batch{}
	// The transaction must have an xid before the insert takes its pos
	// (see readFloor): the DELETE before may have found no row (a
	// concurrent Flush committed first), and then the insert would be the
	// first write; pg_current_xact_id assigns one (a no-op when there is).
	q.Queue(`SELECT pg_current_xact_id()`)
	q.Queue(b.feed.insert, subject, len(recs), recordsJSON(recs))
	q.Queue(`COMMIT`)
	br := conn.SendBatch(ctx, &q)
	for range q.Len() {
		if _, err = br.Exec(); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// ReadChanges implements storage.FeedStore: the oldest rows by pos, waiting
// for a NOTIFY (LISTEN on the relay's own connection) when there is none.
func (b *Backend) ReadChanges(ctx context.Context, n int, wait time.Duration) ([]storage.PendingChange, error) {
	return b.readChanges(ctx, n, wait, readAll)
}

// Read modes of readChanges.
const (
	readAll   = iota // ReadChanges
	readNew          // ReadNewChanges, not fresh
	readFresh        // ReadNewChanges, fresh
)

// ReadNewChanges is ReadChanges for a relay that keeps records in flight
// while it reads on (the pipeline of package feed): it returns the oldest
// pending records that no ReadNewChanges returned since the last fresh one
// (records AckChanges removed are gone anyway), and waits up to wait for a
// NOTIFY when there is none, as ReadChanges does. fresh starts over: the
// read returns every pending record, the ones returned before included
// (a relay that dropped its pipeline publishes them again).
//
// Per subject the records come in commit order across calls: a record is
// written under its subject's row lock, so a subject's earlier record
// committed before a later one took its pos, and a read that sees the
// later one sees (and returns, or returned before) the earlier one. Across
// subjects a record can come after records that committed later (pos is
// not commit order), which the relay does not need.
//
// The records returned and not yet removed are remembered (one entry per
// record, forgotten by AckChanges or the next fresh read) and left out of
// each read in its statement (pos <> ALL($3)). Like ReadChanges, call it
// from one goroutine at a time (the lease holder); AckChanges may run
// meanwhile.
func (b *Backend) ReadNewChanges(ctx context.Context, fresh bool, n int, wait time.Duration) ([]storage.PendingChange, error) {
	mode := readNew
	if fresh {
		mode = readFresh
	}
	return b.readChanges(ctx, n, wait, mode)
}

func (b *Backend) readChanges(ctx context.Context, n int, wait time.Duration, mode int) ([]storage.PendingChange, error) {
	if b.closed.Load() {
		return nil, fmt.Errorf("postgres: %w", storage.ErrClosed)
	}
	f := &b.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.leaseGone {
		f.leaseGone = false
		return nil, errFeedLeaseLost
	}
	conn, err := b.feedConnLocked(ctx)
	if err != nil {
		return nil, err
	}
	if f.leaseGone {
		// Reconnected just now: the lease was on the old connection.
		f.leaseGone = false
		return nil, errFeedLeaseLost
	}
	deadline := time.Now().Add(wait)
	for {
		f.notified.Store(false)
		out, err := b.readRows(ctx, conn, max(n, 1), mode)
		if mode == readFresh {
			mode = readNew // started over; a wait's next read goes on from it
		}
		if errors.Is(err, errFeedRestarted) {
			return nil, err // the connection is fine
		}
		if err != nil || len(out) > 0 {
			if err != nil {
				b.dropFeedConnLocked()
			}
			return out, err
		}
		if f.notified.Load() {
			continue // a record committed while the query ran
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		wctx, cancel := context.WithTimeout(ctx, left)
		_, err = conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if wctx.Err() != nil {
				// Timed out: a cancelled wait leaves the connection usable
				// only if pgx says so.
				if conn.IsClosed() {
					b.dropFeedConnLocked()
				}
				return nil, nil
			}
			b.dropFeedConnLocked()
			return nil, fmt.Errorf("postgres: wait for change feed: %w", err)
		}
	}
}

func (b *Backend) readRows(ctx context.Context, conn *pgx.Conn, n int, mode int) ([]storage.PendingChange, error) {
	out, again, err := b.readRowsOnce(ctx, conn, n, mode)
	if again {
		// The sequence changed under the floor: read from 0 (a
		// ReadNewChanges that is not fresh fails: errFeedRestarted).
		out, _, err = b.readRowsOnce(ctx, conn, n, mode)
	}
	return out, err
}

// readRowsOnce is one read of readRows; again: the feed's sequence was
// found changed (readFloor.seq), the floor reset and the rows dropped.
// readNew, readFresh: without the rows of fl.given, and the rows read are
// added to it; readFresh empties it first, readNew fails with
// errFeedRestarted when the state it was built on was reset (readFloor.gen).
func (b *Backend) readRowsOnce(ctx context.Context, conn *pgx.Conn, n int, mode int) (_ []storage.PendingChange, again bool, _ error) {
	f := &b.feed
	fl := &f.fl
	onlyNew := mode != readAll
	fl.mu.Lock()
	switch {
	case mode == readFresh:
		fl.given, fl.givenGen = nil, fl.gen
	case mode == readNew && fl.givenGen != fl.gen:
		fl.given = nil
		fl.mu.Unlock()
		return nil, false, errFeedRestarted
	}
	now := time.Now()
	floor, horizon, read := fl.floor, !fl.pending && !fl.off && now.Sub(fl.horizonAt) >= horizonEvery, f.read
	check := !fl.off // the sequence's identity, recorded from the first read after connect
	if horizon {
		fl.horizonAt = now
	}
	if fl.off {
		read = f.readPlain
	}
	var skip []int64
	if onlyNew {
		// A row leaves given only after its removal committed, so a row
		// missing here is either left out or invisible to the read.
		skip = make([]int64, 0, len(fl.given))
		for p := range fl.given {
			skip = append(skip, p)
		}
		read = f.readNew
		if fl.off {
			read = f.readPlainNew
		}
	}
	fl.mu.Unlock()
	args := []any{n, floor}
	if onlyNew {
		args = append(args, skip)
	}
	q := pgx.Batch{}
	if horizon {
		// The xid N is taken after S is read; the transaction's commit
		// need not wait for the WAL flush (it wrote nothing).
		q.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
		q.Queue(`SET LOCAL synchronous_commit = off`)
	}
	q.Queue(read, args...)
	if check {
		q.Queue(f.seqID)
	}
	if horizon {
		q.Queue(f.horizon)
		q.Queue(`SELECT pg_current_xact_id()::text::bigint`)
		q.Queue(`COMMIT`)
	}
	br := conn.SendBatch(ctx, &q)
	defer br.Close()
	if horizon {
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
			}
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
	}
	var out []storage.PendingChange
	var xmin int64
	poss := make([]int64, 0, n)
	for rows.Next() {
		var pos, seq *int64
		var id, subj, kind, prop *string
		var ext *bool
		var o, nv, snap, meta []byte
		var at *time.Time
		if err := rows.Scan(&xmin, &pos, &id, &subj, &seq, &kind, &prop, &ext, &o, &nv, &snap, &meta, &at); err != nil {
			return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
		}
		if pos == nil || id == nil || subj == nil || seq == nil || kind == nil || ext == nil || at == nil {
			continue // the empty feed's row (the columns are NOT NULL)
		}
		c := storage.Change{ID: *id, Subject: *subj, Seq: *seq, Extended: *ext, Time: at.UTC()}
		if prop != nil {
			c.Property = *prop
		}
		err := decodeFeedRow(&c, *kind, o, nv, snap, meta)
		poss = append(poss, *pos)
		out = append(out, storage.PendingChange{Ref: feedRef(*pos, *id), Change: c, Err: err})
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
	}
	var seqID string
	if check {
		if err := br.QueryRow().Scan(&seqID); err != nil {
			return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
		}
	}
	var hS, hN int64
	if horizon {
		if err := br.QueryRow().Scan(&hS); err != nil {
			return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
		}
		if err := br.QueryRow().Scan(&hN); err != nil {
			return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
		}
		if _, err := br.Exec(); err != nil {
			return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
		}
	}
	if err := br.Close(); err != nil {
		return nil, false, fmt.Errorf("postgres: read change feed: %w", err)
	}
	if check && fl.sequenceChanged(seqID) {
		return nil, true, nil
	}
	fl.advance(poss, len(poss) >= n, xmin, horizon, hS, hN, len(skip) > 0)
	if onlyNew && len(poss) > 0 {
		fl.mu.Lock()
		if fl.givenGen != fl.gen {
			// Reset meanwhile (the sequence went back, in advance): these
			// rows are of the new sequence; the next read starts over.
			fl.mu.Unlock()
			return out, false, nil
		}
		if fl.given == nil {
			fl.given = make(map[int64]struct{}, len(poss))
		}
		for _, p := range poss {
			fl.given[p] = struct{}{}
		}
		fl.mu.Unlock()
	}
	return out, false, nil
}

// advance records a read (see readFloor): the positions it returned (in
// order; full: the LIMIT was reached), its snapshot's xmin and, with
// horizon, a new horizon (S, N); skipped: the read left out rows it had
// returned before (ReadNewChanges), so a row missing from it may still be
// there.
func (fl *readFloor) advance(poss []int64, full bool, xmin int64, horizon bool, s, n int64, skipped bool) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.off {
		return
	}
	// A row read before and not returned now, from a floor below it and
	// within the rows this read covered, has been removed.
	if len(fl.out) > 0 && !skipped {
		got := make(map[int64]struct{}, len(poss))
		for _, p := range poss {
			got[p] = struct{}{}
		}
		for p := range fl.out {
			if _, ok := got[p]; !ok && (!full || p <= poss[len(poss)-1]) {
				delete(fl.out, p)
			}
		}
	}
	if fl.out == nil {
		fl.out = make(map[int64]struct{}, len(poss))
	}
	for _, p := range poss {
		fl.out[p] = struct{}{}
	}
	if fl.pending && xmin >= fl.pendN {
		// Every row with pos <= pendS that committed is visible to this
		// read: the ones at or above the floor were returned (or lie
		// beyond a full read's last row) and are in out.
		next := fl.pendS + 1
		for p := range fl.out {
			next = min(next, p)
		}
		fl.floor = max(fl.floor, next)
		fl.pending = false
	}
	if horizon {
		if s+1 < fl.floor {
			// The sequence went back (TRUNCATE ... RESTART IDENTITY, a
			// table created anew): start from the beginning again.
			fl.floor, fl.out = 0, nil
			fl.restartedLocked()
			return
		}
		fl.pendS, fl.pendN, fl.pending = s, n, true
	}
}

// removed forgets the rows AckChanges deleted.
func (fl *readFloor) removed(ids []int64) {
	fl.mu.Lock()
	for _, p := range ids {
		delete(fl.out, p)
		delete(fl.given, p)
	}
	fl.mu.Unlock()
}

func decodeFeedRow(c *storage.Change, kind string, o, nv, snap, meta []byte) error {
	var err error
	if c.Old, _, err = decode(o); err != nil {
		return fmt.Errorf("record %s: old value: %w", c.ID, err)
	}
	switch kind {
	case "c":
		c.Type = storage.ChangePropertyChanged
		if c.New, _, err = decode(nv); err != nil {
			return fmt.Errorf("record %s: new value: %w", c.ID, err)
		}
	case "d":
		c.Type = storage.ChangePropertyDeleted
	case "f":
		c.Type = storage.ChangeSubjectDeleted
		v, _, err := decode(snap)
		if err != nil {
			return fmt.Errorf("record %s: snapshot: %w", c.ID, err)
		}
		m, _ := v.(map[string]any)
		c.Props, _ = m["props"].(map[string]any)
		c.ExtProps, _ = m["ext_props"].(map[string]any)
	default:
		return fmt.Errorf("record %s: unknown kind %q", c.ID, kind)
	}
	if meta != nil {
		v, _, err := decode(meta)
		if err != nil {
			return fmt.Errorf("record %s: metadata: %w", c.ID, err)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("record %s: metadata is not an object", c.ID)
		}
		if e, ok := m["extra"]; ok {
			if c.Extra, ok = e.(map[string]any); !ok {
				return fmt.Errorf("record %s: extra is not an object", c.ID)
			}
		}
		if d, ok := m["depth"].(int64); ok {
			c.Depth = int(d)
		}
		c.TraceParent, _ = m["tp"].(string)
		c.TraceState, _ = m["ts"].(string)
	}
	return nil
}

// AckChanges implements storage.FeedStore: it deletes the rows, in one
// statement, in a transaction that commits without waiting for the WAL
// flush (synchronous_commit off for it alone). The removal of a record is
// the only write that may be lost this way, and only by a crash of the
// server in the instant after the commit: the record is then relayed again,
// with the same Nats-Msg-Id (at least once, as after a relay that dies
// before its removal), never lost. Under load this halved the server CPU of
// the removals (a WAL flush per batch of a few records).
func (b *Backend) AckChanges(ctx context.Context, refs []string) error {
	if len(refs) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(refs))
	recs := make([]string, 0, len(refs))
	for _, r := range refs {
		ps, id, ok := strings.Cut(r, "/")
		n, err := strconv.ParseInt(ps, 10, 64)
		if !ok || err != nil {
			return fmt.Errorf("postgres: bad change record ref %q", r)
		}
		ids = append(ids, n)
		recs = append(recs, id)
	}
	q := pgx.Batch{}
	q.Queue(`BEGIN`)
	q.Queue(`SET LOCAL synchronous_commit = off`)
	q.Queue(b.feed.ack, ids, recs)
	q.Queue(`COMMIT`)
	if err := b.pool.SendBatch(ctx, &q).Close(); err != nil {
		return fmt.Errorf("postgres: remove %d change records: %w", len(ids), err)
	}
	b.feed.fl.removed(ids)
	return nil
}

// feedRef is the Ref of the record at pos with id: "<pos>/<id>".
func feedRef(pos int64, id string) string { return strconv.FormatInt(pos, 10) + "/" + id }

// feedLockKey is the advisory lock of the relay lease of this feed.
func (b *Backend) feedLockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("github.com/krules-go/krules/storage/postgres: feed " + b.feed.table))
	return int64(h.Sum64())
}

// feedConnLocked returns the relay's connection, connecting and LISTENing
// when needed. f.mu is held.
func (b *Backend) feedConnLocked(ctx context.Context) (*pgx.Conn, error) {
	f := &b.feed
	if f.conn != nil && !f.conn.IsClosed() {
		return f.conn, nil
	}
	f.leaseGone = f.leaseGone || f.owner != ""
	f.conn, f.owner = nil, ""
	cc := b.pool.Config().ConnConfig.Copy()
	// A wait for NOTIFY ends on its deadline; no cancel request (which
	// could hit the next statement of this connection).
	cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	// A NOTIFY that arrives while a query runs is not returned by
	// WaitForNotification: remember it.
	cc.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) { f.notified.Store(true) }
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("postgres: change feed connection: %w", err)
	}
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{f.channel}.Sanitize()); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("postgres: listen for change feed: %w", err)
	}
	// The read floor needs PostgreSQL 13 and a sequence without a cache;
	// a server error here (an old server, no privilege) turns it off.
	var xmin, cache int64
	err = conn.QueryRow(ctx, f.seqCheck).Scan(&xmin, &cache)
	var pgErr *pgconn.PgError
	switch {
	case err == nil || errors.Is(err, pgx.ErrNoRows) || errors.As(err, &pgErr):
		f.fl.reset()
		f.fl.mu.Lock()
		f.fl.off = err != nil || cache != 1
		f.fl.mu.Unlock()
	default:
		conn.Close(ctx)
		return nil, fmt.Errorf("postgres: change feed connection: %w", err)
	}
	f.conn = conn
	return conn, nil
}

func (b *Backend) dropFeedConnLocked() {
	f := &b.feed
	if f.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		f.conn.Close(ctx)
		cancel()
	}
	f.leaseGone = f.leaseGone || f.owner != ""
	f.conn, f.owner = nil, ""
}

// errFeedLeaseLost: the relay lease went with its connection (see
// feedState.leaseGone).
var errFeedLeaseLost = errors.New("postgres: change feed lease lost with its connection; take the lease again")

// FeedLease implements storage.FeedStore with a session advisory lock on
// the relay's connection: it is released by the server as soon as the
// holder's connection ends (a dead relay's lease ends within the server's
// detection of the dead connection), and ttl is not used. Inside one
// process the owner is remembered, so only one relay per Backend holds it.
// When the connection holding the lock ends (a network or server error),
// the next ReadChanges or ReadNewChanges fails instead of reading on
// without the lock, and the relay asks FeedLease again.
func (b *Backend) FeedLease(ctx context.Context, owner string, _ time.Duration) (bool, error) {
	if b.closed.Load() {
		return false, fmt.Errorf("postgres: %w", storage.ErrClosed)
	}
	f := &b.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() { f.leaseGone = false }() // the caller learns the lease's state now
	if f.owner != "" && f.owner != owner {
		return false, nil
	}
	conn, err := b.feedConnLocked(ctx)
	if err != nil {
		return false, err
	}
	if f.owner == owner {
		if _, err := conn.Exec(ctx, `SELECT 1`); err != nil {
			b.dropFeedConnLocked()
			return false, fmt.Errorf("postgres: change feed lease: %w", err)
		}
		return true, nil
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, b.feedLockKey()).Scan(&ok); err != nil {
		b.dropFeedConnLocked()
		return false, fmt.Errorf("postgres: change feed lease: %w", err)
	}
	if ok {
		f.owner = owner
	}
	return ok, nil
}

// ReleaseFeedLease implements storage.FeedStore: it closes the relay's
// connection, which ends the advisory lock.
func (b *Backend) ReleaseFeedLease(_ context.Context, owner string) error {
	f := &b.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() { f.leaseGone = false }()
	if f.owner == owner {
		if f.conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = f.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, b.feedLockKey())
			cancel()
		}
		b.dropFeedConnLocked()
	}
	return nil
}

// closeFeed closes the relay's connection (Backend.Close).
func (b *Backend) closeFeed() {
	f := &b.feed
	f.mu.Lock()
	b.dropFeedConnLocked()
	f.mu.Unlock()
}

// feedSet returns the statement and arguments of a set/op Set: the feed
// variant (with the record id and metadata) in feed mode for a default
// property not muted, else the statement itself.
func (b *Backend) feedSet(ctx context.Context, k storage.Key, sql string, args ...any) (string, []any, error) {
	if !b.cfg.ChangeFeed || k.Kind != storage.Default {
		return sql, args, nil
	}
	meta, muted, err := metaJSON(storage.ChangeFrom(ctx))
	if err != nil || muted {
		return sql, args, err
	}
	return b.feed.sets[sql], append(args, storage.NewChangeID(), meta), nil
}

// feedDelete is feedSet for Delete.
func (b *Backend) feedDelete(ctx context.Context, k storage.Key, sql string, args ...any) (string, []any, error) {
	if !b.cfg.ChangeFeed || k.Kind != storage.Default {
		return sql, args, nil
	}
	meta, muted, err := metaJSON(storage.ChangeFrom(ctx))
	if err != nil || muted {
		return sql, args, err
	}
	return b.feed.del, append(args, storage.NewChangeID(), meta), nil
}

// feedFunc queues, in feed mode, the record of an update function's write
// (old: the stored JSON, nil when missing; data: the new JSON) into the
// transaction's second batch.
func (b *Backend) feedFunc(ctx context.Context, q *pgx.Batch, subject string, k storage.Key, oldRaw []byte, old, nv any, data []byte) error {
	if !b.cfg.ChangeFeed || k.Kind != storage.Default {
		return nil
	}
	if oldRaw != nil && storage.Equal(old, nv) {
		return nil
	}
	meta, muted, err := metaJSON(storage.ChangeFrom(ctx))
	if err != nil || muted {
		return err
	}
	r := feedRecord{ID: storage.NewChangeID(), K: "c", P: k.Name, O: oldRaw, N: data, M: meta}
	q.Queue(b.feed.insert, subject, 1, recordsJSON([]feedRecord{r}))
	return nil
}
