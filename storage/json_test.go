package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// jsonSeeds are texts on the edges of the JSON grammar and of the value
// model, gathered from the codecs the backends used to carry.
var jsonSeeds = []string{
	// scalars and numbers
	`null`, `true`, `false`, `0`, `-0`, `1`, `-1`, `7`, `-12`, `1.0`, `2.0`, `75000.0`, `0.25`, `-2.5`, `1.5`,
	`-0.0`, `1e2`, `1e3`, `1E-3`, `1e-7`, `1.5e-7`, `1e20`, `1e21`, `1e400`, `-1e400`, `1e-400`, `5e-324`,
	`1.7976931348623157e308`, `255`, `256`, `4503599627370495.5`, `4503599627370496.4`, `9007199254740991`,
	`9007199254740992`, `9007199254740993`, `-9007199254740993`, `999999999999999999`, `1000000000000000000`,
	`9223372036854775807`, `9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`,
	`9223372036854775807.0`, `9.223372036854775807e18`, `18446744073709551616`, `12345678901234567890123`,
	`1` + strings.Repeat("0", 300), `0.` + strings.Repeat("0", 320) + `5`, `0.1`, `0.30000000000000004`,
	`123456789.123456789`, `01`, `007`, `1.`, `.5`, `-`, `--1`, `+1`, `1e`, `1e+`, `-a`, `0x10`, `NaN`,
	`Infinity`, `-Infinity`,
	// strings
	`""`, `"plain"`, `"a b <&> ~"`, `"café"`, `"é ü 😀"`, `"caf\u00e9"`, `"\u00e9\ud83d\ude00"`, `"a\"b"`,
	`"a\\b"`, `"\/"`, `"\"\\\/\b\f\n\r\t"`, `"\u0041"`, `"\u0000"`, `"a\u0000b"`, "\"a\x01b\"", "\"\x7f\"",
	"\"\xff\"", "\"ok \xed\xa0\x80\"", "\"\xe2\x80\"", `"\u2028"`, `"\u2029"`, "\"\u2028\"", `"<&>"`,
	`"\ud800"`, `"\udc00"`, `"\ud800\u0041"`, `"\ud800\ud800"`, `"\ud800\udc00"`, `"\ud83d\ude00"`,
	`"\ud800\"`, `"\ud800\u"`, `"\ud800\uzzzz"`, `"\u12"`, `"\u123g"`, `"\x"`, `"\'"`, `"a"b"`, `"`,
	`"unterminated`, `"ends in escape\`, "\"\ufffd\"", "\"\xef\xbf\xbd\"", "\"\xc0\x80\"", `'a'`,
	// literals and garbage
	`tru`, `nul`, `fals`, `truex`, `nullnull`, `x`, ``, ` `, "\t\n\r ", "\v1", "\ufeff1", "\x00",
	// lists and objects
	`[]`, `{}`, `[[],{}]`, `[1,"a",[true,null],{}]`, `{"n":1,"ok":true}`, `{"a":{"b":[1.5,2]}}`,
	`{"a":1,"a":2}`, ` [ 1 , 2 ] `, ` {"k" : [ 1 , 2 ] } ` + "\n", `{"a": 1, "b": [1, 2.0]}`, `[1,]`, `[,1]`,
	`[`, `]`, `[1`, `[1 2]`, `{"a":}`, `{"a" 1}`, `{"a"}`, `{1:2}`, `{"a":1,}`, `{,}`, `{"a":1 "b":2}`,
	`{`, `{"a"`, `{"a":`, `{"a":1`, `{"\u0000":1}`, `{"a\u0000":1,"b":2}`, `{"a":"\u0000"}`,
	`{"a":"\u0000","a":1}`, `{"a":1,"a":"\u0000"}`, `{"a":1e400,"a":2}`, `{"a":[1e400],"a":[]}`,
	`{"a":1e400,"b":2}`, `{"\u0000":1,"\u0000":2}`, `[1e400, tru]`, `["\u0000", 1]`, "[\"\xff\"]",
	`{"\ud800":1,"\ufffd":2}`, `{"a": {"b": [true, null, "x\u0000"]}}`, `{"a": "\ud800"}`,
	`[1.5, -0, -0.0, 2.0, 1e3, 1e18, 1e19, 5e-324, 123456789012345]`, `[9007199254740993]`,
	`[-9223372036854775808]`, `[9.223372036854775807e18]`, `{"n": 2, "ok": true}`,
	`[1, 2.0, 2.5, "a", null, [9007199254740993], {"a": {"b": [1.0]}}]`,
	`{"age": 30, "salary": 75000.0, "big": 9007199254740993, "tags": ["a"], "m": {"x": 1.5}}`,
	`{"n":{"n":{"n":{"n":[0.1,0.2,0.30000000000000004]}}}}`,
	// trailing data
	`1 2`, `"a" "b"`, `{"k":"v"} x`, `1}`, `1]`, `[1]]`, `{}}`, `"a"}`, `0}0`, `1] garbage`,
	`{"a":1}} {"b":2}`, `{}{}`, `[] []`, `1,`, `1 ,`, "1\x00",
	// nesting around the model's limit (512) and encoding/json's (10000)
	strings.Repeat(`[`, 512) + strings.Repeat(`]`, 512),
	strings.Repeat(`[`, 513) + strings.Repeat(`]`, 513),
	strings.Repeat(`[`, 514) + strings.Repeat(`]`, 514),
	strings.Repeat(`[`, 512) + `1` + strings.Repeat(`]`, 512),
	strings.Repeat(`[`, 513) + `1` + strings.Repeat(`]`, 513),
	strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600),
	strings.Repeat(`{"a":`, 513) + `{}` + strings.Repeat(`}`, 513),
	`{"a":` + strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600) + `,"a":1}`,
	`{"a":` + strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600) + `,"b":1}`,
	strings.Repeat(`[`, 10000) + strings.Repeat(`]`, 10000),
	strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001),
	`{"a":` + strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001) + `,"a":1}`,
	strings.Repeat(`[`, 600),
}

// checkUnmarshal: Unmarshal gives what the encoding/json implementation
// gives: the same value with the same Go types, or an error of the same
// class (ErrInvalidValue for a value the model refuses, a syntax error
// otherwise).
func checkUnmarshal(t *testing.T, data []byte) {
	t.Helper()
	want, wantErr := refUnmarshal(bytes.Clone(data))
	in := bytes.Clone(data)
	got, gotErr := Unmarshal(in)
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("Unmarshal(%.200q): error %v, reference error %v", data, gotErr, wantErr)
	}
	if wantErr != nil {
		if errors.Is(gotErr, ErrInvalidValue) != errors.Is(wantErr, ErrInvalidValue) {
			t.Fatalf("Unmarshal(%.200q): error %v, reference error %v (ErrInvalidValue differs)", data, gotErr, wantErr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Unmarshal(%.200q) = %s, reference %s", data, short(got), short(want))
	}
	// The result does not share memory with the input.
	for i := range in {
		in[i] = 'x'
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Unmarshal(%.200q): the value changed with its input", data)
	}
}

// checkMarshal: Marshal writes the bytes the encoding/json implementation
// writes, and fails where it fails.
func checkMarshal(t *testing.T, v any) {
	t.Helper()
	want, wantErr := refMarshal(v)
	got, gotErr := Marshal(v)
	if (gotErr != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
		t.Fatalf("Marshal(%s) = %.300q, %v; reference %.300q, %v", short(v), got, gotErr, want, wantErr)
	}
	if gotErr != nil && !errors.Is(gotErr, ErrInvalidValue) {
		t.Fatalf("Marshal(%s): error %v does not wrap ErrInvalidValue", short(v), gotErr)
	}
}

// short is v in Go syntax, cut to a readable length.
func short(v any) string {
	s := fmt.Sprintf("%#v", v)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func TestUnmarshalMatchesReference(t *testing.T) {
	for _, s := range jsonSeeds {
		checkUnmarshal(t, []byte(s))
	}
}

func TestUnmarshalErrorClass(t *testing.T) {
	for _, s := range []string{`"\u0000"`, `{"\u0000":1}`, `[1e400]`, strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600)} {
		if _, err := Unmarshal([]byte(s)); !errors.Is(err, ErrInvalidValue) {
			t.Errorf("Unmarshal(%.40q) = %v, want an error wrapping ErrInvalidValue", s, err)
		}
	}
	for _, s := range []string{``, `[1,]`, `{"a"}`, `1 2`, "\"\x01\"", strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001)} {
		if _, err := Unmarshal([]byte(s)); err == nil || errors.Is(err, ErrInvalidValue) {
			t.Errorf("Unmarshal(%.40q) = %v, want a syntax error", s, err)
		}
	}
}

type celsius float64

type point struct {
	X, Y int
	Tag  string `json:"tag,omitempty"`
}

func TestMarshalMatchesReference(t *testing.T) {
	values := []any{
		nil, true, false, int64(0), int64(-5), int64(math.MaxInt64), int64(math.MinInt64),
		0.0, math.Copysign(0, -1), 0.1, -2.5, 1.5, 1e-6, 1e-7, 1.5e-7, -1e-6, 9.99e-7, 1e20, 1e21, -1e21,
		1.2345e300, 5e-324, math.MaxFloat64, -math.MaxFloat64, 123456789.125, 1e100, 1e-100, float64(1 << 63),
		math.NaN(), math.Inf(1), math.Inf(-1),
		"", "abc", "a b <&> ~", "é", "a\"b", "a\\b", "\x01", "\x7f", "\u2028", "\u2029", "a\u2029b", "\xff",
		"\b\f\n\r\t\x00\x1f", "\xe2\x80", "ok \xed\xa0\x80", "日本", "\ufffd", "😀", "\xf0\x9f\x98",
		[]any{}, map[string]any{}, []any(nil), map[string]any(nil), []any{[]any(nil), map[string]any(nil)},
		[]any{int64(1), "x"}, map[string]any{"a": "<b>"},
		map[string]any{"b": int64(1), "a": []any{nil, true, 0.5}, "é": map[string]any{}, "\n": "x", "B": 1e30, "": "",
			"\xff": "bad key", "\ufffd": "replacement"},
		[]any{math.NaN()}, map[string]any{"x": []any{math.Inf(1)}},
		// outside the model: encoding/json's encoding, or its error
		int(3), float32(0.1), []string{"a"}, map[string]string{"b": "1", "a": "2"}, celsius(1.5),
		point{1, 2, "<"}, &point{}, time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), json.Number("12"),
		[]any{int(1), point{}}, map[string]any{"t": time.Unix(0, 0).UTC()}, make(chan int), func() {},
		[]any{func() {}}, complex(1, 2), map[int]string{2: "b", 10: "a"},
	}
	deep := any(int64(1))
	for range 1200 {
		deep = []any{deep}
	}
	values = append(values, deep)
	deepMap := any(map[string]any{})
	for range 1100 {
		deepMap = map[string]any{"k": deepMap, "a": int64(1)}
	}
	values = append(values, deepMap)
	for _, v := range values {
		checkMarshal(t, v)
	}
	// A cycle is refused, as encoding/json refuses it (not printed: %#v
	// of a cycle does not end).
	cyclic := map[string]any{}
	cyclic["self"] = []any{cyclic}
	if _, err := refMarshal(cyclic); err == nil {
		t.Fatal("reference Marshal accepted a cycle")
	}
	for _, v := range []any{cyclic, []any{cyclic}} {
		if got, err := Marshal(v); !errors.Is(err, ErrInvalidValue) {
			t.Fatalf("Marshal(cycle) = %.100q, %v; want an error wrapping ErrInvalidValue", got, err)
		}
	}
	for _, s := range jsonSeeds {
		if v, err := refUnmarshal([]byte(s)); err == nil {
			checkMarshal(t, v)
		}
		var x any
		if json.Unmarshal([]byte(s), &x) == nil {
			checkMarshal(t, x)
		}
		checkMarshal(t, s)
	}
}

// FuzzUnmarshalMatchesReference compares Unmarshal with the encoding/json
// implementation it replaces, value for value (Go types included) and error
// for error.
//
//	go test -run '^$' -fuzz FuzzUnmarshalMatchesReference -fuzztime 30s ./storage/
func FuzzUnmarshalMatchesReference(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkUnmarshal(t, data)
	})
}

// FuzzMarshalMatchesReference compares Marshal with the encoding/json
// implementation it replaces, byte for byte, on values derived from the
// input: the value it decodes to (exact and with encoding/json's float64
// numbers), the input as a string and as a map key, and the float64 and
// int64 made of its first eight bytes.
//
//	go test -run '^$' -fuzz FuzzMarshalMatchesReference -fuzztime 30s ./storage/
func FuzzMarshalMatchesReference(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if v, err := refUnmarshal(data); err == nil {
			checkMarshal(t, v)
			checkMarshal(t, []any{v, map[string]any{string(data): v}})
		}
		var x any
		if json.Unmarshal(data, &x) == nil {
			checkMarshal(t, x)
		}
		s := string(data)
		checkMarshal(t, s)
		checkMarshal(t, map[string]any{s: []any{s}, "k": s})
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			checkMarshal(t, f)
		}
		if len(data) >= 8 {
			bits := binary.LittleEndian.Uint64(data)
			checkMarshal(t, math.Float64frombits(bits))
			checkMarshal(t, int64(bits))
		}
	})
}

// TestUnmarshalPythonText: Python KRules' json.dumps output (spaces after
// separators, ASCII escapes, floats with .0).
func TestUnmarshalPythonText(t *testing.T) {
	got, err := Unmarshal([]byte(`{"a": 1, "b": [1, 2.0, 2.5], "s": "caf\u00e9 \ud83d\ude00", "n": null, "t": true}`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"a": int64(1), "b": []any{int64(1), int64(2), 2.5}, "s": "café 😀", "n": nil, "t": true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
}
