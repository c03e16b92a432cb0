package storage_test

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/krules-go/krules/storage"
)

func TestOpKindString(t *testing.T) {
	for k, want := range map[storage.OpKind]string{
		storage.OpInc: "Inc", storage.OpAppend: "Append", storage.OpMax: "Max", storage.OpMin: "Min", storage.OpKind(99): "OpKind(99)",
	} {
		if got := k.String(); got != want {
			t.Errorf("OpKind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}

func TestNewOp(t *testing.T) {
	valid := []struct {
		kind storage.OpKind
		arg  any
		want any
	}{
		{storage.OpInc, 1, int64(1)},
		{storage.OpInc, uint8(2), int64(2)},
		{storage.OpInc, -0.5, -0.5},
		{storage.OpInc, 2.0, int64(2)},
		{storage.OpMax, float32(1.5), 1.5},
		{storage.OpMin, int64(math.MinInt64), int64(math.MinInt64)},
		{storage.OpAppend, []any{1, "a"}, []any{int64(1), "a"}},
		{storage.OpAppend, []string{"x"}, []any{"x"}},
		{storage.OpAppend, []any{}, []any{}},
	}
	for _, c := range valid {
		op, err := storage.NewOp(c.kind, c.arg)
		if err != nil {
			t.Errorf("NewOp(%v, %#v): %v", c.kind, c.arg, err)
			continue
		}
		if op.Kind != c.kind || !reflect.DeepEqual(op.Arg, c.want) {
			t.Errorf("NewOp(%v, %#v) = %+v, want Arg %#v", c.kind, c.arg, *op, c.want)
		}
	}
	invalid := []struct {
		kind storage.OpKind
		arg  any
	}{
		{storage.OpInc, "1"},
		{storage.OpInc, nil},
		{storage.OpInc, true},
		{storage.OpInc, math.NaN()},
		{storage.OpInc, []any{1}},
		{storage.OpMax, map[string]any{}},
		{storage.OpMin, math.Inf(-1)},
		{storage.OpAppend, 1},
		{storage.OpAppend, "abc"},
		{storage.OpAppend, nil},
		{storage.OpAppend, map[string]any{"a": 1}},
		{storage.OpAppend, []any{make(chan int)}},
		{storage.OpKind(0), 1},
		{storage.OpKind(42), 1},
	}
	for _, c := range invalid {
		if op, err := storage.NewOp(c.kind, c.arg); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("NewOp(%v, %#v) = (%+v, %v), want an error wrapping ErrInvalidValue", c.kind, c.arg, op, err)
		}
	}
}

var tenth, fifth = 0.1, 0.2

func TestOpApply(t *testing.T) {
	const big = int64(1) << 53
	cases := []struct {
		name   string
		kind   storage.OpKind
		arg    any
		old    any
		absent bool
		want   any
		bad    bool
	}{
		{name: "inc missing", kind: storage.OpInc, arg: 3, absent: true, want: int64(3)},
		{name: "inc null", kind: storage.OpInc, arg: 3, old: nil, want: int64(3)},
		{name: "inc int", kind: storage.OpInc, arg: 3, old: int64(4), want: int64(7)},
		{name: "inc negative", kind: storage.OpInc, arg: -10, old: int64(4), want: int64(-6)},
		{name: "inc zero", kind: storage.OpInc, arg: 0, old: int64(4), want: int64(4)},
		{name: "inc float", kind: storage.OpInc, arg: 0.5, old: int64(1), want: 1.5},
		{name: "inc float to integral", kind: storage.OpInc, arg: 0.5, old: 1.5, want: int64(2)},
		{name: "inc tenths", kind: storage.OpInc, arg: 0.2, old: 0.1, want: tenth + fifth}, // variables: float64 arithmetic, not exact constants
		{name: "inc at 2^53", kind: storage.OpInc, arg: 1, old: big - 1, want: big},
		{name: "inc beyond 2^53 stays exact in int64", kind: storage.OpInc, arg: 1, old: big, want: big + 1},
		// An integer sum outside int64 is refused (ErrOverflow), on every backend.
		{name: "inc overflow", kind: storage.OpInc, arg: 1, old: int64(math.MaxInt64), bad: true},
		{name: "inc negative overflow", kind: storage.OpInc, arg: -1, old: int64(math.MinInt64), bad: true},
		{name: "inc overflow by a large arg", kind: storage.OpInc, arg: int64(math.MaxInt64), old: int64(1), bad: true},
		{name: "inc to int64 max", kind: storage.OpInc, arg: int64(math.MaxInt64 - 1), old: int64(1), want: int64(math.MaxInt64)},
		{name: "inc int by float beyond int64", kind: storage.OpInc, arg: 1e19, old: int64(math.MaxInt64), want: float64(math.MaxInt64) + 1e19},
		{name: "inc on float beyond int64", kind: storage.OpInc, arg: 1, old: 1e20, want: 1e20},
		{name: "inc string", kind: storage.OpInc, arg: 1, old: "1", bad: true},
		{name: "inc bool", kind: storage.OpInc, arg: 1, old: true, bad: true},
		{name: "inc list", kind: storage.OpInc, arg: 1, old: []any{}, bad: true},
		{name: "inc map", kind: storage.OpInc, arg: 1, old: map[string]any{}, bad: true},

		{name: "append missing", kind: storage.OpAppend, arg: []any{1}, absent: true, want: []any{int64(1)}},
		{name: "append null", kind: storage.OpAppend, arg: []any{1}, old: nil, want: []any{int64(1)}},
		{name: "append", kind: storage.OpAppend, arg: []any{"b", []any{}}, old: []any{"a"}, want: []any{"a", "b", []any{}}},
		{name: "append nothing", kind: storage.OpAppend, arg: []any{}, old: []any{"a"}, want: []any{"a"}},
		{name: "append to string", kind: storage.OpAppend, arg: []any{1}, old: "a", bad: true},
		{name: "append to map", kind: storage.OpAppend, arg: []any{1}, old: map[string]any{}, bad: true},
		{name: "append to number", kind: storage.OpAppend, arg: []any{1}, old: int64(1), bad: true},

		{name: "max missing", kind: storage.OpMax, arg: 5, absent: true, want: int64(5)},
		{name: "max null", kind: storage.OpMax, arg: 5, old: nil, want: int64(5)},
		{name: "max keeps stored", kind: storage.OpMax, arg: 5, old: int64(9), want: int64(9)},
		{name: "max takes arg", kind: storage.OpMax, arg: 5, old: int64(1), want: int64(5)},
		{name: "max equal keeps stored", kind: storage.OpMax, arg: 5, old: int64(5), want: int64(5)},
		{name: "max float arg", kind: storage.OpMax, arg: 5.5, old: int64(5), want: 5.5},
		{name: "max float stored", kind: storage.OpMax, arg: 5, old: 5.5, want: 5.5},
		{name: "max int stored over float arg", kind: storage.OpMax, arg: 2.5, old: int64(3), want: int64(3)},
		{name: "max negative", kind: storage.OpMax, arg: -5, old: int64(-9), want: int64(-5)},
		{name: "max large ints exact", kind: storage.OpMax, arg: big + 1, old: big, want: big + 1},
		{name: "max string", kind: storage.OpMax, arg: 5, old: "9", bad: true},
		{name: "max bool", kind: storage.OpMax, arg: 5, old: false, bad: true},

		{name: "min missing", kind: storage.OpMin, arg: 5, absent: true, want: int64(5)},
		{name: "min null", kind: storage.OpMin, arg: 5, old: nil, want: int64(5)},
		{name: "min keeps stored", kind: storage.OpMin, arg: 5, old: int64(1), want: int64(1)},
		{name: "min takes arg", kind: storage.OpMin, arg: 5, old: int64(9), want: int64(5)},
		{name: "min float", kind: storage.OpMin, arg: -0.5, old: int64(0), want: -0.5},
		{name: "min large ints exact", kind: storage.OpMin, arg: big, old: big + 1, want: big},
		{name: "min list", kind: storage.OpMin, arg: 5, old: []any{int64(1)}, bad: true},
	}
	for _, c := range cases {
		op, err := storage.NewOp(c.kind, c.arg)
		if err != nil {
			t.Fatalf("%s: NewOp: %v", c.name, err)
		}
		got, err := op.Apply(c.old, !c.absent)
		if c.bad {
			if !errors.Is(err, storage.ErrInvalidValue) {
				t.Errorf("%s: %v(%#v) on %#v = (%#v, %v), want an error wrapping ErrInvalidValue", c.name, c.kind, op.Arg, c.old, got, err)
			}
			if overflow := strings.Contains(c.name, "overflow"); errors.Is(err, storage.ErrOverflow) != overflow {
				t.Errorf("%s: err = %v; wrapping ErrOverflow: %v, want %v", c.name, err, !overflow, overflow)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v(%#v) on %#v: %v", c.name, c.kind, op.Arg, c.old, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v(%#v) on %#v = %#v (%T), want %#v (%T)", c.name, c.kind, op.Arg, c.old, got, got, c.want, c.want)
		}
	}
}

// TestOpApplyNoAliasing: the result of Append shares nothing with the
// operation's argument, so one Op can be applied again and again.
func TestOpApplyNoAliasing(t *testing.T) {
	op, err := storage.NewOp(storage.OpAppend, []any{map[string]any{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range []any{nil, []any{}} {
		got, err := op.Apply(old, old != nil)
		if err != nil {
			t.Fatal(err)
		}
		got.([]any)[0].(map[string]any)["k"] = "changed"
	}
	if want := []any{map[string]any{"k": "v"}}; !reflect.DeepEqual(op.Arg, want) {
		t.Errorf("changing Apply's result changed the Op's argument: %#v", op.Arg)
	}
	old := []any{"a"}
	if _, err := op.Apply(old, true); err != nil {
		t.Fatal(err)
	}
	if len(old) != 1 || old[0] != "a" {
		t.Errorf("Apply changed the stored list it was given: %#v", old)
	}
}

// TestOpApplyHandBuilt: an Op built without NewOp, with an argument of the
// wrong type, is refused with an error, never a panic.
func TestOpApplyHandBuilt(t *testing.T) {
	for _, op := range []*storage.Op{
		{Kind: storage.OpAppend, Arg: "x"},
		{Kind: storage.OpInc, Arg: "x"},
		{Kind: storage.OpMax, Arg: nil},
		{Kind: storage.OpKind(77), Arg: 1},
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%v with Arg %#v panicked: %v", op.Kind, op.Arg, r)
				}
			}()
			for _, old := range []any{nil, []any{}, int64(1)} {
				if got, err := op.Apply(old, true); !errors.Is(err, storage.ErrInvalidValue) {
					t.Errorf("%v with Arg %#v on %#v = (%#v, %v), want an error wrapping ErrInvalidValue", op.Kind, op.Arg, old, got, err)
				}
			}
		}()
	}
}

func TestBatchHasDefault(t *testing.T) {
	d, e := storage.Key{Kind: storage.Default, Name: "a"}, storage.Key{Kind: storage.Extended, Name: "a"}
	for _, c := range []struct {
		b    storage.Batch
		want bool
	}{
		{storage.Batch{}, false},
		{storage.Batch{Deletes: []storage.Key{e}, Puts: []storage.Write{{Key: e}}}, false},
		{storage.Batch{Deletes: []storage.Key{e, d}}, true},
		{storage.Batch{Puts: []storage.Write{{Key: e}, {Key: d}}}, true},
	} {
		if got := c.b.HasDefault(); got != c.want {
			t.Errorf("%+v.HasDefault() = %v, want %v", c.b, got, c.want)
		}
	}
}
