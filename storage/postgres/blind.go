package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/krules-go/krules/storage"
)

var _ storage.BlindOps = (*Backend)(nil)

// SetBlind implements [storage.BlindOps]: the operation runs as ONE plain
// UPDATE of the subject's row that computes the new value with the
// expressions and the type and range checks of the normal statement
// ([Backend.Set]) and returns it; the old value is not read back and no
// row lock is taken before the write. When the subject has no row yet, or
// the checks refuse the stored value (wrong type, an int64 overflow, a
// number beyond float64, a list Set appends in Go), nothing is written and
// SetBlind runs Set, which inserts the row or reports exactly Set's error.
// An idempotency key in ctx and Config.ChangeFeed (the record needs the old
// value) go to Set at once. The old value Set returns is dropped.
func (b *Backend) SetBlind(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, error) {
	if err := b.check(subject, &k); err != nil {
		return nil, err
	}
	if _, keyed := storage.IdempotencyKeyFrom(ctx); keyed || b.cfg.ChangeFeed ||
		op.Kind < storage.OpInc || op.Kind > storage.OpMin || checkOpArg(op) != nil {
		return b.setDropOld(ctx, subject, k, op)
	}
	c := stmtCalls.Get().(*stmtCall)
	defer c.put()
	arg, err := appendArg(c.arg[:0], op.Arg)
	if err != nil {
		return b.setDropOld(ctx, subject, k, op)
	}
	c.arg = arg
	c.subject.s, c.name.s = subject, k.Name
	c.args = [3]any{&c.subject, &c.name, arg}
	err = b.pool.QueryRow(ctx, b.queries(k.Kind).blind[op.Kind], b.textArgs(c.args[:])...).Scan(&c.blind)
	if err == nil {
		return c.blind.nv, nil
	}
	var pe *pgconn.PgError
	if errors.Is(err, pgx.ErrNoRows) || errors.As(err, &pe) {
		// Nothing was written: no row, a value the checks refuse, or a
		// statement PostgreSQL failed (Set retries what can be retried).
		return b.setDropOld(ctx, subject, k, op)
	}
	return nil, wrap(ctx, "set", subject, k.Name, err)
}

// setDropOld is Set of op without its old value.
func (b *Backend) setDropOld(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, error) {
	nv, _, err := b.Set(ctx, subject, k, storage.Mutation{Op: op})
	return nv, err
}

// blindRow scans the new value blindTemplate returns, straight from the
// driver's buffer (pgx.RowScanner).
type blindRow struct{ nv any }

// ScanRow implements pgx.RowScanner.
func (r *blindRow) ScanRow(rows pgx.Rows) error {
	vals, fds := rows.RawValues(), rows.FieldDescriptions()
	if len(vals) != 1 || len(fds) != 1 {
		return fmt.Errorf("postgres: blind statement returned %d columns, want 1", len(vals))
	}
	raw, err := jsonbText(vals[0], fds[0].Format)
	if err != nil {
		return err
	}
	r.nv, _, _ = decode(raw)
	return nil
}
