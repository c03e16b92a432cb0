package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/krules-go/krules/storage"
)

var _ storage.Idempotent = (*Backend)(nil)

// IdempotencyWindow implements storage.Idempotent: Config.IdempotencyWindow,
// or storage.DefaultIdempotencyWindow (24 hours). Key records live in the
// table <Table>_idempotency (created on the first keyed call), written in
// the write's IMMEDIATE transaction; an expired record is replaced when its
// key comes again, and every 256th keyed write deletes the expired ones.
func (b *Backend) IdempotencyWindow() time.Duration {
	if b.cfg.IdempotencyWindow > 0 {
		return b.cfg.IdempotencyWindow
	}
	return storage.DefaultIdempotencyWindow
}

func (b *Backend) idemTable() string { return quoteIdent(b.cfg.Table + "_idempotency") }

// idemCall is a keyed call in progress inside a write transaction.
type idemCall struct {
	subject, key, fp string
}

// idemBegin looks ctx's key up in tx (which holds the write lock). No key:
// nil call, no replay. A recorded key with the same fingerprint: replay
// with the recorded values. Another fingerprint: an error wrapping
// ErrIdempotencyKeyReused.
func (b *Backend) idemBegin(ctx context.Context, tx *sql.Tx, subject, op string, k storage.Key, m *storage.Mutation) (c *idemCall, replay bool, nv, old any, err error) {
	key, ok := storage.IdempotencyKeyFrom(ctx)
	if !ok {
		return nil, false, nil, nil, nil
	}
	fp, err := storage.Fingerprint(op, k, m)
	if err != nil {
		return nil, false, nil, nil, err
	}
	table := b.idemTable()
	if !b.idemReady.Load() {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
			subject_name TEXT NOT NULL,
			key TEXT NOT NULL,
			fingerprint TEXT NOT NULL,
			result TEXT NOT NULL,
			expires_at INTEGER NOT NULL,
			PRIMARY KEY (subject_name, key)
		)`); err != nil {
			return nil, false, nil, nil, fmt.Errorf("create table %s: %w", table, err)
		}
	}
	c = &idemCall{subject: subject, key: key, fp: fp}
	var recFP, res string
	err = tx.QueryRowContext(ctx, `SELECT fingerprint, result FROM `+table+` WHERE subject_name = ? AND key = ? AND expires_at > ?`,
		subject, key, time.Now().UnixMilli()).Scan(&recFP, &res)
	if errors.Is(err, sql.ErrNoRows) {
		return c, false, nil, nil, nil
	}
	if err != nil {
		return nil, false, nil, nil, err
	}
	if recFP != fp {
		return nil, false, nil, nil, storage.IdempotencyError(subject, key)
	}
	v, err := storage.Unmarshal([]byte(res))
	if err != nil {
		return nil, false, nil, nil, fmt.Errorf("idempotency record: %w", err)
	}
	r, _ := v.(map[string]any)
	return nil, true, r["new"], r["old"], nil
}

// commit records the call's result in tx.
func (c *idemCall) commit(ctx context.Context, tx *sql.Tx, b *Backend, nv, old any) error {
	if c == nil {
		return nil
	}
	res, err := storage.Marshal(map[string]any{"new": nv, "old": old})
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	table := b.idemTable()
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO `+table+` (subject_name, key, fingerprint, result, expires_at) VALUES (?, ?, ?, ?, ?)`,
		c.subject, c.key, c.fp, string(res), now+b.IdempotencyWindow().Milliseconds()); err != nil {
		return err
	}
	if b.idemWrites.Add(1)%256 == 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE expires_at <= ?`, now); err != nil {
			return err
		}
	}
	return nil
}
