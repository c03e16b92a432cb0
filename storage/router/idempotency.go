package router

import (
	"context"
	"fmt"
	"time"

	"github.com/krules-go/krules/storage"
)

var _ storage.Idempotent = (*Backend)(nil)

// IdempotencyWindow implements storage.Idempotent: the shortest window of
// the members that record keys (storage.DefaultIdempotencyWindow when none
// does). A keyed Set or Delete of a subject whose member does not record
// keys is refused with storage.ErrIdempotencyUnsupported; the others reach
// their member with the key.
func (b *Backend) IdempotencyWindow() time.Duration {
	var w time.Duration
	for i := range len(b.routes) + 1 {
		if id, ok := b.member(i).(storage.Idempotent); ok {
			if d := id.IdempotencyWindow(); w == 0 || d < w {
				w = d
			}
		}
	}
	if w == 0 {
		return storage.DefaultIdempotencyWindow
	}
	return w
}

// forWrite returns the member of subject for a Set or Delete, refusing an
// idempotency key the member would not honour.
func (b *Backend) forWrite(ctx context.Context, subject string) (storage.Backend, error) {
	m := b.For(subject)
	if _, keyed := storage.IdempotencyKeyFrom(ctx); keyed {
		if _, ok := m.(storage.Idempotent); !ok {
			return nil, fmt.Errorf("router: subject %.64q: %w: its backend %T does not record idempotency keys", subject, storage.ErrIdempotencyUnsupported, m)
		}
	}
	return m, nil
}
