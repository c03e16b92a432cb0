package storage_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/krules-go/krules/storage"
)

// maxNormalizeDepth is the nesting Normalize accepts (storage.maxDepth).
const maxNormalizeDepth = 512

// FuzzValueRoundTrip feeds JSON text through the value model: whatever a
// JSON decoder produces, Normalize accepts it (unless it holds a NUL or is
// nested too deep), Marshal encodes it, and Unmarshal gives back the same
// value with the same Go types; Unmarshal's own output is canonical and
// round-trips too.
func FuzzValueRoundTrip(f *testing.F) {
	for _, seed := range []string{
		`null`, `true`, `false`, `0`, `-0`, `1`, `-1`, `1.0`, `1.5`, `-0.5`, `1e2`, `1E-2`, `5e-324`,
		`1e300`, `1.7976931348623157e308`, `9007199254740993`, `9223372036854775807`,
		`9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`, `18446744073709551616`,
		`""`, `"a"`, `"héllo 🙂"`, `"\u0000"`, `"\ud800"`, `"\ud83d\ude00"`, `"<&>\u2028"`, `"\"\\\/\b\f\n\r\t"`,
		`[]`, `{}`, `[[],{}]`, `[1,"a",null,true,2.5]`, `{"a":[1,2.5,{"b":null}],"":""}`,
		`{"a":1,"a":2}`, `{"\u0000":1}`, `[[[[[[[[[[]]]]]]]]]]`, ` {"k" : [ 1 , 2 ] } `,
		`{"n":{"n":{"n":{"n":[0.1,0.2,0.30000000000000004]}}}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A Go value as encoding/json decodes it (float64 numbers).
		var x any
		if json.Unmarshal(data, &x) == nil {
			n, err := storage.Normalize(x)
			switch {
			case err != nil && !errors.Is(err, storage.ErrInvalidValue):
				t.Fatalf("Normalize(%#v): error %v does not wrap ErrInvalidValue", x, err)
			case err != nil && !hasNUL(x) && storage.Nesting(x) <= maxNormalizeDepth:
				t.Fatalf("Normalize refused a JSON value without NUL, %d deep: %v\ninput: %q", storage.Nesting(x), err, data)
			case err == nil:
				if hasNUL(x) {
					t.Fatalf("Normalize accepted a NUL byte: %#v", n)
				}
				checkCanonical(t, n)
			}
		}

		// The model's own decoding (exact integers).
		v, err := storage.Unmarshal(data)
		if err != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("Unmarshal accepted invalid JSON %q", data)
		}
		if hasNUL(v) {
			t.Fatalf("Unmarshal(%q) let a NUL byte through: %#v", data, v)
		}
		if storage.Nesting(v) <= maxNormalizeDepth {
			checkCanonical(t, v)
		}
	})
}

// checkCanonical checks that n is in the canonical form of the model and
// survives Marshal and Unmarshal unchanged.
func checkCanonical(t *testing.T, n any) {
	t.Helper()
	again, err := storage.Normalize(n)
	if err != nil || !reflect.DeepEqual(again, n) {
		t.Fatalf("Normalize is not idempotent on %#v: (%#v, %v)", n, again, err)
	}
	if !storage.Equal(n, n) || !storage.Equal(n, storage.Clone(n)) {
		t.Fatalf("Equal is not reflexive on %#v", n)
	}
	text, err := storage.Marshal(n)
	if err != nil {
		t.Fatalf("Marshal(%#v): %v", n, err)
	}
	back, err := storage.Unmarshal(text)
	if err != nil {
		t.Fatalf("Unmarshal(Marshal(%#v)) = Unmarshal(%s): %v", n, text, err)
	}
	if !reflect.DeepEqual(back, n) {
		t.Fatalf("round trip changed the value or its types:\n  value %#v\n  JSON  %s\n  back  %#v", n, text, back)
	}
	if !storage.Equal(back, n) {
		t.Fatalf("Equal(Unmarshal(Marshal(v)), v) is false for %#v", n)
	}
	text2, err := storage.Marshal(back)
	if err != nil || !bytes.Equal(text, text2) {
		t.Fatalf("Marshal is not stable: %s then (%s, %v)", text, text2, err)
	}
}

func hasNUL(v any) bool {
	switch x := v.(type) {
	case string:
		return strings.IndexByte(x, 0) >= 0
	case []any:
		for _, e := range x {
			if hasNUL(e) {
				return true
			}
		}
	case map[string]any:
		for k, e := range x {
			if strings.IndexByte(k, 0) >= 0 || hasNUL(e) {
				return true
			}
		}
	}
	return false
}
