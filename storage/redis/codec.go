package redis

import (
	"strconv"
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
// escapes take a fast path; everything else goes through storage.Unmarshal.
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
	}
	return storage.Unmarshal([]byte(text))
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
