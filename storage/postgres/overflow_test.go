package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// An Inc beyond the float64 range is refused with nothing written (numeric
// would store it, and no reader could decode it).
func TestIncOverflowWritesNothing(t *testing.T) {
	ctx := context.Background()
	table := testenv.Unique("ovf")
	b, err := postgres.Open(ctx, testenv.PostgresURL(t), postgres.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Pool().Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
		b.Close()
	})
	k := storage.Key{Kind: storage.Default, Name: "n"}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: 1e308}); err != nil {
		t.Fatal(err)
	}
	op, _ := storage.NewOp(storage.OpInc, 1e308)
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Op: op}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("Inc past float64: err = %v, want ErrInvalidValue", err)
	}
	v, err := b.Get(ctx, "s", k)
	if err != nil || v != 1e308 {
		t.Fatalf("after the refused Inc: (%v, %v), want 1e308", v, err)
	}
	if _, err := b.Load(ctx, "s"); err != nil {
		t.Fatalf("Load after the refused Inc: %v", err)
	}
}
