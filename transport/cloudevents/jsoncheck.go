package cloudevents

import (
	"encoding/json"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// maxCheckDepth bounds the nesting checkJSON follows (encoding/json's limit).
const maxCheckDepth = 10000

// checkJSON validates JSON text more strictly than encoding/json, with the
// rules of the storage value model that a direct Set enforces: it refuses
// invalid UTF-8 (encoding/json would replace it with U+FFFD), \u escapes
// of unpaired surrogates, repeated object keys, and it names the bare
// NaN/Infinity tokens Python's json.dumps writes. Errors wrap ErrMalformed
// and give the byte offset.
func checkJSON(data []byte, what string) error {
	c := jsonChecker{data: data}
	c.space()
	if err := c.value(0); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	c.space()
	if c.pos < len(data) {
		return fmt.Errorf("%w: %s: invalid JSON: unexpected %q after the value at offset %d", ErrMalformed, what, data[c.pos], c.pos)
	}
	return nil
}

type jsonChecker struct {
	data []byte
	pos  int
}

func (c *jsonChecker) space() {
	for c.pos < len(c.data) {
		switch c.data[c.pos] {
		case ' ', '\t', '\n', '\r':
			c.pos++
		default:
			return
		}
	}
}

func (c *jsonChecker) syntax(what string) error {
	if c.pos >= len(c.data) {
		return fmt.Errorf("invalid JSON: unexpected end of input %s", what)
	}
	return fmt.Errorf("invalid JSON: unexpected %q %s at offset %d", c.data[c.pos], what, c.pos)
}

func (c *jsonChecker) lit(s string) bool {
	if len(c.data)-c.pos >= len(s) && string(c.data[c.pos:c.pos+len(s)]) == s {
		c.pos += len(s)
		return true
	}
	return false
}

func (c *jsonChecker) value(depth int) error {
	if depth > maxCheckDepth {
		return fmt.Errorf("invalid JSON: nesting deeper than %d at offset %d", maxCheckDepth, c.pos)
	}
	if c.pos >= len(c.data) {
		return c.syntax("looking for a value")
	}
	start := c.pos
	switch b := c.data[c.pos]; {
	case b == '{':
		return c.object(depth)
	case b == '[':
		c.pos++
		c.space()
		if c.pos < len(c.data) && c.data[c.pos] == ']' {
			c.pos++
			return nil
		}
		for {
			c.space()
			if err := c.value(depth + 1); err != nil {
				return err
			}
			c.space()
			if c.pos < len(c.data) && c.data[c.pos] == ']' {
				c.pos++
				return nil
			}
			if c.pos >= len(c.data) || c.data[c.pos] != ',' {
				return c.syntax("after an array element")
			}
			c.pos++
		}
	case b == '"':
		_, err := c.str()
		return err
	case c.lit("true"), c.lit("false"), c.lit("null"):
		return nil
	case c.lit("NaN"), c.lit("Infinity"), c.lit("-Infinity"):
		return fmt.Errorf("%s at offset %d is not a JSON number (Python's json.dumps writes it unless allow_nan=False)", c.data[start:c.pos], start)
	case b == '-' || (b >= '0' && b <= '9'):
		return c.number()
	default:
		return c.syntax("looking for a value")
	}
}

func (c *jsonChecker) number() error {
	d := c.data
	if d[c.pos] == '-' {
		c.pos++
	}
	digits := func() bool {
		n := c.pos
		for c.pos < len(d) && d[c.pos] >= '0' && d[c.pos] <= '9' {
			c.pos++
		}
		return c.pos > n
	}
	switch {
	case c.pos < len(d) && d[c.pos] == '0':
		c.pos++
	case !digits():
		return c.syntax("in a number")
	}
	if c.pos < len(d) && d[c.pos] == '.' {
		c.pos++
		if !digits() {
			return c.syntax("after a decimal point")
		}
	}
	if c.pos < len(d) && (d[c.pos] == 'e' || d[c.pos] == 'E') {
		c.pos++
		if c.pos < len(d) && (d[c.pos] == '+' || d[c.pos] == '-') {
			c.pos++
		}
		if !digits() {
			return c.syntax("in an exponent")
		}
	}
	return nil
}

func (c *jsonChecker) object(depth int) error {
	c.pos++ // {
	c.space()
	if c.pos < len(c.data) && c.data[c.pos] == '}' {
		c.pos++
		return nil
	}
	seen := make(map[string]struct{})
	for {
		c.space()
		if c.pos >= len(c.data) || c.data[c.pos] != '"' {
			return c.syntax("looking for an object key")
		}
		at := c.pos
		k, err := c.str()
		if err != nil {
			return err
		}
		if _, dup := seen[k]; dup {
			return fmt.Errorf("duplicate object key %s at offset %d", cutQuote(k), at)
		}
		seen[k] = struct{}{}
		c.space()
		if c.pos >= len(c.data) || c.data[c.pos] != ':' {
			return c.syntax("after an object key")
		}
		c.pos++
		c.space()
		if err := c.value(depth + 1); err != nil {
			return err
		}
		c.space()
		if c.pos < len(c.data) && c.data[c.pos] == '}' {
			c.pos++
			return nil
		}
		if c.pos >= len(c.data) || c.data[c.pos] != ',' {
			return c.syntax("after an object member")
		}
		c.pos++
	}
}

// str reads a string literal and returns its decoded text.
func (c *jsonChecker) str() (string, error) {
	d := c.data
	start := c.pos
	c.pos++
	escaped := false
	for c.pos < len(d) {
		b := d[c.pos]
		switch {
		case b == '"':
			c.pos++
			raw := d[start:c.pos]
			if !escaped {
				return string(raw[1 : len(raw)-1]), nil
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return "", fmt.Errorf("invalid JSON string at offset %d", start)
			}
			return s, nil
		case b < 0x20:
			return "", c.syntax("(control character) in a string")
		case b == '\\':
			escaped = true
			if c.pos+1 >= len(d) {
				c.pos++
				return "", c.syntax("in a string escape")
			}
			switch d[c.pos+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				c.pos += 2
			case 'u':
				r, ok := hex4at(d, c.pos+2)
				if !ok {
					c.pos += 2
					return "", c.syntax("in a \\u escape")
				}
				at := c.pos
				c.pos += 6
				if utf16.IsSurrogate(r) {
					r2, ok2 := rune(0), false
					if c.pos+1 < len(d) && d[c.pos] == '\\' && d[c.pos+1] == 'u' {
						r2, ok2 = hex4at(d, c.pos+2)
					}
					if !ok2 || utf16.DecodeRune(r, r2) == utf8.RuneError {
						return "", fmt.Errorf("unpaired UTF-16 surrogate escape %s at offset %d (not valid Unicode text)", d[at:at+6], at)
					}
					c.pos += 6
				}
			default:
				c.pos++
				return "", c.syntax("in a string escape")
			}
		case b < utf8.RuneSelf:
			c.pos++
		default:
			r, size := utf8.DecodeRune(d[c.pos:])
			if r == utf8.RuneError && size == 1 {
				return "", fmt.Errorf("invalid UTF-8 byte 0x%02x in a string at offset %d", b, c.pos)
			}
			c.pos += size
		}
	}
	return "", c.syntax("in a string")
}

func hex4at(d []byte, i int) (rune, bool) {
	if i+4 > len(d) {
		return 0, false
	}
	var r rune
	for _, b := range d[i : i+4] {
		switch {
		case b >= '0' && b <= '9':
			r = r<<4 | rune(b-'0')
		case b >= 'a' && b <= 'f':
			r = r<<4 | rune(b-'a'+10)
		case b >= 'A' && b <= 'F':
			r = r<<4 | rune(b-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// cutQuote quotes s for an error message, cut to 64 bytes.
func cutQuote(s string) string {
	const max = 64
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:i], len(s))
}
