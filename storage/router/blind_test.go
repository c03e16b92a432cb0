package router_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/router"
)

// blindCounter is a member that implements storage.BlindOps and counts
// its SetBlind calls.
type blindCounter struct {
	storage.Backend
	calls atomic.Int64
}

func (b *blindCounter) SetBlind(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, error) {
	b.calls.Add(1)
	nv, _, err := b.Set(ctx, subject, k, storage.Mutation{Op: op})
	return nv, err
}

func TestSetBlindGoesToTheMembersSetBlind(t *testing.T) {
	ctx := context.Background()
	blind := &blindCounter{Backend: memory.New()}
	plain := memory.New() // not a storage.BlindOps
	r, err := router.New([]router.Route{{Prefix: "b-", Backend: blind}}, plain)
	if err != nil {
		t.Fatal(err)
	}
	inc := &storage.Op{Kind: storage.OpInc, Arg: int64(2)}
	for _, subject := range []string{"b-1", "p-1"} {
		for want := int64(2); want <= 4; want += 2 {
			nv, err := r.SetBlind(ctx, subject, dk("n"), inc)
			if err != nil || nv != want {
				t.Fatalf("SetBlind(%s) = %v, %v; want %d", subject, nv, err, want)
			}
		}
	}
	if n := blind.calls.Load(); n != 2 {
		t.Fatalf("the BlindOps member got %d SetBlind calls, want 2", n)
	}
	if v, err := plain.Get(ctx, "p-1", dk("n")); err != nil || v != int64(4) {
		t.Fatalf("the plain member holds %v, %v; want 4 (through its Set)", v, err)
	}
	if _, err := blind.Get(ctx, "p-1", dk("n")); err == nil {
		t.Fatal("p-1 was written to the b- member")
	}
}
