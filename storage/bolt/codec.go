package bolt

import (
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/krules-go/krules/storage"
)

// Fast paths for the JSON text of property values. storage.Marshal and
// storage.Unmarshal go through encoding/json's Encoder and Decoder, whose
// per-call setup dominates the cost of the small values subjects hold. The
// functions below handle the common shapes directly and give exactly the
// result of storage.Marshal / storage.Unmarshal (checked by FuzzDecodeValue
// and FuzzEncodeValue); anything else falls back to those functions.

// encodeValue returns the JSON text of a normalised value.
func encodeValue(v any) ([]byte, error) {
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
			out := make([]byte, 0, len(x)+2)
			out = append(out, '"')
			out = append(out, x...)
			return append(out, '"'), nil
		}
	}
	return storage.Marshal(v)
}

// plainASCII reports whether s is printable ASCII without '"' and '\\', the
// strings encoding/json writes verbatim (HTML escaping is off).
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// decodeValue parses the JSON text of a stored value into the value model.
func decodeValue(data []byte) (any, error) {
	p := parser{data: data}
	if v, ok := p.value(0); ok && p.skipSpace() == len(data) {
		return v, nil
	}
	return storage.Unmarshal(data)
}

// parser is a strict JSON reader for the common subset: no string escapes,
// bounded depth. ok=false means "not handled here", never "invalid".
type parser struct {
	data []byte
	pos  int
}

const maxFastDepth = 64

func (p *parser) skipSpace() int {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return p.pos
		}
	}
	return p.pos
}

func (p *parser) literal(lit string) bool {
	if len(p.data)-p.pos >= len(lit) && string(p.data[p.pos:p.pos+len(lit)]) == lit {
		p.pos += len(lit)
		return true
	}
	return false
}

func (p *parser) value(depth int) (any, bool) {
	if depth > maxFastDepth || p.skipSpace() == len(p.data) {
		return nil, false
	}
	switch c := p.data[p.pos]; {
	case c == 'n':
		return nil, p.literal("null")
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == '"':
		return p.str()
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	case c == '[':
		p.pos++
		out := []any{}
		if p.skipSpace() < len(p.data) && p.data[p.pos] == ']' {
			p.pos++
			return out, true
		}
		for {
			v, ok := p.value(depth + 1)
			if !ok {
				return nil, false
			}
			out = append(out, v)
			if p.skipSpace() == len(p.data) {
				return nil, false
			}
			switch p.data[p.pos] {
			case ',':
				p.pos++
			case ']':
				p.pos++
				return out, true
			default:
				return nil, false
			}
		}
	case c == '{':
		p.pos++
		out := map[string]any{}
		if p.skipSpace() < len(p.data) && p.data[p.pos] == '}' {
			p.pos++
			return out, true
		}
		for {
			if p.skipSpace() == len(p.data) || p.data[p.pos] != '"' {
				return nil, false
			}
			k, ok := p.str()
			if !ok || p.skipSpace() == len(p.data) || p.data[p.pos] != ':' {
				return nil, false
			}
			p.pos++
			v, ok := p.value(depth + 1)
			if !ok {
				return nil, false
			}
			out[k.(string)] = v
			if p.skipSpace() == len(p.data) {
				return nil, false
			}
			switch p.data[p.pos] {
			case ',':
				p.pos++
			case '}':
				p.pos++
				return out, true
			default:
				return nil, false
			}
		}
	}
	return nil, false
}

// str reads a string without escapes: valid UTF-8, no control characters
// (so no NUL, which the value model refuses).
func (p *parser) str() (any, bool) {
	start := p.pos + 1
	for i := start; i < len(p.data); i++ {
		switch c := p.data[i]; {
		case c == '"':
			s := p.data[start:i]
			if !utf8.Valid(s) {
				return nil, false
			}
			p.pos = i + 1
			return string(s), true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// number reads a JSON number (RFC 8259 grammar) and normalises it as the
// value model does: int64 when integral and in range, float64 otherwise.
func (p *parser) number() (any, bool) {
	d, i := p.data, p.pos
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return nil, false
	}
	integral := true
	if i < len(d) && d[i] == '.' {
		integral = false
		i++
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			return nil, false
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		integral = false
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			return nil, false
		}
	}
	tok := string(d[p.pos:i])
	if integral {
		if n, err := strconv.ParseInt(tok, 10, 64); err == nil {
			p.pos = i
			return n, true
		}
	}
	f, err := strconv.ParseFloat(tok, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, false
	}
	p.pos = i
	if f == math.Trunc(f) && f >= -(1<<63) && f < (1<<63) {
		return int64(f), true
	}
	return f, true
}
