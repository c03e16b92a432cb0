package krules_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/krules-go/krules"
)

// TestCacheModel drives a cached handle through many Sets and Deletes of a
// few names (so entries are removed, added back and compacted) and checks
// Keys, Get and, after Store, a fresh handle against a simple model.
func TestCacheModel(t *testing.T) {
	app, _ := newApp(t)
	rng := rand.New(rand.NewPCG(1, 2))
	s := app.Subject("model")
	var order []string
	vals := map[string]int64{}
	for step := range 2000 {
		name := fmt.Sprintf("p%d", rng.IntN(6))
		if _, ok := vals[name]; ok && rng.IntN(2) == 0 {
			if err := s.Delete(ctx, name); err != nil {
				t.Fatal(err)
			}
			delete(vals, name)
			order = slices.DeleteFunc(order, func(n string) bool { return n == name })
		} else {
			if _, ok := vals[name]; !ok {
				order = append(order, name)
			}
			vals[name] = int64(step)
			if _, _, err := s.Set(ctx, name, step); err != nil {
				t.Fatal(err)
			}
		}
		keys, err := s.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(keys, order) && !(len(keys) == 0 && len(order) == 0) {
			t.Fatalf("step %d: keys %v, want %v", step, keys, order)
		}
		if step%100 == 99 {
			if err := s.Store(ctx); err != nil {
				t.Fatal(err)
			}
			fresh, err := app.Subject("model").Dict(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"name": "model", "ext": map[string]any{}}
			for k, v := range vals {
				want[k] = v
			}
			if !reflect.DeepEqual(fresh, want) {
				t.Fatalf("step %d: stored %v, want %v", step, fresh, want)
			}
			// Reload the model order from the store (it keeps insertion order).
			if order, err = app.Subject("model").Keys(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestCanonicalValuesKeptAsGiven checks the values Set keeps without
// normalising (bool, int64, strings, non-integral floats) and the ones it
// still converts or refuses.
func TestCanonicalValuesKeptAsGiven(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("canon")
	for _, tc := range []struct {
		in, want any
	}{
		{true, true}, {int64(1 << 40), int64(1 << 40)}, {"héllo", "héllo"}, {1.5, 1.5},
		{2.0, int64(2)}, {7, int64(7)}, {nil, nil},
	} {
		nv, _, err := s.Set(ctx, "v", tc.in, krules.Muted())
		if err != nil {
			t.Fatalf("Set(%#v): %v", tc.in, err)
		}
		got, err := s.Get(ctx, "v")
		if err != nil || !reflect.DeepEqual(nv, tc.want) || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Set(%#v) = %#v, Get = %#v (%v), want %#v", tc.in, nv, got, err, tc.want)
		}
	}
	for _, bad := range []any{"a\x00b", "\xff", math.NaN(), math.Inf(1)} {
		if _, _, err := s.Set(ctx, "bad", bad); !errors.Is(err, krules.ErrInvalidValue) {
			t.Errorf("Set(%q) error = %v, want ErrInvalidValue", bad, err)
		}
	}
	if ok, _ := s.Has(ctx, "bad"); ok {
		t.Error("a refused value was written")
	}
	for _, bad := range []string{"", "a\x00", "\xfe"} {
		if _, _, err := s.Set(ctx, bad, 1); !errors.Is(err, krules.ErrInvalidName) {
			t.Errorf("Set name %q error = %v, want ErrInvalidName", bad, err)
		}
	}
}
