package redis

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"testing"

	"github.com/krules-go/krules/storage"
)

var codecTexts = []string{
	`null`, `true`, `false`, `0`, `-0`, `7`, `-12`, `007`, `-`, `--1`, `1.5`, `1e3`, `2.0`,
	`9223372036854775807`, `9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`,
	`""`, `"abc"`, `"a b <&>"`, `"é ü 😀"`, `"a\"b"`, `"a\\b"`, `"\u0041"`, `"` + "\x01" + `"`, `"` + "\xff" + `"`,
	`"a"b"`, `"`, `x`, `[1, 2]`, `{"a": 1}`, `NaN`, ` 1`, `1 `, `"\u0000"`, `"\u2028"`,
	`[]`, `{}`, `[1.5, -0, -0.0, 2.0, 1e3, 1e18, 1e19, 5e-324, 123456789012345]`, `[1e400]`, `[9007199254740993]`,
	`{"a": {"b": [true, null, "x\u0000"]}}`, `{"\u0000": 1}`, `{"a": "\ud800"}`, `[1,]`, `[1] x`, `{"a":1,"a":2}`,
	`[-9223372036854775808]`, `[9.223372036854775807e18]`, `{"n": 2, "ok": true}`, `["` + "\xff" + `"]`,
}

// TestDecodeTextMatchesStorage: the fast path gives exactly what
// storage.Unmarshal gives, errors included.
func TestDecodeTextMatchesStorage(t *testing.T) {
	for _, text := range codecTexts {
		checkDecode(t, text)
	}
}

func checkDecode(t *testing.T, text string) {
	t.Helper()
	got, gotErr := decodeText(text)
	want, wantErr := storage.Unmarshal([]byte(text))
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("decodeText(%q) err = %v, storage.Unmarshal err = %v", text, gotErr, wantErr)
	}
	if gotErr == nil && (!storage.Equal(got, want) || fmt.Sprintf("%T", got) != fmt.Sprintf("%T", want)) {
		t.Fatalf("decodeText(%q) = %#v, storage.Unmarshal = %#v", text, got, want)
	}
}

func checkEncode(t *testing.T, v any) {
	t.Helper()
	got, gotErr := encode(v)
	want, wantErr := storage.Marshal(v)
	if (gotErr != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
		t.Fatalf("encode(%#v) = %q, %v; storage.Marshal = %q, %v", v, got, gotErr, want, wantErr)
	}
}

func TestEncodeMatchesStorage(t *testing.T) {
	for _, v := range []any{
		nil, true, false, int64(0), int64(-5), int64(math.MaxInt64), int64(math.MinInt64), 1.5, 1e21,
		"", "abc", "a b <&> ~", "é", "a\"b", "a\\b", "\x01", "\x7f", "\u2028", "\xff",
		[]any{int64(1), "x"}, map[string]any{"a": "<b>"},
		0.1, -2.5, 1e-7, 1.5e-7, 1e20, 1e21, 1.2345e300, 5e-324, math.MaxFloat64, -1e-6, 123456789.125,
		"\b\f\n\r\t\x00\x1f", "a\u2029b", "\xe2\x80", "ok \xed\xa0\x80", "日本",
		map[string]any{"b": int64(1), "a": []any{nil, true, 0.5}, "é": map[string]any{}, "\n": "x"},
		[]any{}, map[string]any{}, math.NaN(), math.Inf(1),
	} {
		checkEncode(t, v)
	}
}

func FuzzCodec(f *testing.F) {
	for _, text := range codecTexts {
		f.Add(text)
	}
	f.Fuzz(func(t *testing.T, text string) {
		checkDecode(t, text)
		checkEncode(t, text)
		checkEncode(t, map[string]any{text: []any{text}})
		if v, err := storage.Unmarshal([]byte(text)); err == nil {
			checkEncode(t, v)
		}
		if f, err := strconv.ParseFloat(text, 64); err == nil {
			checkEncode(t, f)
		}
	})
}
