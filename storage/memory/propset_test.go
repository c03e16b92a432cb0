package memory

import (
	"context"
	"fmt"
	"testing"

	"github.com/krules-go/krules/storage"
)

// TestOrderAfterManyDeletes deletes enough properties to compact the
// entries and checks that order, values and lookups survive.
func TestOrderAfterManyDeletes(t *testing.T) {
	ctx := context.Background()
	b := New()
	var want []string
	for i := range 40 {
		n := fmt.Sprintf("p%02d", i)
		if _, _, err := b.Set(ctx, "s", storage.Key{Kind: storage.Default, Name: n}, storage.Mutation{Value: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		n := fmt.Sprintf("p%02d", i)
		if i%4 != 0 {
			if _, err := b.Delete(ctx, "s", storage.Key{Kind: storage.Default, Name: n}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want = append(want, n)
	}
	// Re-adding a deleted name puts it at the end.
	if _, _, err := b.Set(ctx, "s", storage.Key{Kind: storage.Default, Name: "p01"}, storage.Mutation{Value: "back"}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "p01")
	snap, err := b.Load(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range snap.Props {
		got = append(got, p.Name)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	for _, n := range want[:len(want)-1] {
		v, err := b.Get(ctx, "s", storage.Key{Kind: storage.Default, Name: n})
		var i int64
		fmt.Sscanf(n, "p%d", &i)
		if err != nil || v != i {
			t.Fatalf("Get %s = %v, %v; want %d", n, v, err, i)
		}
	}
	if v, _ := b.Get(ctx, "s", storage.Key{Kind: storage.Default, Name: "p01"}); v != "back" {
		t.Fatalf("p01 = %v", v)
	}
}
