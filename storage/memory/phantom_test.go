package memory_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

func listAll(t *testing.T, b *memory.Backend) []string {
	t.Helper()
	var out []string
	for n, err := range b.List(context.Background(), "") {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

func TestNoPhantomSubjects(t *testing.T) {
	ctx := context.Background()
	b := memory.New()
	k := storage.Key{Kind: storage.Default, Name: "n"}
	boom := errors.New("boom")
	if _, _, err := b.Set(ctx, "ghost", k, storage.Mutation{Func: func(any, bool) (any, error) { return nil, boom }}); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if err := b.Store(ctx, "ghost2", storage.Batch{Deletes: []storage.Key{k}}); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, b); len(got) != 0 {
		t.Fatalf("failed or no-op writes created subjects: %v", got)
	}
	b.Set(ctx, "real", k, storage.Mutation{Value: int64(1)})
	b.Set(ctx, "emptied", k, storage.Mutation{Value: int64(1)})
	if _, err := b.Delete(ctx, "emptied", k); err != nil {
		t.Fatal(err)
	}
	if got := listAll(t, b); !slices.Equal(got, []string{"real"}) {
		t.Fatalf("List = %v, want [real]", got)
	}
	// The emptied subject works again afterwards.
	if _, old, err := b.Set(ctx, "emptied", k, storage.Mutation{Value: int64(2)}); err != nil || old != nil {
		t.Fatalf("re-set: old=%v err=%v", old, err)
	}
}
