package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"iter"
	"strings"

	"github.com/krules-go/krules/storage"
)

// colQueries are the statements on one JSON column (properties or
// ext_properties). Parameters: ?1 subject, ?2 JSON path of the property
// (see jsonPath), ?3 the value's JSON text, ?4 the property name.
//
// SQLite's JSON functions read JSON5 too, and rewrite what is not RFC 8259
// JSON (NaN becomes null, Infinity 9e999) in every value of the column they
// touch. A column holding such text, written by another program, is
// therefore never given to them: get returns the whole column instead of the
// property when the column is not RFC 8259 JSON (json_valid), put and remove
// change nothing then, and the property is found or written in Go instead
// (see lookup and rewrite), which keeps the other values' text.
type colQueries struct {
	get     string // ?1, ?2 -> json_valid(column), the property's text (or the whole column)
	put     string // ?1 subject, ?2 path, ?3 value, ?4 name
	remove  string // ?1, ?2
	raw     string // ?1 -> the column's text
	replace string // ?1, ?2 the column's new text
	inc     string // ?1, ?2 path, ?3 int64 -> the new integer; no row when not a stored integer or on overflow
}

func buildColQueries(table, col string) colQueries {
	r := strings.NewReplacer("{T}", table, "{C}", col)
	return colQueries{
		get: r.Replace(`SELECT json_valid({C}), CASE WHEN json_valid({C}) THEN {C} -> ?2 ELSE {C} END FROM {T} WHERE subject_name = ?1`),
		put: r.Replace(`INSERT INTO {T} (subject_name, {C}) VALUES (?1, json_object(?4, json(?3)))
	ON CONFLICT (subject_name) DO UPDATE SET {C} = json_set({C}, ?2, json(?3)), updated_at = CURRENT_TIMESTAMP
	WHERE json_valid({C})`),
		remove:  r.Replace(`UPDATE {T} SET {C} = json_remove({C}, ?2), updated_at = CURRENT_TIMESTAMP WHERE subject_name = ?1 AND json_valid({C})`),
		raw:     r.Replace(`SELECT {C} FROM {T} WHERE subject_name = ?1`),
		replace: r.Replace(`UPDATE {T} SET {C} = ?2, updated_at = CURRENT_TIMESTAMP WHERE subject_name = ?1`),
		// The Inc fast path (see incFast): one statement when the stored
		// value is an integer and the sum stays in the int64 range; the
		// CASEs keep the JSON functions away from a column that is not
		// RFC 8259 JSON.
		inc: r.Replace(`UPDATE {T} SET {C} = json_set({C}, ?2, ({C} ->> ?2) + ?3), updated_at = CURRENT_TIMESTAMP
	WHERE subject_name = ?1 AND CASE WHEN json_valid({C}) THEN
	  CASE WHEN json_type({C}, ?2) = 'integer' THEN
	    ({C} ->> ?2) BETWEEN (-9223372036854775807 - 1) - min(?3, 0) AND 9223372036854775807 - max(?3, 0)
	  ELSE 0 END
	ELSE 0 END
	RETURNING {C} ->> ?2`),
	}
}

// colStmts are the prepared statements of one colQueries (same fields).
// Each is prepared once on the pool; database/sql prepares it again on
// every connection the first time it runs there, and [sql.Tx.StmtContext]
// reuses the connection's preparation inside a transaction, so SQL is
// parsed once per connection, not once per call.
type colStmts struct {
	get, put, remove, raw, replace, inc *sql.Stmt
}

// tableStmts are the prepared statements of tableQueries (create aside).
type tableStmts struct {
	load, ext, flush, listFirst, listNext *sql.Stmt
}

// prepare prepares every statement (after the table exists), retried on
// busy errors like a write. On error the statements prepared so far are
// closed.
func (b *Backend) prepare(ctx context.Context) error {
	var list []struct {
		dst   **sql.Stmt
		query string
	}
	add := func(dst **sql.Stmt, query string) {
		list = append(list, struct {
			dst   **sql.Stmt
			query string
		}{dst, query})
	}
	for i := range b.q {
		q, s := &b.q[i], &b.cs[i]
		add(&s.get, q.get)
		add(&s.put, q.put)
		add(&s.remove, q.remove)
		add(&s.raw, q.raw)
		add(&s.replace, q.replace)
		add(&s.inc, q.inc)
	}
	add(&b.ts.load, b.tq.load)
	add(&b.ts.ext, b.tq.ext)
	add(&b.ts.flush, b.tq.flush)
	add(&b.ts.listFirst, b.tq.listFirst)
	add(&b.ts.listNext, b.tq.listNext)
	for _, e := range list {
		err := b.withRetry(ctx, func() error {
			st, err := b.db.PrepareContext(ctx, e.query)
			if err == nil {
				*e.dst = st
			}
			return err
		})
		if err != nil {
			b.closeStmts()
			return fmt.Errorf("sqlite: prepare statements on %s: %w", b.path, err)
		}
		b.stmts = append(b.stmts, *e.dst)
	}
	return nil
}

// closeStmts closes the prepared statements and returns the first error.
func (b *Backend) closeStmts() error {
	var first error
	for _, st := range b.stmts {
		if err := st.Close(); err != nil && first == nil {
			first = err
		}
	}
	b.stmts = nil
	return first
}

// use returns st bound to tx (st itself when tx is nil): inside a
// transaction the statement must run on the transaction's connection.
func use(ctx context.Context, tx *sql.Tx, st *sql.Stmt) *sql.Stmt {
	if tx == nil {
		return st
	}
	return tx.StmtContext(ctx, st)
}

// lookup reads one property (exists false when missing). Its value is
// decoded tolerantly (a storage.Invalid for text outside the value model).
// tx nil reads outside a transaction.
func lookup(ctx context.Context, tx *sql.Tx, q *colStmts, subject, name string) (v any, exists bool, err error) {
	var valid int64
	var text sql.NullString
	err = use(ctx, tx, q.get).QueryRowContext(ctx, subject, jsonPath(name)).Scan(&valid, &text)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if valid != 0 {
		return decode(text)
	}
	props, err := storage.UnmarshalObject([]byte(text.String))
	if err != nil {
		return nil, false, err
	}
	for _, p := range props {
		if p.Name == name {
			return p.Value, true, nil
		}
	}
	return nil, false, nil
}

// putProp writes one property's JSON text in the transaction.
func putProp(ctx context.Context, tx *sql.Tx, q *colStmts, subject, name, text string) error {
	res, err := tx.StmtContext(ctx, q.put).ExecContext(ctx, subject, jsonPath(name), text, name)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return err
	}
	return rewrite(ctx, tx, q, subject, name, &text) // the column is not RFC 8259 JSON
}

// removeProp removes one property in the transaction (a missing one is
// ignored).
func removeProp(ctx context.Context, tx *sql.Tx, q *colStmts, subject, name string) error {
	res, err := tx.StmtContext(ctx, q.remove).ExecContext(ctx, subject, jsonPath(name))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return err
	}
	return rewrite(ctx, tx, q, subject, name, nil) // no row, or not RFC 8259 JSON
}

// rewrite writes the column anew with property name set to *text (removed
// when text is nil), in Go: every other value keeps its meaning, and a value
// outside the value model keeps its stored text.
func rewrite(ctx context.Context, tx *sql.Tx, q *colStmts, subject, name string, text *string) error {
	var col string
	err := tx.StmtContext(ctx, q.raw).QueryRowContext(ctx, subject).Scan(&col)
	if errors.Is(err, sql.ErrNoRows) && text == nil {
		return nil
	}
	if err != nil {
		return err
	}
	props, err := storage.UnmarshalObject([]byte(col))
	if err != nil {
		return err
	}
	out := make([]byte, 0, len(col)+64)
	out = append(out, '{')
	member := func(k string, v []byte) {
		if len(out) > 1 {
			out = append(out, ',')
		}
		key, _ := storage.Marshal(k) // a string always encodes
		out = append(out, key...)
		out = append(out, ':')
		out = append(out, v...)
	}
	for _, p := range props {
		if p.Name == name {
			continue
		}
		if inv, ok := p.Value.(storage.Invalid); ok {
			member(p.Name, []byte(inv.Raw))
			continue
		}
		enc, err := storage.Marshal(p.Value)
		if err != nil {
			return err
		}
		member(p.Name, enc)
	}
	if text != nil {
		member(name, []byte(*text))
	}
	out = append(out, '}')
	_, err = tx.StmtContext(ctx, q.replace).ExecContext(ctx, subject, string(out))
	return err
}

// tableQueries are the statements on whole rows.
type tableQueries struct {
	create, load, ext, flush, listFirst, listNext string
}

func buildTableQueries(table string) tableQueries {
	return tableQueries{
		create: `CREATE TABLE IF NOT EXISTS ` + table + ` (
	subject_name   TEXT PRIMARY KEY,
	properties     TEXT NOT NULL DEFAULT '{}',
	ext_properties TEXT NOT NULL DEFAULT '{}',
	updated_at     TEXT DEFAULT CURRENT_TIMESTAMP
) WITHOUT ROWID`,
		load:      `SELECT properties, ext_properties FROM ` + table + ` WHERE subject_name = ?1`,
		ext:       `SELECT ext_properties FROM ` + table + ` WHERE subject_name = ?1`,
		flush:     `DELETE FROM ` + table + ` WHERE subject_name = ?1`,
		listFirst: `SELECT subject_name FROM ` + table + ` WHERE subject_name >= ?1 ORDER BY subject_name LIMIT ?2`,
		listNext:  `SELECT subject_name FROM ` + table + ` WHERE subject_name > ?1 ORDER BY subject_name LIMIT ?2`,
	}
}

// jsonPath returns the SQLite JSON path of the top-level key name:
// $."name", with '"' and '\' written as \u0022 and \u005c (SQLite ends a
// quoted label at the first '"', and decodes JSON escapes in it), so any
// name is taken literally.
func jsonPath(name string) string {
	var sb strings.Builder
	sb.Grow(len(name) + 4)
	sb.WriteString(`$."`)
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '"':
			sb.WriteString(`\u0022`)
		case '\\':
			sb.WriteString(`\u005c`)
		default:
			sb.WriteByte(c)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

// check validates the call's arguments before any SQL runs.
func (b *Backend) check(subject string, k *storage.Key) error {
	if b.closed.Load() {
		return fmt.Errorf("sqlite: %w", storage.ErrClosed)
	}
	if err := storage.ValidateKey(subject, k); err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	return nil
}

func (b *Backend) queries(k storage.Kind) *colStmts {
	if k == storage.Extended {
		return &b.cs[1]
	}
	return &b.cs[0]
}

func wrap(op, subject, prop string, err error) error {
	if prop != "" {
		return fmt.Errorf("sqlite: %s property %q of subject %q: %w", op, prop, subject, err)
	}
	return fmt.Errorf("sqlite: %s subject %q: %w", op, subject, err)
}

func notFound(subject, prop string) error {
	return fmt.Errorf("sqlite: property %q of subject %q: %w", prop, subject, storage.ErrNotFound)
}

// decode turns a property's JSON text into the value model; an invalid
// NullString (SQL NULL) is a missing property. Text outside the model
// becomes a storage.Invalid (tolerant loads); it never fails.
func decode(raw sql.NullString) (v any, exists bool, err error) {
	if !raw.Valid {
		return nil, false, nil
	}
	return storage.UnmarshalProperty([]byte(raw.String)), true, nil
}

// decodeObject turns a JSON column into properties sorted by name.
func decodeObject(raw string) ([]storage.Property, error) {
	return storage.UnmarshalObject([]byte(raw))
}

// Load implements [storage.Backend] in one query. Properties come sorted by
// name.
func (b *Backend) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	if err := b.check(subject, nil); err != nil {
		return storage.Snapshot{}, err
	}
	var props, ext string
	err := b.ts.load.QueryRowContext(ctx, subject).Scan(&props, &ext)
	if errors.Is(err, sql.ErrNoRows) {
		return storage.Snapshot{}, nil
	}
	if err != nil {
		return storage.Snapshot{}, wrap("load", subject, "", err)
	}
	var snap storage.Snapshot
	if snap.Props, err = decodeObject(props); err != nil {
		return storage.Snapshot{}, wrap("load properties of", subject, "", err)
	}
	if snap.Ext, err = decodeObject(ext); err != nil {
		return storage.Snapshot{}, wrap("load extended properties of", subject, "", err)
	}
	return snap, nil
}

// ExtProps implements [storage.Backend]; properties come sorted by name.
func (b *Backend) ExtProps(ctx context.Context, subject string) ([]storage.Property, error) {
	if err := b.check(subject, nil); err != nil {
		return nil, err
	}
	var ext string
	err := b.ts.ext.QueryRowContext(ctx, subject).Scan(&ext)
	if errors.Is(err, sql.ErrNoRows) {
		return []storage.Property{}, nil
	}
	if err != nil {
		return nil, wrap("read extended properties of", subject, "", err)
	}
	props, err := decodeObject(ext)
	if err != nil {
		return nil, wrap("read extended properties of", subject, "", err)
	}
	return props, nil
}

// Get implements [storage.Backend] in one query.
func (b *Backend) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(subject, &k); err != nil {
		return nil, err
	}
	v, exists, err := lookup(ctx, nil, b.queries(k.Kind), subject, k.Name)
	if err != nil {
		return nil, wrap("get", subject, k.Name, err)
	}
	if !exists {
		return nil, notFound(subject, k.Name)
	}
	if v, err = storage.StoredValue(v); err != nil {
		return nil, wrap("get", subject, k.Name, err)
	}
	return v, nil
}

// Set implements [storage.Backend]. Every Set is one IMMEDIATE transaction
// (it holds the database's write lock from its first statement): it reads
// the stored value, computes the new one (the plain value, the built-in
// operation through [storage.Op.Apply], or the update function), and writes
// it with one INSERT ... ON CONFLICT DO UPDATE statement (json_set). No
// other writer, in this process or another, can interleave, so there are no
// optimistic retries and the update function runs exactly once per
// successful call, while the lock is held: keep it short. When another
// process holds the lock longer than Config.BusyTimeout the whole
// transaction is retried (Config.MaxRetries); then the error wraps
// [storage.ErrConflict] and nothing was written.
func (b *Backend) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (newValue, oldValue any, err error) {
	if err := b.check(subject, &k); err != nil {
		return nil, nil, err
	}
	var data string
	if m.Op == nil && m.Func == nil {
		text, err := storage.Marshal(m.Value)
		if err != nil {
			return nil, nil, wrap("set", subject, k.Name, err)
		}
		data = string(text)
	}
	q := b.queries(k.Kind)
	if nv, old, ok, err := b.incFast(ctx, q, subject, k, m); ok || err != nil {
		if err != nil {
			return nil, nil, wrap("set", subject, k.Name, err)
		}
		return nv, old, nil
	}
	var applyErr error
	var keyed, replayed bool
	err = b.write(ctx, func(tx *sql.Tx) error {
		ic, replay, rnv, rold, err := b.idemBegin(ctx, tx, subject, "set", k, &m)
		if err != nil || replay {
			if errors.Is(err, storage.ErrIdempotencyKeyReused) || errors.Is(err, storage.ErrIdempotencyUnsupported) {
				applyErr = err
			}
			newValue, oldValue, replayed = rnv, rold, replay
			return err
		}
		keyed = ic != nil
		old, exists, err := lookup(ctx, tx, q, subject, k.Name)
		if err != nil {
			return err
		}
		nv := m.Value
		text := data
		if m.Op != nil || m.Func != nil {
			arg := old
			if m.Func != nil && exists {
				arg = storage.Clone(old)
			}
			if nv, err = m.Apply(arg, exists); err != nil {
				applyErr = err
				return err
			}
			enc, err := storage.Marshal(nv)
			if err != nil {
				applyErr = err
				return err
			}
			text = string(enc)
		}
		if err := putProp(ctx, tx, q, subject, k.Name, text); err != nil {
			return err
		}
		if err := ic.commit(ctx, tx, b, nv, old); err != nil {
			return err
		}
		newValue, oldValue, replayed = nv, old, false
		return nil
	})
	if err != nil {
		if applyErr != nil {
			return nil, nil, fmt.Errorf("sqlite: set property %q of subject %q: %w", k.Name, subject, applyErr)
		}
		return nil, nil, wrap("set", subject, k.Name, err)
	}
	if keyed || replayed {
		b.idemReady.Store(true)
	}
	if replayed {
		storage.MarkReplayed(ctx)
	}
	return newValue, oldValue, nil
}

// Delete implements [storage.Backend] in one transaction returning the
// removed value. The subject's row stays, possibly empty; [Backend.Flush]
// removes it.
func (b *Backend) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(subject, &k); err != nil {
		return nil, err
	}
	q := b.queries(k.Kind)
	var old any
	var keyed, replayed bool
	var idemErr error
	errMissing := errors.New("missing")
	err := b.write(ctx, func(tx *sql.Tx) error {
		ic, replay, _, rold, err := b.idemBegin(ctx, tx, subject, "delete", k, nil)
		if err != nil || replay {
			if errors.Is(err, storage.ErrIdempotencyKeyReused) {
				idemErr = err
			}
			old, replayed = rold, replay
			return err
		}
		keyed = ic != nil
		v, exists, err := lookup(ctx, tx, q, subject, k.Name)
		if err != nil {
			return err
		}
		if !exists {
			return errMissing
		}
		if err := removeProp(ctx, tx, q, subject, k.Name); err != nil {
			return err
		}
		if err := ic.commit(ctx, tx, b, nil, v); err != nil {
			return err
		}
		old, replayed = v, false
		return nil
	})
	if errors.Is(err, errMissing) {
		return nil, notFound(subject, k.Name)
	}
	if idemErr != nil {
		return nil, fmt.Errorf("sqlite: delete property %q of subject %q: %w", k.Name, subject, idemErr)
	}
	if err != nil {
		return nil, wrap("delete", subject, k.Name, err)
	}
	if keyed || replayed {
		b.idemReady.Store(true)
	}
	if replayed {
		storage.MarkReplayed(ctx)
	}
	return old, nil
}

// Flush implements [storage.Backend]: it deletes the subject's row.
func (b *Backend) Flush(ctx context.Context, subject string) error {
	if err := b.check(subject, nil); err != nil {
		return err
	}
	err := b.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, b.ts.flush).ExecContext(ctx, subject)
		return err
	})
	if err != nil {
		return wrap("flush", subject, "", err)
	}
	return nil
}

// Store implements [storage.Backend] in one IMMEDIATE transaction: the
// deleted properties are removed (json_remove), then the puts are written
// (json_set); a batch with puts creates the row when missing. Every value is
// checked before anything is written.
func (b *Backend) Store(ctx context.Context, subject string, batch storage.Batch) error {
	if err := b.check(subject, nil); err != nil {
		return err
	}
	for _, k := range batch.Deletes {
		if err := b.check(subject, &k); err != nil {
			return err
		}
	}
	texts := make([]string, len(batch.Puts))
	for i, w := range batch.Puts {
		if err := b.check(subject, &w.Key); err != nil {
			return err
		}
		text, err := storage.Marshal(w.Value)
		if err != nil {
			return wrap("store", subject, w.Name, err)
		}
		texts[i] = string(text)
	}
	if batch.Empty() {
		return nil
	}
	err := b.write(ctx, func(tx *sql.Tx) error {
		for _, k := range batch.Deletes {
			if err := removeProp(ctx, tx, b.queries(k.Kind), subject, k.Name); err != nil {
				return err
			}
		}
		for i, w := range batch.Puts {
			if err := putProp(ctx, tx, b.queries(w.Kind), subject, w.Name, texts[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return wrap("store", subject, "", err)
	}
	return nil
}

// List implements [storage.Lister]: the names of the subjects starting with
// prefix, in byte order, fetched Config.ListPageSize at a time (keyset
// pagination on the primary key: no transaction is held while the caller
// consumes the names, so a name added or removed meanwhile may or may not
// appear). The prefix is literal.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if b.closed.Load() {
			yield("", fmt.Errorf("sqlite: %w", storage.ErrClosed))
			return
		}
		query, after := b.ts.listFirst, prefix
		for {
			names, err := b.listPage(ctx, query, after)
			if err != nil {
				yield("", fmt.Errorf("sqlite: list subjects with prefix %q: %w", prefix, err))
				return
			}
			for _, n := range names {
				if !strings.HasPrefix(n, prefix) {
					return
				}
				if !yield(n, nil) {
					return
				}
			}
			if len(names) < b.cfg.ListPageSize {
				return
			}
			query, after = b.ts.listNext, names[len(names)-1]
		}
	}
}

func (b *Backend) listPage(ctx context.Context, query *sql.Stmt, after string) ([]string, error) {
	rows, err := query.QueryContext(ctx, after, b.cfg.ListPageSize)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}

// incFast runs an integer Inc without an idempotency key as one statement
// (no transaction of its own: a single statement is atomic): it applies
// only when the stored value is an integer and the sum stays in the int64
// range, and returns ok false otherwise (missing property, a float, another
// type, an overflow, a column that is not RFC 8259 JSON), leaving the
// general path (Go's Op.Apply inside an IMMEDIATE transaction) to decide.
// The old value is the new one minus the argument, exact for integers.
func (b *Backend) incFast(ctx context.Context, q *colStmts, subject string, k storage.Key, m storage.Mutation) (nv, old any, ok bool, err error) {
	if m.Op == nil || m.Op.Kind != storage.OpInc {
		return nil, nil, false, nil
	}
	arg, isInt := m.Op.Arg.(int64)
	if !isInt {
		return nil, nil, false, nil
	}
	if _, keyed := storage.IdempotencyKeyFrom(ctx); keyed {
		return nil, nil, false, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, false, err
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	var n int64
	err = b.withRetry(ctx, func() error {
		return q.inc.QueryRowContext(ctx, subject, jsonPath(k.Name), arg).Scan(&n)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	return n, n - arg, true, nil
}
