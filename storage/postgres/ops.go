package postgres

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/storage"
)

func jitter(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return rand.Int64N(n)
}

// errRetry marks an attempt that must be retried: a concurrent first write
// or flush of the same subject changed the row between two steps.
var errRetry = errors.New("concurrent insert or flush of the subject")

// check validates the call's arguments before any SQL runs.
func (b *Backend) check(subject string, k *storage.Key) error {
	if b.closed.Load() {
		return fmt.Errorf("postgres: %w", storage.ErrClosed)
	}
	if err := storage.ValidateKey(subject, k); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

func (b *Backend) queries(k storage.Kind) *queries {
	if k == storage.Extended {
		return &b.q[1]
	}
	return &b.q[0]
}

// wrap adds the operation, subject and property to a driver error. The
// *pgconn.PgError stays reachable with errors.As; a value PostgreSQL refuses
// (22P05: a string JSONB cannot hold) also wraps storage.ErrInvalidValue;
// when ctx has ended, the error also wraps ctx.Err() (a query cancelled on
// ctx's deadline fails with a PgError 57014 that would not say why).
func wrap(ctx context.Context, op, subject, prop string, err error) error {
	where := fmt.Sprintf("postgres: %s subject %q", op, subject)
	if prop != "" {
		where = fmt.Sprintf("postgres: %s property %q of subject %q", op, prop, subject)
	}
	if hasCode(err, "22P05", "22P02", "22021") {
		return fmt.Errorf("%s: %w: %w", where, storage.ErrInvalidValue, err)
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%s: %w: %w", where, cerr, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

func notFound(subject, prop string) error {
	return fmt.Errorf("postgres: property %q of subject %q: %w", prop, subject, storage.ErrNotFound)
}

// decode turns JSONB text into the value model; nil (SQL NULL) is missing.
// Text outside the model becomes a storage.Invalid (tolerant loads); it never
// fails.
func decode(raw []byte) (v any, exists bool, err error) {
	if raw == nil {
		return nil, false, nil
	}
	return storage.UnmarshalProperty(raw), true, nil
}

// decodeObject turns a JSONB object into properties sorted by name.
func decodeObject(raw []byte) ([]storage.Property, error) { return storage.UnmarshalObject(raw) }

// Load implements [storage.Backend] in one query. Properties come sorted by
// name (JSONB keeps no insertion order).
func (b *Backend) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	if err := b.check(subject, nil); err != nil {
		return storage.Snapshot{}, err
	}
	var props, ext []byte
	err := b.pool.QueryRow(ctx, b.tq.load, subject).Scan(&props, &ext)
	if errors.Is(err, pgx.ErrNoRows) {
		return storage.Snapshot{}, nil
	}
	if err != nil {
		return storage.Snapshot{}, wrap(ctx, "load", subject, "", err)
	}
	var snap storage.Snapshot
	if snap.Props, err = decodeObject(props); err != nil {
		return storage.Snapshot{}, wrap(ctx, "load properties of", subject, "", err)
	}
	if snap.Ext, err = decodeObject(ext); err != nil {
		return storage.Snapshot{}, wrap(ctx, "load extended properties of", subject, "", err)
	}
	return snap, nil
}

// ExtProps implements [storage.Backend]; properties come sorted by name.
func (b *Backend) ExtProps(ctx context.Context, subject string) ([]storage.Property, error) {
	if err := b.check(subject, nil); err != nil {
		return nil, err
	}
	var ext []byte
	err := b.pool.QueryRow(ctx, b.tq.ext, subject).Scan(&ext)
	if errors.Is(err, pgx.ErrNoRows) {
		return []storage.Property{}, nil
	}
	if err != nil {
		return nil, wrap(ctx, "read extended properties of", subject, "", err)
	}
	props, err := decodeObject(ext)
	if err != nil {
		return nil, wrap(ctx, "read extended properties of", subject, "", err)
	}
	return props, nil
}

// Get implements [storage.Backend] in one query.
func (b *Backend) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(subject, &k); err != nil {
		return nil, err
	}
	var raw []byte
	err := b.pool.QueryRow(ctx, b.queries(k.Kind).get, subject, k.Name).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound(subject, k.Name)
	}
	if err != nil {
		return nil, wrap(ctx, "get", subject, k.Name, err)
	}
	v, exists, _ := decode(raw)
	if !exists {
		return nil, notFound(subject, k.Name)
	}
	if v, err = storage.StoredValue(v); err != nil {
		return nil, fmt.Errorf("postgres: get property %q of subject %q: %w", k.Name, subject, err)
	}
	return v, nil
}

// Delete implements [storage.Backend] in one statement that locks the row,
// removes the key and returns the value it held. The subject's row stays,
// possibly empty, as in Python KRules; [Backend.Flush] removes it.
func (b *Backend) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(subject, &k); err != nil {
		return nil, err
	}
	if _, ok := storage.IdempotencyKeyFrom(ctx); ok {
		return b.deleteKeyed(ctx, subject, k)
	}
	var raw []byte
	var n int64
	sql, args, err := b.feedDelete(ctx, k, b.queries(k.Kind).del, subject, k.Name) // change feed hook
	if err != nil {
		return nil, fmt.Errorf("postgres: delete property %q of subject %q: %w", k.Name, subject, err)
	}
	if err := b.pool.QueryRow(ctx, sql, b.textArgs(args)...).Scan(&raw, &n); err != nil {
		return nil, wrap(ctx, "delete", subject, k.Name, err)
	}
	if n != 0 {
		b.feedCommitted() // change feed hook: wake the relay
	}
	old, exists, err := decode(raw)
	if err != nil {
		return nil, wrap(ctx, "delete", subject, k.Name, err)
	}
	if !exists || n == 0 {
		return nil, notFound(subject, k.Name)
	}
	return old, nil
}

// Flush implements [storage.Backend]: it deletes the subject's row.
func (b *Backend) Flush(ctx context.Context, subject string) error {
	if err := b.check(subject, nil); err != nil {
		return err
	}
	if b.cfg.ChangeFeed { // change feed hook
		return b.feedFlush(ctx, subject)
	}
	if _, err := b.pool.Exec(ctx, b.tq.flush, subject); err != nil {
		return wrap(ctx, "flush", subject, "", err)
	}
	return nil
}

// Store implements [storage.Backend] in one statement (so one transaction):
// the deleted keys are removed from the row, then the puts are merged into
// it; a batch with puts creates the row when missing. Python KRules writes
// the same layout.
func (b *Backend) Store(ctx context.Context, subject string, batch storage.Batch) error {
	if err := b.check(subject, nil); err != nil {
		return err
	}
	var delP, delE []string
	for _, k := range batch.Deletes {
		if err := b.check(subject, &k); err != nil {
			return err
		}
		if k.Kind == storage.Extended {
			delE = append(delE, k.Name)
		} else {
			delP = append(delP, k.Name)
		}
	}
	var props, ext objectWriter
	for _, w := range batch.Puts {
		if err := b.check(subject, &w.Key); err != nil {
			return err
		}
		o := &props
		if w.Kind == storage.Extended {
			o = &ext
		}
		if err := o.add(w.Name, w.Value); err != nil {
			return fmt.Errorf("postgres: store property %q of subject %q: %w", w.Name, subject, err)
		}
	}
	if batch.Empty() {
		return nil
	}
	if delP == nil {
		delP = []string{}
	}
	if delE == nil {
		delE = []string{}
	}
	var err error
	switch {
	case b.cfg.ChangeFeed && batch.HasDefault(): // change feed hook
		if len(batch.Puts) == 0 {
			return b.feedStore(ctx, subject, batch, b.tq.storeDeletes, []any{subject, delP, delE})
		}
		return b.feedStore(ctx, subject, batch, b.tq.store, b.textArgs([]any{subject, props.bytes(), ext.bytes(), delP, delE}))
	case len(batch.Puts) == 0:
		_, err = b.pool.Exec(ctx, b.tq.storeDeletes, subject, delP, delE)
	default:
		_, err = b.pool.Exec(ctx, b.tq.store, b.textArgs([]any{subject, props.bytes(), ext.bytes(), delP, delE})...)
	}
	if err != nil {
		return wrap(ctx, "store", subject, "", err)
	}
	return nil
}

// objectWriter builds a JSON object of names and values, each in the text
// of storage.Marshal. A repeated name keeps its last value (JSONB
// semantics), as a sequence of puts would.
type objectWriter struct {
	buf []byte
}

func (o *objectWriter) add(name string, v any) error {
	text, err := storage.Marshal(v)
	if err != nil {
		return err
	}
	key, err := storage.Marshal(name)
	if err != nil {
		return err
	}
	if o.buf == nil {
		o.buf = append(make([]byte, 0, 256), '{')
	} else {
		o.buf = append(o.buf, ',')
	}
	o.buf = append(o.buf, key...)
	o.buf = append(o.buf, ':')
	o.buf = append(o.buf, text...)
	return nil
}

func (o *objectWriter) bytes() []byte {
	if o.buf == nil {
		return []byte("{}")
	}
	return append(o.buf, '}')
}

// Set implements [storage.Backend].
//
// A plain value and a built-in operation ([storage.OpInc], OpAppend, OpMax,
// OpMin) run as ONE SQL statement that locks the subject's row, computes the
// new value in PostgreSQL (numeric arithmetic, so integers stay exact far
// beyond 2^53), writes it, and returns the old value; no lock is held across
// Go code. A stored value of the wrong type for an operation yields an error
// wrapping [storage.ErrInvalidValue], an integer Inc whose sum leaves the
// int64 range one wrapping [storage.ErrOverflow]; nothing is written.
//
// An update function ([storage.Mutation].Func) runs in a READ COMMITTED
// transaction that first creates the row if it is missing (INSERT ... ON
// CONFLICT DO NOTHING) and then locks it (SELECT ... FOR NO KEY UPDATE), so
// concurrent updaters serialise on the row lock and none is lost, not even
// on the subject's first write; the function runs exactly once per attempt,
// while the lock is held. It costs two round trips.
//
// Serialization failures, deadlocks and a concurrent first insert or flush
// of the subject are retried up to Config.MaxRetries times; then the error
// wraps [storage.ErrConflict] and nothing was written.
func (b *Backend) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (newValue, oldValue any, err error) {
	if err := b.check(subject, &k); err != nil {
		return nil, nil, err
	}
	q := b.queries(k.Kind)
	var once func() (any, any, error)
	switch {
	case m.Op != nil:
		var sql string
		switch m.Op.Kind {
		case storage.OpInc:
			sql = q.inc
		case storage.OpAppend:
			sql = q.appendOp
		case storage.OpMax:
			sql = q.maxOp
		case storage.OpMin:
			sql = q.minOp
		default:
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w: unknown operation %v", k.Name, subject, storage.ErrInvalidValue, m.Op.Kind)
		}
		c := stmtCalls.Get().(*stmtCall)
		defer c.put()
		argJSON, err := appendArg(c.arg[:0], m.Op.Arg)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %v argument: %w", k.Name, subject, m.Op.Kind, err)
		}
		c.arg = argJSON
		if err := checkOpArg(m.Op); err != nil {
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
		}
		if _, ok := storage.IdempotencyKeyFrom(ctx); ok {
			return b.setKeyed(ctx, subject, k, m, sql, argJSON)
		}
		once = func() (any, any, error) { return b.setStatement(ctx, c, subject, k, sql, argJSON, m.Op) }
	case m.Func != nil:
		if _, ok := storage.IdempotencyKeyFrom(ctx); ok {
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w: update functions cannot be made idempotent", k.Name, subject, storage.ErrIdempotencyUnsupported)
		}
		once = func() (any, any, error) { return b.setFunc(ctx, subject, k, m) }
	default:
		data, err := storage.Marshal(m.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
		}
		if _, ok := storage.IdempotencyKeyFrom(ctx); ok {
			return b.setKeyed(ctx, subject, k, m, q.set, data)
		}
		c := stmtCalls.Get().(*stmtCall)
		defer c.put()
		once = func() (any, any, error) {
			_, old, err := b.setStatement(ctx, c, subject, k, q.set, data, nil)
			return m.Value, old, err
		}
	}
	for attempt := 0; ; attempt++ {
		nv, old, err := once()
		if err == nil {
			return nv, old, nil
		}
		if !errors.Is(err, errRetry) && !retryable(err) {
			return nil, nil, err
		}
		if attempt >= b.cfg.MaxRetries {
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w after %d attempts (last: %w)", k.Name, subject, storage.ErrConflict, attempt+1, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, nil, wrap(ctx, "set", subject, k.Name, err)
		}
	}
}

// textArgs returns args with every []byte (a JSON argument) turned into a
// string when the pool sends parameters as untyped text (see textJSON):
// there pgx sends a []byte as bytea, which the ::jsonb casts refuse. args
// may be changed in place.
func (b *Backend) textArgs(args []any) []any {
	if !b.textJSON {
		return args
	}
	for i, a := range args {
		if p, ok := a.([]byte); ok {
			args[i] = string(p)
		}
	}
	return args
}

// checkOpArg makes sure the argument has the type the SQL expects.
func checkOpArg(op *storage.Op) error {
	switch op.Kind {
	case storage.OpAppend:
		if _, ok := op.Arg.([]any); !ok {
			return fmt.Errorf("%w: Append argument must be a list, got %T", storage.ErrInvalidValue, op.Arg)
		}
	default:
		switch op.Arg.(type) {
		case int64, float64:
		default:
			return fmt.Errorf("%w: %v argument must be a number, got %T", storage.ErrInvalidValue, op.Kind, op.Arg)
		}
	}
	return nil
}

// setStatement runs the one-statement Set (plain value or operation); c
// holds the call's arguments and result (see stmtCall).
func (b *Backend) setStatement(ctx context.Context, c *stmtCall, subject string, k storage.Key, sql string, arg []byte, op *storage.Op) (any, any, error) {
	var args []any
	if b.cfg.ChangeFeed {
		var err error
		sql, args, err = b.feedSet(ctx, k, sql, subject, k.Name, arg) // change feed hook
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
		}
	} else {
		c.subject.s, c.name.s = subject, k.Name
		c.args = [3]any{&c.subject, &c.name, arg}
		args = c.args[:]
	}
	args = b.textArgs(args)
	r := &c.row
	r.decodeNew = op != nil
	if err := b.pool.QueryRow(ctx, sql, args...).Scan(r); err != nil {
		return nil, nil, wrap(ctx, "set", subject, k.Name, err)
	}
	if r.written {
		b.feedCommitted() // change feed hook: wake the relay
	}
	old := r.old
	if !r.written {
		if op != nil {
			if _, err := op.Apply(old, true); err != nil {
				// The stored value has the wrong type (the statement's
				// condition and Op.Apply agree on the types).
				return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
			}
			if op.Kind == storage.OpAppend && r.oldFound {
				// A list the statement leaves to Go (see arrOK).
				return b.setFunc(ctx, subject, k, storage.Mutation{Op: op})
			}
		}
		return nil, nil, errRetry
	}
	return r.nv, old, nil
}

// stmtCall holds the arguments and the result of a one-statement Set,
// pooled (stmtCalls): putting a string or a pointer to a local variable in
// an interface costs an allocation, and pgx takes its arguments and scan
// targets as interfaces. One goroutine uses a stmtCall between Get and put.
type stmtCall struct {
	subject, name textArg
	args          [3]any
	arg           []byte // buffer of the operation's JSON argument
	row           stmtRow
	blind         blindRow // SetBlind's result
}

var stmtCalls = sync.Pool{New: func() any { return new(stmtCall) }}

// put clears c (it must not keep values alive) and returns it to the pool;
// a grown argument buffer is dropped.
func (c *stmtCall) put() {
	arg := c.arg[:0]
	if cap(arg) > 1024 {
		arg = nil
	}
	*c = stmtCall{arg: arg}
	stmtCalls.Put(c)
}

// textArg passes a string to pgx as a text parameter without boxing it
// (pgtype.TextValuer).
type textArg struct{ s string }

// TextValue implements pgtype.TextValuer.
func (t *textArg) TextValue() (pgtype.Text, error) { return pgtype.Text{String: t.s, Valid: true}, nil }

// appendArg appends the JSON text of an operation's argument to buf (an
// int64, the common case, without storage.Marshal's allocation).
func appendArg(buf []byte, v any) ([]byte, error) {
	if n, ok := v.(int64); ok {
		return strconv.AppendInt(buf, n, 10), nil
	}
	data, err := storage.Marshal(v)
	if err != nil {
		return buf, err
	}
	return append(buf, data...), nil
}

// stmtRow scans the row of setTemplate (old value, new value, written)
// straight from the driver's buffers (pgx.RowScanner), decoding the JSON
// there: no copy of the raw values and no per-call scan plans.
type stmtRow struct {
	decodeNew bool // decode the new value (operations)
	old, nv   any
	oldFound  bool
	written   bool
}

// ScanRow implements pgx.RowScanner.
func (r *stmtRow) ScanRow(rows pgx.Rows) error {
	vals, fds := rows.RawValues(), rows.FieldDescriptions()
	if len(vals) != 3 || len(fds) != 3 {
		return fmt.Errorf("postgres: set statement returned %d columns, want 3", len(vals))
	}
	oldRaw, err := jsonbText(vals[0], fds[0].Format)
	if err != nil {
		return err
	}
	newRaw, err := jsonbText(vals[1], fds[1].Format)
	if err != nil {
		return err
	}
	if r.written, err = boolValue(vals[2], fds[2].Format); err != nil {
		return err
	}
	r.old, r.oldFound, _ = decode(oldRaw)
	r.nv = nil
	if r.decodeNew && r.written {
		r.nv, _, _ = decode(newRaw)
	}
	return nil
}

// jsonbText returns the JSON text of a jsonb column value (binary format:
// a version byte, 1, then the text); nil for SQL NULL.
func jsonbText(v []byte, format int16) ([]byte, error) {
	if v == nil || format == pgx.TextFormatCode {
		return v, nil
	}
	if len(v) == 0 || v[0] != 1 {
		return nil, fmt.Errorf("postgres: unknown jsonb binary format (version byte %v)", v[:min(len(v), 1)])
	}
	return v[1:], nil
}

// boolValue decodes a non-NULL boolean column value.
func boolValue(v []byte, format int16) (bool, error) {
	switch {
	case format == pgx.BinaryFormatCode && len(v) == 1:
		return v[0] == 1, nil
	case format == pgx.TextFormatCode && len(v) == 1:
		return v[0] == 't', nil
	}
	return false, fmt.Errorf("postgres: cannot read %q (format %d) as a boolean", v, format)
}

// setFunc runs one attempt of an update function in a transaction holding
// the row lock: round trip 1 = BEGIN, create the row if missing, lock and
// read; round trip 2 = write, COMMIT.
func (b *Backend) setFunc(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (nv, old any, err error) {
	q := b.queries(k.Kind)
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, wrap(ctx, "set", subject, k.Name, err)
	}
	defer conn.Release()
	committed := false
	defer func() {
		if !committed {
			rollback(conn)
		}
	}()

	batch := &pgx.Batch{}
	batch.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
	batch.Queue(q.ensureRow, subject)
	batch.Queue(q.lockGet, subject, k.Name)
	var oldRaw []byte
	br := conn.SendBatch(ctx, batch)
	_, err = br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		err = br.QueryRow().Scan(&oldRaw)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, errRetry // flushed between the insert and the lock
	}
	if err != nil {
		return nil, nil, wrap(ctx, "set", subject, k.Name, err)
	}
	old, exists, err := decode(oldRaw)
	if err != nil {
		return nil, nil, wrap(ctx, "set", subject, k.Name, err)
	}
	// The function gets a value of its own (decode made it), so it may
	// mutate it freely; old is returned as decoded before the call.
	var arg any
	if exists {
		arg = storage.Clone(old)
	}
	nv, err = m.Apply(arg, exists)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
	}
	data, err := storage.Marshal(nv)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
	}
	batch = &pgx.Batch{}
	batch.Queue(q.write, b.textArgs([]any{subject, k.Name, data})...)
	if err := b.feedFunc(ctx, batch, subject, k, oldRaw, old, nv, data); err != nil { // change feed hook
		return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
	}
	batch.Queue(`COMMIT`)
	br = conn.SendBatch(ctx, batch)
	for i := 0; i < batch.Len() && err == nil; i++ {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, wrap(ctx, "set", subject, k.Name, err)
	}
	committed = true
	b.feedCommitted() // change feed hook: wake the relay
	return nv, old, nil
}

// rollback ends a failed transaction. A connection that cannot be rolled
// back is closed; the pool also discards any connection released inside a
// transaction.
func rollback(conn *pgxpool.Conn) {
	pc := conn.Conn().PgConn()
	if pc.IsClosed() || pc.TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		_ = conn.Conn().Close(ctx)
	}
}

// List implements [storage.Lister]: the names of the subjects starting with
// prefix, in the database's collation order, fetched Config.ListPageSize at
// a time (keyset pagination: no connection or transaction is held while the
// caller consumes the names, so a name added or removed meanwhile may or may
// not appear). The prefix is literal: LIKE metacharacters are escaped.
//
// A non-empty prefix is matched with LIKE, which the primary-key index only
// serves under the "C" collation (or with an extra text_pattern_ops index on
// subject_name): on a large table in another collation every page scans the
// table. Listing is meant for tools and maintenance, not hot paths.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if b.closed.Load() {
			yield("", fmt.Errorf("postgres: %w", storage.ErrClosed))
			return
		}
		pattern := escapeLike(prefix) + "%"
		var after string
		for page := 0; ; page++ {
			var rows pgx.Rows
			var err error
			if page == 0 {
				rows, err = b.pool.Query(ctx, b.tq.listFirst, pattern, b.cfg.ListPageSize)
			} else {
				rows, err = b.pool.Query(ctx, b.tq.listNext, pattern, b.cfg.ListPageSize, after)
			}
			var names []string
			if err == nil {
				names, err = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			if err != nil {
				yield("", fmt.Errorf("postgres: list subjects with prefix %q: %w", prefix, err))
				return
			}
			for _, n := range names {
				if !yield(n, nil) {
					return
				}
			}
			if len(names) < b.cfg.ListPageSize {
				return
			}
			after = names[len(names)-1]
		}
	}
}
