package redis

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/krules-go/krules/storage"
)

// encode returns the JSON text of a normalised value, byte for byte what
// storage.Marshal writes (compact, map keys sorted, no HTML escaping, U+2028
// and U+2029 escaped, numbers formatted as encoding/json does), without the
// cost of a json.Encoder per value. Values it does not handle (outside the
// value model, NaN, very deep nesting) go through storage.Marshal, which
// reports the error.
func encode(v any) ([]byte, error) {
	if b, ok := appendJSON(make([]byte, 0, 32), v, 0); ok {
		return b, nil
	}
	return storage.Marshal(v)
}

const hexDigits = "0123456789abcdef"

func appendJSON(dst []byte, v any, depth int) ([]byte, bool) {
	if depth > 1000 {
		return nil, false
	}
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), true
	case bool:
		return strconv.AppendBool(dst, x), true
	case int64:
		return strconv.AppendInt(dst, x, 10), true
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, false
		}
		format := byte('f')
		if abs := math.Abs(x); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
			format = 'e'
		}
		dst = strconv.AppendFloat(dst, x, format, -1, 64)
		if format == 'e' { // e-09 -> e-9, as encoding/json does
			if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
				dst[n-2] = dst[n-1]
				dst = dst[:n-1]
			}
		}
		return dst, true
	case string:
		return appendString(dst, x), true
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var ok bool
			if dst, ok = appendJSON(dst, e, depth+1); !ok {
				return nil, false
			}
		}
		return append(dst, ']'), true
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			var ok bool
			if dst, ok = appendJSON(dst, x[k], depth+1); !ok {
				return nil, false
			}
		}
		return append(dst, '}'), true
	}
	return nil, false
}

// appendString appends s as a JSON string with encoding/json's escaping
// (HTML escaping off).
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
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
