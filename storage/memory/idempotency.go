package memory

import (
	"context"
	"sync"
	"time"

	"github.com/krules-go/krules/storage"
)

// WithIdempotencyWindow sets how long an idempotency key is remembered
// (storage.DefaultIdempotencyWindow, 24 hours, when not given or d <= 0).
func WithIdempotencyWindow(d time.Duration) Option {
	return func(b *Backend) {
		if d > 0 {
			b.idem.window = d
		}
	}
}

var _ storage.Idempotent = (*Backend)(nil)

// IdempotencyWindow implements storage.Idempotent. Keys are kept in memory
// with the data, under the subject's lock, and lost with the process.
func (b *Backend) IdempotencyWindow() time.Duration { return b.idem.window }

// idemStore holds the recorded idempotency keys, by subject and key.
// Records are checked and written while the subject's lock is held, so a
// key's check and its write are atomic; mu only guards the map.
type idemStore struct {
	window time.Duration
	mu     sync.Mutex
	m      map[string]*idemRecord
	adds   int
}

type idemRecord struct {
	fp      string
	nv, old any
	expires time.Time
}

// idemCall is one keyed call in progress: begin it under the subject lock,
// then commit it after a successful write.
type idemCall struct {
	id, fp string
}

// begin looks the key of ctx up. Without a key it returns a nil call. A
// recorded key returns its record (replay, ctx marked) or an error for
// another request.
func (st *idemStore) begin(ctx context.Context, subject, op string, k storage.Key, m *storage.Mutation) (*idemCall, *idemRecord, error) {
	key, ok := storage.IdempotencyKeyFrom(ctx)
	if !ok {
		return nil, nil, nil
	}
	return st.beginKey(ctx, key, subject, op, k, m)
}

// beginKey is begin for a call with key.
func (st *idemStore) beginKey(ctx context.Context, key, subject, op string, k storage.Key, m *storage.Mutation) (*idemCall, *idemRecord, error) {
	fp, err := storage.Fingerprint(op, k, m)
	if err != nil {
		return nil, nil, err
	}
	id := subject + "\x00" + key
	st.mu.Lock()
	rec := st.m[id]
	if rec != nil && time.Now().After(rec.expires) {
		delete(st.m, id)
		rec = nil
	}
	st.mu.Unlock()
	if rec == nil {
		return &idemCall{id: id, fp: fp}, nil, nil
	}
	if rec.fp != fp {
		return nil, nil, storage.IdempotencyError(subject, key)
	}
	storage.MarkReplayed(ctx)
	return nil, &idemRecord{nv: storage.Clone(rec.nv), old: storage.Clone(rec.old)}, nil
}

// commit records a successful call's result.
func (st *idemStore) commit(c *idemCall, nv, old any) {
	if c == nil {
		return
	}
	now := time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.m == nil {
		st.m = make(map[string]*idemRecord)
	}
	st.m[c.id] = &idemRecord{fp: c.fp, nv: storage.Clone(nv), old: storage.Clone(old), expires: now.Add(st.window)}
	if st.adds++; st.adds%1024 == 0 {
		for id, r := range st.m {
			if now.After(r.expires) {
				delete(st.m, id)
			}
		}
	}
}
