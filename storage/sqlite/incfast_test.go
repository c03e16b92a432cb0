package sqlite_test

import (
	"errors"
	"math"
	"path/filepath"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/sqlite"
)

// TestIncFastPath: an integer Inc of a stored integer (one statement) gives
// the new and old values the general path gives, refuses an overflow with
// nothing written, and leaves floats and missing properties to the general
// path.
func TestIncFastPath(t *testing.T) {
	ctx := t.Context()
	b := open(t, filepath.Join(t.TempDir(), "inc.db"), sqlite.Config{})
	k := storage.Key{Kind: storage.Default, Name: "n"}
	inc := func(arg any) (any, any, error) {
		return b.Set(ctx, "s", k, storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: arg}})
	}
	if nv, old, err := inc(int64(2)); err != nil || nv != int64(2) || old != nil {
		t.Fatalf("Inc of a missing property = %v, %v, %v; want 2, <nil>", nv, old, err)
	}
	if nv, old, err := inc(int64(-7)); err != nil || nv != int64(-5) || old != int64(2) {
		t.Fatalf("Inc(-7) = %v, %v, %v; want -5, 2", nv, old, err)
	}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: int64(math.MaxInt64 - 1)}); err != nil {
		t.Fatal(err)
	}
	if nv, old, err := inc(int64(1)); err != nil || nv != int64(math.MaxInt64) || old != int64(math.MaxInt64-1) {
		t.Fatalf("Inc to MaxInt64 = %v, %v, %v", nv, old, err)
	}
	if _, _, err := inc(int64(1)); !errors.Is(err, storage.ErrOverflow) {
		t.Fatalf("Inc past MaxInt64: %v, want ErrOverflow", err)
	}
	if v, err := b.Get(ctx, "s", k); err != nil || v != int64(math.MaxInt64) {
		t.Fatalf("after a refused overflow: %v, %v; want MaxInt64 unchanged", v, err)
	}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: 1.5}); err != nil {
		t.Fatal(err)
	}
	if nv, old, err := inc(int64(1)); err != nil || nv != 2.5 || old != 1.5 {
		t.Fatalf("Inc of a float = %v, %v, %v; want 2.5, 1.5", nv, old, err)
	}
}
