package storage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"
)

// The reference implementations: storage.Marshal and storage.Unmarshal as
// they were before the hand-written codec (one json.Encoder / json.Decoder
// per value), kept verbatim as the oracle of FuzzMarshalMatchesReference and
// FuzzUnmarshalMatchesReference. They use their own copies of the value
// model's helpers so that a change to those cannot move the oracle.

func refMarshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, invalid("%v", err)
	}
	b := buf.Bytes()
	return b[:len(b)-1], nil // drop Encode's newline
}

func refUnmarshal(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode JSON value: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("decode JSON value: trailing data in %q", data)
	}
	return refFromJSON(v, 0)
}

func refFromJSON(v any, depth int) (any, error) {
	if depth > 512 {
		return nil, invalid("nesting deeper than %d", 512)
	}
	switch x := v.(type) {
	case json.Number:
		return refParseNumber(string(x))
	case string:
		return refNormString(x)
	case []any:
		for i, e := range x {
			n, err := refFromJSON(e, depth+1)
			if err != nil {
				return nil, err
			}
			x[i] = n
		}
	case map[string]any:
		for k, e := range x {
			if _, err := refNormString(k); err != nil {
				return nil, err
			}
			n, err := refFromJSON(e, depth+1)
			if err != nil {
				return nil, err
			}
			x[k] = n
		}
	}
	return v, nil
}

func refParseNumber(s string) (any, error) {
	n := json.Number(s)
	if i, err := n.Int64(); err == nil {
		return i, nil
	}
	f, err := n.Float64()
	if err != nil {
		return nil, invalid("number %q: %v", s, err)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, invalid("%v is not a JSON number", f)
	}
	if f == math.Trunc(f) && f >= -(1<<63) && f < (1<<63) {
		return int64(f), nil
	}
	return f, nil
}

func refNormString(s string) (any, error) {
	if !utf8.ValidString(s) {
		return nil, invalid("string %q is not valid UTF-8", s)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return nil, invalid("string %q contains a NUL byte", s)
	}
	return s, nil
}
