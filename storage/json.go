package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// The JSON text of the value model. Marshal and Unmarshal are hand-written
// for the model's seven types because the backends call them once per
// property on every load and store; they give exactly the results of
// encoding/json (an Encoder with SetEscapeHTML(false), a Decoder with
// UseNumber followed by the model's number rule), which the fuzz tests
// FuzzMarshalMatchesReference and FuzzUnmarshalMatchesReference check
// against the encoding/json implementation byte for byte and value for value.

// Marshal encodes a normalised value as compact JSON without HTML escaping,
// the text the persistent backends store: the bytes an encoding/json Encoder
// with SetEscapeHTML(false) writes, without its trailing newline. Object keys
// are sorted (byte-wise), strings are escaped as encoding/json escapes them
// (control characters, '"' and '\\', U+2028 and U+2029; invalid UTF-8 becomes
// \ufffd) and numbers are formatted as encoding/json formats them (float64
// in exponent form below 1e-6 and from 1e21 on).
//
// Values outside the model are encoded by encoding/json. A value it cannot
// encode (NaN, ±Inf, a channel, a function, a cycle, a failing
// json.Marshaler) yields an error wrapping [ErrInvalidValue]. Marshal only
// reads v; it is safe for concurrent use on values nobody is modifying.
func Marshal(v any) ([]byte, error) {
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
	case float64:
		if b, ok := appendFloat(make([]byte, 0, 24), x); ok {
			return b, nil
		}
	case string:
		return appendString(make([]byte, 0, len(x)+2), x), nil
	case Invalid:
		return nil, invalid("a stored invalid value (storage.Invalid) cannot be written")
	case []any, map[string]any:
		e := encoders.Get().(*encoder)
		ok := e.value(v, 0)
		var out []byte
		if ok {
			out = bytes.Clone(e.buf)
		}
		e.reset()
		encoders.Put(e)
		if ok {
			return out, nil
		}
	}
	return marshalReflect(v)
}

// marshalReflect encodes any value with encoding/json: values outside the
// model, and those the hand-written encoder leaves to it (NaN and ±Inf, for
// the error; nesting deeper than maxEncodeDepth, for cycle detection).
func marshalReflect(v any) ([]byte, error) {
	if holdsInvalid(v, 0) {
		return nil, invalid("a stored invalid value (storage.Invalid) cannot be written")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, invalid("%v", err)
	}
	b := buf.Bytes()
	return b[:len(b)-1], nil // drop Encode's newline
}

// holdsInvalid reports whether v holds an Invalid in its lists and objects
// (down to maxEncodeDepth; deeper, encoding/json reports the cycle).
func holdsInvalid(v any, depth int) bool {
	if depth > maxEncodeDepth {
		return false
	}
	switch x := v.(type) {
	case Invalid:
		return true
	case []any:
		for _, e := range x {
			if holdsInvalid(e, depth+1) {
				return true
			}
		}
	case map[string]any:
		for _, e := range x {
			if holdsInvalid(e, depth+1) {
				return true
			}
		}
	}
	return false
}

// maxEncodeDepth is where the hand-written encoder hands over to
// encoding/json, which detects cycles from that depth on.
const maxEncodeDepth = 1000

// encoder holds the buffers of one Marshal call; encoders are pooled.
type encoder struct {
	buf  []byte
	keys []string // stack of the sorted keys of the objects being written
}

var encoders = sync.Pool{New: func() any { return &encoder{buf: make([]byte, 0, 512)} }}

func (e *encoder) reset() {
	if cap(e.buf) > 64<<10 {
		e.buf = make([]byte, 0, 512)
	}
	e.buf = e.buf[:0]
	clear(e.keys)
	e.keys = e.keys[:0]
}

// value appends the JSON text of v to e.buf; false means v is not a
// model value encoding/json would encode the same way (the caller then
// starts over with encoding/json).
func (e *encoder) value(v any, depth int) bool {
	switch x := v.(type) {
	case nil:
		e.buf = append(e.buf, "null"...)
	case bool:
		e.buf = strconv.AppendBool(e.buf, x)
	case int64:
		e.buf = strconv.AppendInt(e.buf, x, 10)
	case float64:
		var ok bool
		if e.buf, ok = appendFloat(e.buf, x); !ok {
			return false
		}
	case string:
		e.buf = appendString(e.buf, x)
	case []any:
		if x == nil {
			e.buf = append(e.buf, "null"...)
			return true
		}
		if depth >= maxEncodeDepth {
			return false
		}
		e.buf = append(e.buf, '[')
		for i, el := range x {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			if !e.value(el, depth+1) {
				return false
			}
		}
		e.buf = append(e.buf, ']')
	case map[string]any:
		if x == nil {
			e.buf = append(e.buf, "null"...)
			return true
		}
		if depth >= maxEncodeDepth {
			return false
		}
		// Nested objects push their keys above ours; if that grows e.keys
		// into a new array, keys keeps pointing at the old one, which
		// nothing writes any more.
		base := len(e.keys)
		for k := range x {
			e.keys = append(e.keys, k)
		}
		keys := e.keys[base:]
		slices.Sort(keys)
		e.buf = append(e.buf, '{')
		for i, k := range keys {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			e.buf = appendString(e.buf, k)
			e.buf = append(e.buf, ':')
			if !e.value(x[k], depth+1) {
				return false
			}
		}
		e.buf = append(e.buf, '}')
		clear(e.keys[base:])
		e.keys = e.keys[:base]
	default:
		return false
	}
	return true
}

// appendFloat appends f as encoding/json writes a float64: the shortest
// decimal that round-trips, in exponent form below 1e-6 and from 1e21 on,
// with a two-digit negative exponent trimmed (1e-07 -> 1e-7). NaN and ±Inf
// are not JSON (ok false).
func appendFloat(dst []byte, f float64) (_ []byte, ok bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst, true
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string escaped as encoding/json escapes it
// with HTML escaping off: '"', '\\' and control characters (\b, \f, \n, \r,
// \t by name, the others as \u00XX), U+2028 and U+2029 as \u2028 and \u2029,
// and each byte of invalid UTF-8 as \ufffd. Everything else, DEL included, is
// written as is.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
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
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Unmarshal decodes one JSON value into the value model: the text Marshal
// writes, and any other JSON text, such as Python's json.dumps output
// ({"a": 1, "b": [1, 2.0]}); whitespace is allowed around tokens, nothing
// else after the value.
//
// Numbers become int64 when they are integral and within the int64 range
// (1, -0, 2.0 and 1e2 included; integers are read exactly, however many
// digits they have), float64 otherwise. Strings are decoded as encoding/json
// decodes them: escapes resolved, invalid UTF-8 and unpaired surrogates
// replaced by U+FFFD. Of an object's repeated keys the last one wins.
//
// Text that is not one JSON value yields a syntax error. A value the model
// refuses yields an error wrapping [ErrInvalidValue]: a string or key holding
// NUL, a number beyond the float64 range (1e400), nesting deeper than
// [Normalize] accepts. Unmarshal never retains data; it is safe for
// concurrent use.
func Unmarshal(data []byte) (any, error) {
	v, err := unmarshal(data, false)
	if err != nil {
		return nil, err
	}
	if p, ok := v.(*poison); ok {
		return nil, p.err
	}
	return v, nil
}

// unmarshal reads one JSON document; a value the model refuses comes back
// as a *poison.
func unmarshal(data []byte, python bool) (any, error) {
	if d := (decoder{data: data}); d.skipSpace() < len(data) && (data[d.pos] == '[' || data[d.pos] == '{') {
		pd := decoders.Get().(*decoder)
		pd.data, pd.pos, pd.python = data, d.pos, python
		v, err := pd.document()
		pd.reset()
		decoders.Put(pd)
		return v, err
	}
	d := decoder{data: data, python: python}
	return d.document()
}

// maxNesting is encoding/json's nesting limit: deeper text is a syntax
// error, not merely a value the model refuses.
const maxNesting = 10000

// decoder reads one JSON document. Its scratch stacks collect the elements
// of the lists and objects being read, so that each gets one allocation of
// its final size; decoders are pooled.
type decoder struct {
	data []byte
	pos  int
	// python makes NaN, Infinity and -Infinity (which Python's json.dumps
	// writes by default) values the model refuses instead of syntax errors,
	// so that a tolerant load can skip them (see UnmarshalObject).
	python bool
	elems  []any      // stack of list elements
	pairs  []keyValue // stack of object members
}

type keyValue struct {
	key string
	val any
}

var decoders = sync.Pool{New: func() any { return new(decoder) }}

func (d *decoder) reset() {
	d.data = nil
	d.python = false
	clear(d.elems)
	d.elems = d.elems[:0]
	clear(d.pairs)
	d.pairs = d.pairs[:0]
	if cap(d.elems) > 4096 {
		d.elems = nil
	}
	if cap(d.pairs) > 4096 {
		d.pairs = nil
	}
}

// poison stands for a value the model refuses (NUL in a string, a number
// out of range, nesting too deep). Such an error is not raised at once:
// encoding/json would still report a later syntax error, and a repeated
// object key can replace the refused value, which then does not count.
// A list or object holding a poison is poison itself.
type poison struct{ err error }

var tooDeep = &poison{invalid("nesting deeper than %d", maxDepth)}

// document reads the whole text as one value.
func (d *decoder) document() (any, error) {
	v, err := d.value(0)
	if err == nil && d.skipSpace() < len(d.data) {
		err = d.syntax("after top-level value")
	}
	if err != nil {
		return nil, fmt.Errorf("decode JSON value: %w", err)
	}
	return v, nil
}

func (d *decoder) skipSpace() int {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return d.pos
		}
	}
	return d.pos
}

// syntax reports the byte at d.pos (or the end of the text) as unexpected.
func (d *decoder) syntax(context string) error {
	if d.pos >= len(d.data) {
		return errUnexpectedEnd
	}
	return fmt.Errorf("invalid character %q %s at offset %d", d.data[d.pos], context, d.pos)
}

var errUnexpectedEnd = errors.New("unexpected end of JSON input")

// value reads the value starting at the next non-space byte, depth lists
// or objects deep.
func (d *decoder) value(depth int) (any, error) {
	if d.skipSpace() == len(d.data) {
		return nil, errUnexpectedEnd
	}
	var v any
	switch c := d.data[d.pos]; {
	case c == '{':
		return d.object(depth)
	case c == '[':
		return d.array(depth)
	case c == '"':
		s, nul, err := d.str()
		if err != nil {
			return nil, err
		}
		if nul {
			return &poison{invalid("string %q contains a NUL byte", s)}, nil
		}
		v = s
	case c == 't':
		if !d.literal("true") {
			return nil, d.syntax("in literal true")
		}
		v = true
	case c == 'f':
		if !d.literal("false") {
			return nil, d.syntax("in literal false")
		}
		v = false
	case c == 'n':
		if !d.literal("null") {
			return nil, d.syntax("in literal null")
		}
	case d.python && (c == 'N' || c == 'I' || (c == '-' && d.pos+1 < len(d.data) && d.data[d.pos+1] == 'I')):
		lit := "NaN"
		if c == 'I' {
			lit = "Infinity"
		} else if c == '-' {
			lit = "-Infinity"
		}
		if !d.literal(lit) {
			return nil, d.syntax("looking for beginning of value")
		}
		return &poison{invalid("%s is not a JSON number", lit)}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		var err error
		if v, err = d.number(); err != nil {
			return nil, err
		}
	default:
		return nil, d.syntax("looking for beginning of value")
	}
	if depth > maxDepth {
		return tooDeep, nil
	}
	return v, nil
}

// literal consumes lit if the text continues with it; otherwise it moves
// d.pos to the first byte that differs.
func (d *decoder) literal(lit string) bool {
	for i := 0; i < len(lit); i++ {
		if d.pos >= len(d.data) || d.data[d.pos] != lit[i] {
			return false
		}
		d.pos++
	}
	return true
}

func (d *decoder) array(depth int) (any, error) {
	if depth >= maxNesting {
		return nil, d.syntax("exceeding the maximum nesting depth")
	}
	d.pos++
	if d.skipSpace() < len(d.data) && d.data[d.pos] == ']' {
		d.pos++
		if depth > maxDepth {
			return tooDeep, nil
		}
		return []any{}, nil
	}
	base := len(d.elems)
	var bad *poison
	for {
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if p, ok := v.(*poison); ok && bad == nil {
			bad = p
		}
		d.elems = append(d.elems, v)
		if d.skipSpace() == len(d.data) {
			return nil, errUnexpectedEnd
		}
		if c := d.data[d.pos]; c == ']' {
			d.pos++
			break
		} else if c != ',' {
			return nil, d.syntax("after array element")
		}
		d.pos++
	}
	var out []any
	if bad == nil && depth <= maxDepth {
		out = make([]any, len(d.elems)-base)
		copy(out, d.elems[base:])
	}
	clear(d.elems[base:])
	d.elems = d.elems[:base]
	switch {
	case depth > maxDepth:
		return tooDeep, nil
	case bad != nil:
		return bad, nil
	}
	return out, nil
}

func (d *decoder) object(depth int) (any, error) {
	if depth >= maxNesting {
		return nil, d.syntax("exceeding the maximum nesting depth")
	}
	d.pos++
	if d.skipSpace() < len(d.data) && d.data[d.pos] == '}' {
		d.pos++
		if depth > maxDepth {
			return tooDeep, nil
		}
		return map[string]any{}, nil
	}
	base := len(d.pairs)
	var bad *poison // a key with NUL: keys are never replaced
	for {
		if d.skipSpace() == len(d.data) || d.data[d.pos] != '"' {
			return nil, d.syntax("looking for beginning of object key string")
		}
		k, nul, err := d.str()
		if err != nil {
			return nil, err
		}
		if nul && bad == nil {
			bad = &poison{invalid("object key %q contains a NUL byte", k)}
		}
		if d.skipSpace() == len(d.data) || d.data[d.pos] != ':' {
			return nil, d.syntax("after object key")
		}
		d.pos++
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		d.pairs = append(d.pairs, keyValue{k, v})
		if d.skipSpace() == len(d.data) {
			return nil, errUnexpectedEnd
		}
		if c := d.data[d.pos]; c == '}' {
			d.pos++
			break
		} else if c != ',' {
			return nil, d.syntax("after object key:value pair")
		}
		d.pos++
	}
	var out map[string]any
	if bad == nil && depth <= maxDepth {
		pairs := d.pairs[base:]
		out = make(map[string]any, len(pairs))
		for _, p := range pairs {
			out[p.key] = p.val
			if pv, ok := p.val.(*poison); ok && bad == nil {
				bad = pv
			}
		}
		if bad != nil && len(out) < len(pairs) {
			// A repeated key: only the values that stayed count.
			bad = nil
			for _, v := range out {
				if pv, ok := v.(*poison); ok {
					bad = pv
					break
				}
			}
		}
	}
	clear(d.pairs[base:])
	d.pairs = d.pairs[:base]
	switch {
	case depth > maxDepth:
		return tooDeep, nil
	case bad != nil:
		return bad, nil
	}
	return out, nil
}

// number reads a number (RFC 8259 grammar) and applies the model's rule:
// int64 when integral and within range, exactly; float64 otherwise (the
// nearest, as strconv.ParseFloat rounds); beyond the float64 range, poison.
func (d *decoder) number() (any, error) {
	data, i := d.data, d.pos
	start := i
	neg := data[i] == '-'
	if neg {
		i++
	}
	var mant uint64
	digits := 0
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		for ; i < len(data) && data[i] >= '0' && data[i] <= '9'; i++ {
			mant = mant*10 + uint64(data[i]-'0')
			digits++
		}
	default:
		d.pos = i
		return nil, d.syntax("in numeric literal")
	}
	integral := true
	if i < len(data) && data[i] == '.' {
		integral = false
		i++
		if i >= len(data) || data[i] < '0' || data[i] > '9' {
			d.pos = i
			return nil, d.syntax("after decimal point in numeric literal")
		}
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		integral = false
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i >= len(data) || data[i] < '0' || data[i] > '9' {
			d.pos = i
			return nil, d.syntax("in exponent of numeric literal")
		}
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
	}
	d.pos = i
	if integral && digits <= 18 { // below 10^18: no overflow
		if neg {
			return -int64(mant), nil
		}
		return int64(mant), nil
	}
	text := data[start:i]
	if integral {
		if n, err := strconv.ParseInt(string(text), 10, 64); err == nil {
			return n, nil
		}
	}
	f, err := strconv.ParseFloat(string(text), 64)
	if err != nil {
		return &poison{invalid("number %s: %v", text, err)}, nil
	}
	if f == math.Trunc(f) && f >= -(1<<63) && f < (1<<63) {
		return int64(f), nil
	}
	return f, nil
}

// str reads the string literal at d.pos (its opening quote). It decodes it
// as encoding/json does (escapes resolved; invalid UTF-8 and unpaired
// surrogates become U+FFFD) and reports whether it holds a NUL, which only
// a \u0000 escape can produce.
func (d *decoder) str() (s string, nul bool, err error) {
	data := d.data
	start := d.pos + 1
	for i := start; i < len(data); {
		c := data[i]
		switch {
		case c == '"':
			d.pos = i + 1
			return string(data[start:i]), false, nil
		case c == '\\' || c < 0x20:
			return d.strEscaped(start, i)
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return d.strEscaped(start, i)
			}
			i += size
		}
	}
	return "", false, errUnexpectedEnd
}

// strEscaped finishes a string literal from data[i], whose earlier bytes
// data[start:i] need no decoding.
func (d *decoder) strEscaped(start, i int) (string, bool, error) {
	data := d.data
	buf := make([]byte, i-start, i-start+16)
	copy(buf, data[start:i])
	nul := false
	for i < len(data) {
		c := data[i]
		switch {
		case c == '"':
			d.pos = i + 1
			return string(buf), nul, nil
		case c < 0x20:
			d.pos = i
			return "", false, d.syntax("in string literal")
		case c == '\\':
			if i+1 >= len(data) {
				return "", false, errUnexpectedEnd
			}
			switch e := data[i+1]; e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r, ok := hex4(data[i+2:])
				if !ok {
					d.pos = i + 2
					return "", false, d.syntax("in \\u hexadecimal character escape")
				}
				i += 6
				if utf16.IsSurrogate(r) {
					// encoding/json pairs it with an immediately following
					// \u escape, or replaces it alone.
					r2, ok := rune(-1), false
					if i+1 < len(data) && data[i] == '\\' && data[i+1] == 'u' {
						r2, ok = hex4(data[i+2:])
					}
					if dec := utf16.DecodeRune(r, r2); ok && dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				}
				nul = nul || r == 0
				buf = utf8.AppendRune(buf, r)
				continue
			default:
				d.pos = i + 1
				return "", false, d.syntax("in string escape code")
			}
			i += 2
		case c < utf8.RuneSelf:
			buf = append(buf, c)
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				buf = append(buf, "\uFFFD"...)
			} else {
				buf = append(buf, data[i:i+size]...)
			}
			i += size
		}
	}
	return "", false, errUnexpectedEnd
}

// hex4 reads the four hexadecimal digits of a \u escape.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// members reads a JSON object member by member (UnmarshalObject). Each
// member's value is read as a document of its own (nesting counts from the
// value, as for a property stored alone); one the model refuses becomes an
// [Invalid] holding the member's text, and so does a member whose name holds
// a NUL. Of repeated names the last one wins. A syntax error anywhere fails
// the whole object.
func (d *decoder) members() ([]Property, error) {
	if d.skipSpace() == len(d.data) || d.data[d.pos] != '{' {
		return nil, fmt.Errorf("decode JSON object: %w", d.syntax("looking for beginning of object"))
	}
	d.pos++
	var out []Property
	var index map[string]int
	if d.skipSpace() < len(d.data) && d.data[d.pos] == '}' {
		d.pos++
	} else {
		for {
			if d.skipSpace() == len(d.data) || d.data[d.pos] != '"' {
				return nil, fmt.Errorf("decode JSON object: %w", d.syntax("looking for beginning of object key string"))
			}
			k, nul, err := d.str()
			if err != nil {
				return nil, fmt.Errorf("decode JSON object: %w", err)
			}
			if d.skipSpace() == len(d.data) || d.data[d.pos] != ':' {
				return nil, fmt.Errorf("decode JSON object: %w", d.syntax("after object key"))
			}
			d.pos++
			start := d.skipSpace()
			v, err := d.value(0)
			if err != nil {
				return nil, fmt.Errorf("decode JSON object: member %q: %w", cut(k), err)
			}
			switch p, bad := v.(*poison); {
			case bad:
				v = Invalid{Raw: string(d.data[start:d.pos]), Err: p.err}
			case nul:
				v = Invalid{Raw: string(d.data[start:d.pos]), Err: invalid("property name %q contains a NUL byte", cut(k))}
			}
			if i, dup := index[k]; dup {
				out[i].Value = v
			} else {
				if index == nil {
					index = make(map[string]int)
				}
				index[k] = len(out)
				out = append(out, Property{Name: k, Value: v})
			}
			if d.skipSpace() == len(d.data) {
				return nil, fmt.Errorf("decode JSON object: %w", errUnexpectedEnd)
			}
			if c := d.data[d.pos]; c == '}' {
				d.pos++
				break
			} else if c != ',' {
				return nil, fmt.Errorf("decode JSON object: %w", d.syntax("after object key:value pair"))
			}
			d.pos++
		}
	}
	if d.skipSpace() < len(d.data) {
		return nil, fmt.Errorf("decode JSON object: %w", d.syntax("after top-level value"))
	}
	return out, nil
}
