package observe_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/observe"
)

// blindInner implements storage.BlindOps and counts its SetBlind calls.
type blindInner struct {
	storage.Backend
	calls atomic.Int64
}

func (b *blindInner) SetBlind(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, error) {
	b.calls.Add(1)
	nv, _, err := b.Set(ctx, subject, k, storage.Mutation{Op: op})
	return nv, err
}

func TestSetBlindForwardedAndCountedAsSet(t *testing.T) {
	ctx := t.Context()
	inc := &storage.Op{Kind: storage.OpInc, Arg: int64(3)}
	inner := &blindInner{Backend: memory.New()}
	f := newFixture(t, inner)
	if nv, err := f.b.(storage.BlindOps).SetBlind(ctx, "s", pk("n"), inc); err != nil || nv != int64(3) {
		t.Fatalf("SetBlind = %v, %v; want 3", nv, err)
	}
	if n := inner.calls.Load(); n != 1 {
		t.Fatalf("the inner SetBlind ran %d times, want 1", n)
	}
	if got := f.count(observe.OpSet, observe.OutcomeOK); got != 1 {
		t.Fatalf("set ok counted %v times, want 1", got)
	}
	// An inner backend without BlindOps: its Set, the same result.
	plain := observe.Wrap(memory.New(), observe.Config{NoTracing: true})
	for want := int64(3); want <= 6; want += 3 {
		if nv, err := plain.(storage.BlindOps).SetBlind(ctx, "s", pk("n"), inc); err != nil || nv != want {
			t.Fatalf("SetBlind over a plain backend = %v, %v; want %d", nv, err, want)
		}
	}
}
