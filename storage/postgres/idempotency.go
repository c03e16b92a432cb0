package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/krules-go/krules/storage"
)

var _ storage.Idempotent = (*Backend)(nil)

// IdempotencyWindow implements storage.Idempotent: Config.IdempotencyWindow,
// or storage.DefaultIdempotencyWindow (24 hours).
//
// Keys are recorded in the table <Table>_idempotency (same schema; created
// on the first keyed call unless Config.NoCreate is set), one row per
// subject and key, inserted in the same transaction as the write: the
// record and the write commit or roll back together. A concurrent call with
// the same key waits on the row's unique index until the first commits,
// then replays its result. Expired rows are reused and purged in small
// batches by later keyed calls.
func (b *Backend) IdempotencyWindow() time.Duration {
	if b.cfg.IdempotencyWindow > 0 {
		return b.cfg.IdempotencyWindow
	}
	return storage.DefaultIdempotencyWindow
}

// idemState is the lazily created key table of a Backend.
type idemState struct {
	mu    sync.Mutex
	ready bool
	table string // quoted, possibly schema-qualified
	calls int
}

func (b *Backend) idemTable(ctx context.Context) (string, error) {
	st := &b.idem
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ready {
		return st.table, nil
	}
	name := b.cfg.Table + "_idempotency"
	if b.cfg.Schema != "" {
		st.table = pgx.Identifier{b.cfg.Schema, name}.Sanitize()
	} else {
		st.table = pgx.Identifier{name}.Sanitize()
	}
	if !b.cfg.NoCreate {
		err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+st.table+` (
				subject_name TEXT NOT NULL,
				key TEXT NOT NULL,
				fingerprint TEXT NOT NULL,
				result JSONB,
				expires_at TIMESTAMPTZ NOT NULL,
				PRIMARY KEY (subject_name, key)
			)`)
			return err
		})
		if err != nil {
			return "", fmt.Errorf("postgres: create table %s: %w", st.table, err)
		}
	}
	st.ready = true
	return st.table, nil
}

// keyed runs one keyed write (m nil: Delete) in a transaction with its key
// record. write runs the write on tx and returns the new and old value.
func (b *Backend) keyed(ctx context.Context, op, subject string, k storage.Key, m *storage.Mutation,
	write func(tx pgx.Tx) (nv, old any, err error)) (any, any, error) {
	key, _ := storage.IdempotencyKeyFrom(ctx)
	fp, err := storage.Fingerprint(op, k, m)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: %s property %q of subject %q: %w", op, k.Name, subject, err)
	}
	table, err := b.idemTable(ctx)
	if err != nil {
		return nil, nil, err
	}
	ms := max(b.IdempotencyWindow().Milliseconds(), 1)
	for attempt := 0; ; attempt++ {
		var nv, old any
		replay := false
		err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			// Waits for a concurrent transaction holding the same key.
			var fresh bool
			err := tx.QueryRow(ctx, `INSERT INTO `+table+` AS t (subject_name, key, fingerprint, expires_at)
				VALUES ($1::text, $2::text, $3::text, NOW() + $4::bigint * interval '1 millisecond')
				ON CONFLICT (subject_name, key) DO UPDATE
					SET fingerprint = EXCLUDED.fingerprint, result = NULL, expires_at = EXCLUDED.expires_at
					WHERE t.expires_at <= NOW()
				RETURNING true`, subject, key, fp, ms).Scan(&fresh)
			if errors.Is(err, pgx.ErrNoRows) {
				var recFP string
				var raw []byte
				if err := tx.QueryRow(ctx, `SELECT fingerprint, result FROM `+table+` WHERE subject_name = $1::text AND key = $2::text`,
					subject, key).Scan(&recFP, &raw); err != nil {
					return err
				}
				if recFP != fp {
					return storage.IdempotencyError(subject, key)
				}
				rec, err := storage.Unmarshal(raw)
				if err != nil {
					return err
				}
				r, _ := rec.(map[string]any)
				nv, old, replay = r["new"], r["old"], true
				return nil
			}
			if err != nil {
				return err
			}
			if nv, old, err = write(tx); err != nil {
				return err
			}
			res, err := storage.Marshal(map[string]any{"new": nv, "old": old})
			if err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE `+table+` SET result = $3::jsonb WHERE subject_name = $1::text AND key = $2::text`, b.textArgs([]any{subject, key, res})...)
			return err
		})
		if err == nil {
			if replay {
				storage.MarkReplayed(ctx)
			} else {
				b.feedCommitted() // change feed hook: wake the relay
				b.purgeIdem(ctx, table)
			}
			return nv, old, nil
		}
		if !errors.Is(err, errRetry) && !retryable(err) {
			if errors.Is(err, storage.ErrIdempotencyKeyReused) || errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrInvalidValue) {
				return nil, nil, err
			}
			return nil, nil, wrap(ctx, op, subject, k.Name, err)
		}
		if attempt >= b.cfg.MaxRetries {
			return nil, nil, fmt.Errorf("postgres: %s property %q of subject %q: %w after %d attempts (last: %w)", op, k.Name, subject, storage.ErrConflict, attempt+1, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, nil, wrap(ctx, op, subject, k.Name, err)
		}
	}
}

// purgeIdem deletes a few expired key records every 64 fresh keyed calls;
// errors are ignored (the next purge retries).
func (b *Backend) purgeIdem(ctx context.Context, table string) {
	b.idem.mu.Lock()
	b.idem.calls++
	due := b.idem.calls%64 == 0
	b.idem.mu.Unlock()
	if due {
		_, _ = b.pool.Exec(ctx, `DELETE FROM `+table+` WHERE ctid IN (SELECT ctid FROM `+table+` WHERE expires_at <= NOW() LIMIT 100)`)
	}
}

// setKeyed is Set with an idempotency key: the one-statement write of a
// plain value or Op, in the key's transaction.
func (b *Backend) setKeyed(ctx context.Context, subject string, k storage.Key, m storage.Mutation, sql string, arg []byte) (any, any, error) {
	return b.keyed(ctx, "set", subject, k, &m, func(tx pgx.Tx) (any, any, error) {
		var oldRaw, newRaw []byte
		var written bool
		sql, args, err := b.feedSet(ctx, k, sql, subject, k.Name, arg) // change feed hook: the record in the key's transaction
		if err != nil {
			return nil, nil, err
		}
		if err := tx.QueryRow(ctx, sql, b.textArgs(args)...).Scan(&oldRaw, &newRaw, &written); err != nil {
			return nil, nil, err
		}
		old, _, err := decode(oldRaw)
		if err != nil {
			return nil, nil, err
		}
		if !written {
			if m.Op != nil {
				if _, err := m.Op.Apply(old, true); err != nil {
					return nil, nil, fmt.Errorf("postgres: set property %q of subject %q: %w", k.Name, subject, err)
				}
			}
			return nil, nil, errRetry
		}
		if m.Op == nil {
			return m.Value, old, nil
		}
		nv, _, err := decode(newRaw)
		return nv, old, err
	})
}

// deleteKeyed is Delete with an idempotency key.
func (b *Backend) deleteKeyed(ctx context.Context, subject string, k storage.Key) (any, error) {
	_, old, err := b.keyed(ctx, "delete", subject, k, nil, func(tx pgx.Tx) (any, any, error) {
		var raw []byte
		var n int64
		sql, args, err := b.feedDelete(ctx, k, b.queries(k.Kind).del, subject, k.Name) // change feed hook
		if err != nil {
			return nil, nil, err
		}
		if err := tx.QueryRow(ctx, sql, b.textArgs(args)...).Scan(&raw, &n); err != nil {
			return nil, nil, err
		}
		old, exists, err := decode(raw)
		if err != nil {
			return nil, nil, err
		}
		if !exists || n == 0 {
			return nil, nil, notFound(subject, k.Name)
		}
		return nil, old, nil
	})
	return old, err
}
