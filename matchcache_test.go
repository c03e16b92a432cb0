package krules_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/krules-go/krules"
)

// TestMatchCacheManyTypes emits more distinct types than the match cache
// has slots, twice over, and checks every emit reaches exactly the handlers
// whose patterns match, in registration order.
func TestMatchCacheManyTypes(t *testing.T) {
	app, _ := newApp(t)
	var got []string
	rec := func(name string) krules.HandlerFunc {
		return func(_ context.Context, ev *krules.Event) error { got = append(got, name); return nil }
	}
	app.On("evt.*").Do(rec("all"))
	app.On("evt.1*").Do(rec("one"))
	app.On("evt.?5").Do(rec("q5"))
	app.On("evt.7").Do(rec("exact7"))
	s := app.Subject("s")
	for round := range 2 {
		for i := range 20000 {
			got = got[:0]
			typ := fmt.Sprintf("evt.%d", i)
			if err := app.Emit(ctx, typ, s, nil); err != nil {
				t.Fatal(err)
			}
			want := []string{"all"}
			if strings.HasPrefix(typ, "evt.1") {
				want = append(want, "one")
			}
			if len(typ) == 6 && typ[5] == '5' {
				want = append(want, "q5")
			}
			if typ == "evt.7" {
				want = append(want, "exact7")
			}
			if !slices.Equal(got, want) {
				t.Fatalf("round %d: %s reached %v, want %v", round, typ, got, want)
			}
		}
	}
}

// TestMatchCacheSharedBytes: event types that share their bytes' address
// (substrings of one string, the first level of the match cache) are told
// apart by length and content, and an invalid type is refused even when a
// valid one at the same address is cached.
func TestMatchCacheSharedBytes(t *testing.T) {
	app, _ := newApp(t)
	var got []string
	app.On("a.*").Do(func(_ context.Context, ev *krules.Event) error { got = append(got, ev.Type); return nil })
	app.On("a.bc").Do(func(_ context.Context, ev *krules.Event) error { got = append(got, "exact:"+ev.Type); return nil })
	s := app.Subject("s")
	backing := "a.bc\x00"
	for range 3 {
		got = got[:0]
		for _, typ := range []string{backing[:3], backing[:4]} {
			if err := app.Emit(ctx, typ, s, nil); err != nil {
				t.Fatal(err)
			}
		}
		if want := []string{"a.b", "a.bc", "exact:a.bc"}; !slices.Equal(got, want) {
			t.Fatalf("reached %v, want %v", got, want)
		}
		if err := app.Emit(ctx, backing, s, nil); !errors.Is(err, krules.ErrInvalidName) {
			t.Fatalf("Emit(%q) = %v, want ErrInvalidName", backing, err)
		}
		// Same bytes at another address: the second level.
		if err := app.Emit(ctx, strings.Clone(backing[:4]), s, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMatchCacheFreshTypeStrings: a type string decoded afresh for each
// event (as transports do: a new address each time) reuses the cached
// entry of its type instead of adding one per emit; the emits of such
// strings allocate no more than those of a constant type.
func TestMatchCacheFreshTypeStrings(t *testing.T) {
	app, _ := newApp(t)
	n := 0
	app.On("a.*").Do(func(context.Context, *krules.Event) error { n++; return nil })
	s := app.Subject("s")
	const emits = 4000
	types := make([]string, emits)
	for i := range types {
		types[i] = strings.Clone(fmt.Sprintf("a.t%d", i%64))
	}
	mallocs := func(typeOf func(i int) string) float64 {
		for i := range 64 { // warm the cache
			if err := app.Emit(ctx, typeOf(i), s, nil); err != nil {
				t.Fatal(err)
			}
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range emits {
			if err := app.Emit(ctx, typeOf(i), s, nil); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		return float64(after.Mallocs-before.Mallocs) / emits
	}
	constant := mallocs(func(i int) string { return types[i%64] })
	fresh := mallocs(func(i int) string { return types[i] })
	if fresh > constant+0.2 {
		t.Fatalf("emits of fresh type strings: %.2f allocs each, of constant ones %.2f", fresh, constant)
	}
	if n != 2*(64+emits) {
		t.Fatalf("handler ran %d times, want %d", n, 2*(64+emits))
	}
}
