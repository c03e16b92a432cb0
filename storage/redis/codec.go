package redis

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/krules-go/krules/storage"
)

// encode returns the JSON text of a normalised value, exactly as
// storage.Marshal writes it. Integers, booleans, null and plain ASCII strings
// (the bulk of property values) take a fast path; everything else goes
// through storage.Marshal.
func encode(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return []byte("null"), nil
	case bool:
		if x {
			return []byte("true"), nil
		}
		return []byte("false"), nil
	case int64:
		return strconv.AppendInt(make([]byte, 0, 20), x, 10), nil
	case string:
		if plainASCII(x) {
			b := make([]byte, 0, len(x)+2)
			b = append(b, '"')
			b = append(b, x...)
			return append(b, '"'), nil
		}
	}
	return storage.Marshal(v)
}

// plainASCII reports whether s is printable ASCII without '"' or '\', so
// that its JSON text is s between quotes.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// decodeText reads stored JSON text into the value model, with the result
// storage.Unmarshal gives. Integers, booleans, null and strings without
// escapes take a fast path; so do lists and objects without long digit runs
// (see decodeComposite); everything else goes through storage.Unmarshal.
func decodeText(text string) (any, error) {
	switch text {
	case "null":
		return nil, nil
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	if n := len(text); n >= 2 && text[0] == '"' && text[n-1] == '"' {
		inner := text[1 : n-1]
		if plainString(inner) {
			return inner, nil
		}
	} else if isJSONInt(text) {
		if i, err := strconv.ParseInt(text, 10, 64); err == nil {
			return i, nil
		}
	} else if text != "" && (text[0] == '{' || text[0] == '[') {
		if v, ok := decodeComposite(text); ok {
			return v, nil
		}
	}
	return storage.Unmarshal([]byte(text))
}

// decodeComposite decodes a list or object with encoding/json's plain
// Unmarshal, much cheaper than the number-preserving decoder, and then
// applies the value model's number rule (integral numbers within int64
// become int64). That is exact only when every number fits a float64
// without rounding, so texts with a run of 16 or more digits are left to
// storage.Unmarshal, as are invalid texts and strings with NUL bytes (ok
// false), so that errors stay the same.
func decodeComposite(text string) (any, bool) {
	run := 0
	for i := 0; i < len(text); i++ {
		if c := text[i]; c >= '0' && c <= '9' {
			if run++; run >= 16 {
				return nil, false
			}
		} else {
			run = 0
		}
	}
	var v any
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		return nil, false
	}
	return fixNumbers(v)
}

// fixNumbers converts, in place, integral float64s within the int64 range to
// int64 and refuses strings containing NUL.
func fixNumbers(v any) (any, bool) {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && x >= -(1<<63) && x < (1<<63) {
			return int64(x), true
		}
		return x, true
	case string:
		return x, strings.IndexByte(x, 0) < 0
	case []any:
		for i, e := range x {
			n, ok := fixNumbers(e)
			if !ok {
				return nil, false
			}
			x[i] = n
		}
	case map[string]any:
		for k, e := range x {
			if strings.IndexByte(k, 0) >= 0 {
				return nil, false
			}
			n, ok := fixNumbers(e)
			if !ok {
				return nil, false
			}
			x[k] = n
		}
	}
	return v, true
}

// plainString reports whether s is valid UTF-8 without control characters,
// '"' or '\': the inside of a JSON string that needs no unescaping.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return utf8.ValidString(s)
}

// isJSONInt reports whether s is a JSON integer: -?(0|[1-9][0-9]*).
func isJSONInt(s string) bool {
	if s != "" && s[0] == '-' {
		s = s[1:]
	}
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
