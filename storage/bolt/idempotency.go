package bolt

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/krules-go/krules/storage"
)

// idemBucket holds the idempotency key records; like metaBucket it starts
// with NUL, so no subject can have its name, and List skips it.
var idemBucket = []byte("\x00idem")

var _ storage.Idempotent = (*Backend)(nil)

// IdempotencyWindow implements storage.Idempotent: Config.IdempotencyWindow,
// or storage.DefaultIdempotencyWindow (24 hours). Key records live in the
// file, in a bucket of their own, written in the write's transaction; an
// expired record is replaced when its key comes again, and every 256th
// keyed write sweeps the expired ones.
func (b *Backend) IdempotencyWindow() time.Duration {
	if b.idemWindow > 0 {
		return b.idemWindow
	}
	return storage.DefaultIdempotencyWindow
}

// idemCall is a keyed call in progress inside a write transaction.
type idemCall struct {
	id []byte
	fp string
}

// idemBegin looks ctx's key up in tx. No key: (nil, false, nil). A
// recorded key with the same fingerprint: replay true with the recorded
// values (ctx is marked replayed by idemReplay). Another fingerprint: an
// error wrapping ErrIdempotencyKeyReused.
func idemBegin(ctx context.Context, tx *bbolt.Tx, subject, op string, k storage.Key, m *storage.Mutation) (c *idemCall, replay bool, nv, old any, err error) {
	key, ok := storage.IdempotencyKeyFrom(ctx)
	if !ok {
		return nil, false, nil, nil, nil
	}
	fp, err := storage.Fingerprint(op, k, m)
	if err != nil {
		return nil, false, nil, nil, fmt.Errorf("bolt: %s %q of subject %q: %w", op, k.Name, subject, err)
	}
	id := []byte(subject + "\x00" + key)
	c = &idemCall{id: id, fp: fp}
	bk := tx.Bucket(idemBucket)
	if bk == nil {
		return c, false, nil, nil, nil
	}
	rec := bk.Get(id)
	if len(rec) < 8+len(fp)+1 || time.Now().UnixNano() >= int64(binary.BigEndian.Uint64(rec)) {
		return c, false, nil, nil, nil // none, or expired
	}
	if string(rec[8:8+len(fp)]) != fp || rec[8+len(fp)] != '\n' {
		return nil, false, nil, nil, storage.IdempotencyError(subject, key)
	}
	v, err := storage.Unmarshal(rec[8+len(fp)+1:])
	if err != nil {
		return nil, false, nil, nil, fmt.Errorf("bolt: idempotency record of subject %q: %w", subject, err)
	}
	r, _ := v.(map[string]any)
	return nil, true, r["new"], r["old"], nil
}

// commit records the call's result in tx.
func (c *idemCall) commit(tx *bbolt.Tx, b *Backend, nv, old any) error {
	if c == nil {
		return nil
	}
	bk, err := tx.CreateBucketIfNotExists(idemBucket)
	if err != nil {
		return err
	}
	res, err := storage.Marshal(map[string]any{"new": nv, "old": old})
	if err != nil {
		return err
	}
	now := time.Now().UnixNano()
	rec := make([]byte, 8, 8+len(c.fp)+1+len(res))
	binary.BigEndian.PutUint64(rec, uint64(now+int64(b.IdempotencyWindow())))
	rec = append(append(append(rec, c.fp...), '\n'), res...)
	if err := bk.Put(c.id, rec); err != nil {
		return err
	}
	if b.idemWrites.Add(1)%256 == 0 {
		cur := bk.Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if len(v) < 8 || now >= int64(binary.BigEndian.Uint64(v)) {
				if err := cur.Delete(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
