package storage_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/krules-go/krules/storage"
)

type celsius float64
type label string
type flag bool
type count int
type rawMap map[string]any

type address struct {
	City    string   `json:"city"`
	Zip     string   `json:"zip,omitempty"`
	Tags    []string `json:"tags"`
	private int
}

type failingMarshaler struct{}

func (failingMarshaler) MarshalJSON() ([]byte, error) { return nil, errors.New("no") }

type withChan struct {
	C chan int `json:"c"`
}

// deepList nests n lists around a leaf.
func deepList(n int) any {
	var v any = int64(1)
	for range n {
		v = []any{v}
	}
	return v
}

func TestNormalize(t *testing.T) {
	when := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	cases := []struct {
		name string
		in   any
		want any
	}{
		{"nil", nil, nil},
		{"bool", true, true},
		{"string", "héllo", "héllo"},
		{"int", 42, int64(42)},
		{"int8", int8(-8), int64(-8)},
		{"int16", int16(16), int64(16)},
		{"int32", int32(-32), int64(-32)},
		{"int64 max", int64(math.MaxInt64), int64(math.MaxInt64)},
		{"uint", uint(7), int64(7)},
		{"uint8", uint8(255), int64(255)},
		{"uint16", uint16(65535), int64(65535)},
		{"uint32", uint32(math.MaxUint32), int64(math.MaxUint32)},
		{"uint64 in range", uint64(math.MaxInt64), int64(math.MaxInt64)},
		{"uint64 beyond int64", uint64(math.MaxUint64), float64(math.MaxUint64)},
		{"integral float", 3.0, int64(3)},
		{"negative zero", math.Copysign(0, -1), int64(0)},
		{"fractional float", 2.5, 2.5},
		{"float beyond int64", 1e20, 1e20},
		{"float at 2^63", float64(1 << 63), float64(1 << 63)},
		{"float at -2^63", -float64(1 << 63), int64(math.MinInt64)},
		{"float32", float32(1.5), 1.5},
		{"float32 integral", float32(4), int64(4)},
		{"json.Number int", json.Number("12"), int64(12)},
		{"json.Number float", json.Number("1.5"), 1.5},
		{"json.Number exponent", json.Number("1e3"), int64(1000)},
		{"named float", celsius(21.5), 21.5},
		{"named string", label("x"), "x"},
		{"named bool", flag(true), true},
		{"named int", count(3), int64(3)},
		{"empty list", []any{}, []any{}},
		{"empty map", map[string]any{}, map[string]any{}},
		{"list", []any{1, "a", nil, 2.0, []int{1}}, []any{int64(1), "a", nil, int64(2), []any{int64(1)}}},
		{"map", map[string]any{"a": 1, "b": map[string]any{"c": uint8(2)}}, map[string]any{"a": int64(1), "b": map[string]any{"c": int64(2)}}},
		{"string slice", []string{"a", "b"}, []any{"a", "b"}},
		{"string map", map[string]string{"a": "b"}, map[string]any{"a": "b"}},
		{"int slice", []int{1, 2}, []any{int64(1), int64(2)}},
		{"float slice", []float64{0.5, 1}, []any{0.5, int64(1)}},
		{"array", [2]int{3, 4}, []any{int64(3), int64(4)}},
		{"typed map", map[string]int{"n": 1}, map[string]any{"n": int64(1)}},
		{"int-keyed map", map[int]string{1: "a"}, map[string]any{"1": "a"}},
		{"named map", rawMap{"a": 1.5}, map[string]any{"a": 1.5}},
		{"struct", address{City: "Rome", Tags: []string{"x"}, private: 1}, map[string]any{"city": "Rome", "tags": []any{"x"}}},
		{"struct pointer", &address{City: "Oslo", Zip: "0150"}, map[string]any{"city": "Oslo", "zip": "0150", "tags": nil}},
		{"nil pointer", (*address)(nil), nil},
		{"time", when, "2024-05-06T07:08:09Z"},
		{"raw message", json.RawMessage(`{"a":[1,2.5]}`), map[string]any{"a": []any{int64(1), 2.5}}},
		{"bytes", []byte("hi"), "aGk="},
		{"nil int slice", []int(nil), nil},
		{"deep but allowed", deepList(500), deepList(500)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := storage.Normalize(c.in)
			if err != nil {
				t.Fatalf("Normalize(%#v): %v", c.in, err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Normalize(%#v) = %#v, want %#v (exact types)", c.in, got, c.want)
			}
			again, err := storage.Normalize(got)
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("Normalize is not idempotent: Normalize(%#v) = (%#v, %v)", got, again, err)
			}
		})
	}
}

// TestNormalizeNilCollections: a nil slice or map is JSON null, as
// encoding/json (and the reflect path of Normalize) has it, whatever its type.
func TestNormalizeNilCollections(t *testing.T) {
	for _, in := range []any{[]any(nil), []string(nil), map[string]any(nil), map[string]string(nil), []int(nil), map[string]int(nil)} {
		got, err := storage.Normalize(in)
		if err != nil || got != nil {
			t.Errorf("Normalize(%T(nil)) = (%#v, %v), want (nil, nil) like encoding/json's null", in, got, err)
		}
	}
}

func TestNormalizeInvalid(t *testing.T) {
	cyclicMap := map[string]any{}
	cyclicMap["self"] = cyclicMap
	cyclicList := []any{nil}
	cyclicList[0] = cyclicList
	cyclicNamed := rawMap{}
	cyclicNamed["self"] = cyclicNamed
	x := 1
	cases := []struct {
		name string
		in   any
	}{
		{"channel", make(chan int)},
		{"func", func() {}},
		{"complex64", complex64(1)},
		{"complex128", complex(1, 2)},
		{"NaN", math.NaN()},
		{"+Inf", math.Inf(1)},
		{"-Inf", math.Inf(-1)},
		{"float32 NaN", float32(math.NaN())},
		{"named NaN", celsius(math.NaN())},
		{"func in map", map[string]any{"f": func() {}}},
		{"channel in list", []any{1, make(chan int)}},
		{"invalid UTF-8", "a\xffb"},
		{"NUL in string", "a\x00b"},
		{"NUL in map key", map[string]any{"a\x00": 1}},
		{"invalid UTF-8 map key", map[string]any{"\xff": 1}},
		{"invalid UTF-8 in string slice", []string{"ok", "\xfe"}},
		{"NUL in string map", map[string]string{"k": "\x00"}},
		{"NUL in named string", label("a\x00")},
		{"cyclic map", cyclicMap},
		{"cyclic list", cyclicList},
		{"cyclic named map", cyclicNamed},
		{"too deep", deepList(600)},
		{"struct with a channel", withChan{C: make(chan int)}},
		{"unsafe pointer", unsafe.Pointer(&x)},
		{"bad json.Number", json.Number("abc")},
		{"huge json.Number", json.Number("1e400")},
		{"failing marshaler", failingMarshaler{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := storage.Normalize(c.in)
			if !errors.Is(err, storage.ErrInvalidValue) {
				t.Errorf("Normalize(%s) = (%#v, %v), want an error wrapping ErrInvalidValue", c.name, got, err)
			}
		})
	}
}

func TestNormalizeCopies(t *testing.T) {
	in := map[string]any{"l": []any{int64(1), map[string]any{"k": "v"}}, "s": []string{"a"}}
	out, err := storage.Normalize(in)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"l": []any{int64(1), map[string]any{"k": "v"}}, "s": []any{"a"}}
	in["l"].([]any)[0] = int64(9)
	in["l"].([]any)[1].(map[string]any)["k"] = "changed"
	in["s"].([]string)[0] = "changed"
	in["new"] = true
	if !reflect.DeepEqual(out, want) {
		t.Errorf("changing the input after Normalize changed its result: %#v, want %#v", out, want)
	}
}

func TestEqual(t *testing.T) {
	cases := []struct {
		a, b any
		want bool
	}{
		{nil, nil, true},
		{nil, false, false},
		{nil, int64(0), false},
		{nil, "", false},
		{nil, []any{}, false},
		{nil, map[string]any{}, false},
		{true, true, true},
		{true, false, false},
		{true, int64(1), false}, // unlike Python, bool and numbers are distinct
		{false, int64(0), false},
		{"a", "a", true},
		{"a", "b", false},
		{"1", int64(1), false},
		{int64(1), int64(1), true},
		{int64(1), int64(2), false},
		{int64(1), 1.0, true},
		{int64(1), 1.5, false},
		{2.5, 2.5, true},
		{2.5, 2.25, false},
		{int64(1<<53 + 1), float64(1 << 53), false},
		{int64(1 << 53), float64(1 << 53), true},
		{int64(math.MaxInt64), float64(1 << 63), false},
		{int64(math.MinInt64), -float64(1 << 63), true},
		{[]any{}, []any{}, true},
		{[]any{}, map[string]any{}, false},
		{[]any{int64(1)}, []any{1.0}, true},
		{[]any{int64(1)}, []any{int64(1), int64(2)}, false},
		{[]any{int64(1), "a"}, []any{"a", int64(1)}, false},
		{[]any{nil}, []any{}, false},
		{map[string]any{}, map[string]any{}, true},
		{map[string]any{"a": nil}, map[string]any{}, false},
		{map[string]any{"a": nil}, map[string]any{"b": nil}, false},
		{map[string]any{"a": int64(1)}, map[string]any{"a": 1.0}, true},
		{map[string]any{"a": []any{map[string]any{"b": 2.0}}}, map[string]any{"a": []any{map[string]any{"b": int64(2)}}}, true},
		{map[string]any{"a": []any{map[string]any{"b": 2.0}}}, map[string]any{"a": []any{map[string]any{"b": int64(3)}}}, false},
		{map[string]any{"a": int64(1)}, []any{int64(1)}, false},
	}
	for _, c := range cases {
		if got := storage.Equal(c.a, c.b); got != c.want {
			t.Errorf("Equal(%#v, %#v) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := storage.Equal(c.b, c.a); got != c.want {
			t.Errorf("Equal(%#v, %#v) = %v, want %v (symmetry)", c.b, c.a, got, c.want)
		}
	}
}

func TestClone(t *testing.T) {
	orig := map[string]any{"l": []any{int64(1), map[string]any{"k": "v"}}, "n": 1.5}
	c := storage.Clone(orig).(map[string]any)
	if !reflect.DeepEqual(c, orig) {
		t.Fatalf("Clone = %#v, want %#v", c, orig)
	}
	c["l"].([]any)[1].(map[string]any)["k"] = "changed"
	c["l"].([]any)[0] = int64(2)
	c["n"] = "x"
	want := map[string]any{"l": []any{int64(1), map[string]any{"k": "v"}}, "n": 1.5}
	if !reflect.DeepEqual(orig, want) {
		t.Errorf("changing a clone changed the original: %#v", orig)
	}
	for _, v := range []any{nil, true, int64(3), 2.5, "s"} {
		if got := storage.Clone(v); got != v {
			t.Errorf("Clone(%#v) = %#v", v, got)
		}
	}
	if got := storage.Clone([]any{}); !reflect.DeepEqual(got, []any{}) {
		t.Errorf("Clone([]any{}) = %#v, want an empty non-nil list", got)
	}
}

func TestMarshal(t *testing.T) {
	cases := []struct {
		in   any
		want string
	}{
		{nil, `null`},
		{true, `true`},
		{int64(-3), `-3`},
		{int64(math.MaxInt64), `9223372036854775807`},
		{3.25, `3.25`},
		{1e20, `100000000000000000000`},
		{1e21, `1e+21`},
		{"<b>&'", `"<b>&'"`}, // no HTML escaping
		{"é🙂", `"é🙂"`},
		{"a\"b\\c\n", `"a\"b\\c\n"`},
		{[]any{}, `[]`},
		{map[string]any{}, `{}`},
		{map[string]any{"b": []any{int64(1), nil}, "a": map[string]any{"c": false}}, `{"a":{"c":false},"b":[1,null]}`},
	}
	for _, c := range cases {
		got, err := storage.Marshal(c.in)
		if err != nil {
			t.Errorf("Marshal(%#v): %v", c.in, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("Marshal(%#v) = %s, want %s", c.in, got, c.want)
		}
	}
	for _, bad := range []any{math.NaN(), math.Inf(1), make(chan int), []any{func() {}}} {
		if got, err := storage.Marshal(bad); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Marshal(%T) = (%s, %v), want an error wrapping ErrInvalidValue", bad, got, err)
		}
	}
}

func TestUnmarshal(t *testing.T) {
	cases := []struct {
		in   string
		want any
	}{
		{`null`, nil},
		{`true`, true},
		{`1`, int64(1)},
		{`-0`, int64(0)},
		{`1.0`, int64(1)},
		{`1e2`, int64(100)},
		{`1.5`, 1.5},
		{`-0.5`, -0.5},
		{`9223372036854775807`, int64(math.MaxInt64)},
		{`-9223372036854775808`, int64(math.MinInt64)},
		{`9223372036854775808`, float64(1 << 63)},
		{`12345678901234567890123`, 1.2345678901234568e22},
		{`"a"`, "a"},
		{`"\u00e9\ud83d\ude00"`, "é😀"},
		{`"\u2028"`, "\u2028"},
		{` {"b": [1, 2.5, "x", null, true], "a": {}} ` + "\n", map[string]any{"a": map[string]any{}, "b": []any{int64(1), 2.5, "x", nil, true}}},
		{`[]`, []any{}},
		{`[[],{}]`, []any{[]any{}, map[string]any{}}},
	}
	for _, c := range cases {
		got, err := storage.Unmarshal([]byte(c.in))
		if err != nil {
			t.Errorf("Unmarshal(%s): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Unmarshal(%s) = %#v, want %#v (exact types)", c.in, got, c.want)
		}
	}
	for _, bad := range []string{``, ` `, `nul`, `NaN`, `Infinity`, `1e400`, `"\u0000"`, `{"\u0000":1}`, `[1,]`, `{"a"}`, `1 2`, `"a" "b"`, `'a'`} {
		if got, err := storage.Unmarshal([]byte(bad)); err == nil {
			t.Errorf("Unmarshal(%q) = %#v, want an error", bad, got)
		}
	}
}

func TestUnmarshalTrailingGarbage(t *testing.T) {
	for _, bad := range []string{`1}`, `1]`, `[1]]`, `{}}`, `"a"}`, `0}0`, `1] garbage`, `{"a":1}} {"b":2}`} {
		if got, err := storage.Unmarshal([]byte(bad)); err == nil {
			t.Errorf("Unmarshal(%q) = %#v, want an error (trailing data)", bad, got)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "user-1", "a:b", "*", " ", "日本", "🙂", "a\nb", "{x}"} {
		if err := storage.ValidateName("subject", ok); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "\xff", "a\x00b", "\x00"} {
		err := storage.ValidateName("property", bad)
		if !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want an error wrapping ErrInvalidName", bad, err)
		}
	}
}

func TestKind(t *testing.T) {
	if storage.Default.String() != "default" || storage.Extended.String() != "extended" {
		t.Errorf("Kind strings = %q, %q", storage.Default, storage.Extended)
	}
	if !storage.Default.Valid() || !storage.Extended.Valid() || storage.Kind('x').Valid() || storage.Kind(0).Valid() {
		t.Error("Kind.Valid accepts only Default and Extended")
	}
	if s := storage.Kind('x').String(); s != `Kind('x')` {
		t.Errorf("Kind('x').String() = %q", s)
	}
	if byte(storage.Default) != 'p' || byte(storage.Extended) != 'e' {
		t.Error("Kind bytes must be the Redis field prefixes 'p' and 'e'")
	}
}

func TestBatchEmpty(t *testing.T) {
	if !(storage.Batch{}).Empty() {
		t.Error("zero Batch is not Empty")
	}
	if (storage.Batch{Deletes: []storage.Key{{Kind: storage.Default, Name: "a"}}}).Empty() {
		t.Error("Batch with a delete is Empty")
	}
	if (storage.Batch{Puts: []storage.Write{{Key: storage.Key{Kind: storage.Default, Name: "a"}}}}).Empty() {
		t.Error("Batch with a put is Empty")
	}
}

func TestMutationApply(t *testing.T) {
	errNo := errors.New("no")
	inc, err := storage.NewOp(storage.OpInc, 2)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		m      storage.Mutation
		old    any
		exists bool
		want   any
		err    error // errors.Is target; errAny for any error
	}{
		{"plain value", storage.Mutation{Value: "v"}, "old", true, "v", nil},
		{"plain nil", storage.Mutation{}, "old", true, nil, nil},
		{"func normalised", storage.Mutation{Func: func(old any, exists bool) (any, error) { return []int64{old.(int64) + 1}, nil }}, int64(1), true, []any{int64(2)}, nil},
		{"func sees missing", storage.Mutation{Func: func(old any, exists bool) (any, error) { return fmt.Sprint(old, exists), nil }}, nil, false, "<nil> false", nil},
		{"func error", storage.Mutation{Func: func(any, bool) (any, error) { return 1, errNo }}, nil, false, nil, errNo},
		{"func invalid result", storage.Mutation{Func: func(any, bool) (any, error) { return math.Inf(1), nil }}, nil, false, nil, storage.ErrInvalidValue},
		{"func panic", storage.Mutation{Func: func(any, bool) (any, error) { panic("boom") }}, nil, false, nil, errAny},
		{"op", storage.Mutation{Op: inc}, int64(1), true, int64(3), nil},
		{"op wins over value", storage.Mutation{Op: inc, Value: "ignored"}, int64(1), true, int64(3), nil},
		{"op on wrong type", storage.Mutation{Op: inc}, "x", true, nil, storage.ErrInvalidValue},
	}
	for _, c := range cases {
		got, err := c.m.Apply(c.old, c.exists)
		switch {
		case c.err == nil && err != nil:
			t.Errorf("%s: Apply: %v", c.name, err)
		case c.err == errAny && err == nil, c.err != nil && c.err != errAny && !errors.Is(err, c.err):
			t.Errorf("%s: Apply = (%#v, %v), want an error wrapping %v", c.name, got, err, c.err)
		case c.err == nil && !reflect.DeepEqual(got, c.want):
			t.Errorf("%s: Apply = %#v, want %#v", c.name, got, c.want)
		}
	}
}

var errAny = errors.New("any error")
