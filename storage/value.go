package storage

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxDepth bounds nesting; deeper values (or cyclic maps and slices) are refused.
const maxDepth = 512

// Normalize returns v in the canonical form of the value model (see the
// package documentation), as a deep copy. Values outside the model yield an
// error wrapping ErrInvalidValue.
func Normalize(v any) (any, error) {
	return normalize(v, 0)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidValue, fmt.Sprintf(format, args...))
}

func normFloat(f float64) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, invalid("%v is not a JSON number", f)
	}
	if f == math.Trunc(f) && f >= -(1<<63) && f < (1<<63) {
		return int64(f), nil
	}
	return f, nil
}

// normFloat32 keeps the shortest decimal of a float32 (0.1, not
// 0.10000000149011612), as its JSON encoding does.
func normFloat32(f float32) (any, error) {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return nil, invalid("%v is not a JSON number", f)
	}
	d, _ := strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
	return normFloat(d)
}

func normString(s string) (any, error) {
	if err := checkString(s); err != nil {
		return nil, err
	}
	return s, nil
}

// checkString is normString without the result (which costs an allocation).
func checkString(s string) error {
	if !utf8.ValidString(s) {
		return invalid("string %q is not valid UTF-8", s)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalid("string %q contains a NUL byte", s)
	}
	return nil
}

func normalize(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, invalid("nesting deeper than %d (cycle?)", maxDepth)
	}
	switch x := v.(type) {
	case nil:
		return nil, nil
	case bool, int64:
		return v, nil // already canonical: keep v's box, do not allocate another
	case string:
		if err := checkString(x); err != nil {
			return nil, err
		}
		return v, nil
	case int:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case uint:
		return normUint(uint64(x))
	case uint64:
		return normUint(x)
	case uint32:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case float64:
		return normFloat(x)
	case float32:
		return normFloat32(x)
	case json.Number:
		return parseNumber(string(x))
	case Invalid:
		return nil, invalid("a stored invalid value (storage.Invalid) cannot be written")
	case []any:
		if x == nil {
			return nil, nil
		}
		out := make([]any, len(x))
		for i, e := range x {
			n, err := normalize(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case map[string]any:
		if x == nil {
			return nil, nil
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			if err := checkString(k); err != nil {
				return nil, fmt.Errorf("map key: %w", err)
			}
			n, err := normalize(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	case []string:
		if x == nil {
			return nil, nil
		}
		out := make([]any, len(x))
		for i, e := range x {
			n, err := normString(e)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case map[string]string:
		if x == nil {
			return nil, nil
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			if err := checkString(k); err != nil {
				return nil, fmt.Errorf("map key: %w", err)
			}
			n, err := normString(e)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	}
	return normReflect(v, depth)
}

func normUint(u uint64) (any, error) {
	if u <= math.MaxInt64 {
		return int64(u), nil
	}
	return float64(u), nil
}

// normReflect handles every other type through its JSON encoding.
func normReflect(v any, depth int) (any, error) {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Chan, reflect.Func, reflect.Complex64, reflect.Complex128, reflect.UnsafePointer:
		return nil, invalid("%T cannot be stored", v)
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return nil, nil
		}
	}
	if !rv.Type().Implements(marshalerType) && !reflect.PointerTo(rv.Type()).Implements(marshalerType) {
		// Plain kinds with a named type (type Celsius float64, ...) keep their
		// fast path; composite kinds go through JSON.
		switch rv.Kind() {
		case reflect.Bool:
			return rv.Bool(), nil
		case reflect.String:
			return normString(rv.String())
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			return rv.Int(), nil
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
			return normUint(rv.Uint())
		case reflect.Float32:
			return normFloat32(float32(rv.Float()))
		case reflect.Float64:
			return normFloat(rv.Float())
		}
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, invalid("%T: %v", v, err)
	}
	out, err := Unmarshal(data)
	if err != nil {
		return nil, invalid("%T: %v", v, err)
	}
	// The JSON round trip counted nesting from 0; the whole value must stay
	// within the limit, or a later Load of it would fail.
	if depth+nesting(out) > maxDepth {
		return nil, invalid("nesting deeper than %d", maxDepth)
	}
	return out, nil
}

// nesting returns how many lists/objects deep a normalised value goes.
func nesting(v any) int {
	d := 0
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			d = max(d, nesting(e))
		}
		return d + 1
	case map[string]any:
		for _, e := range x {
			d = max(d, nesting(e))
		}
		return d + 1
	}
	return 0
}

var marshalerType = reflect.TypeFor[json.Marshaler]()

func parseNumber(s string) (any, error) {
	n := json.Number(s)
	if i, err := n.Int64(); err == nil {
		return i, nil
	}
	f, err := n.Float64()
	if err != nil {
		return nil, invalid("number %q: %v", s, err)
	}
	return normFloat(f)
}

// Equal reports whether two normalised values are equal: deep, with int64
// and float64 compared numerically.
func Equal(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case string:
		y, ok := b.(string)
		return ok && x == y
	case int64:
		switch y := b.(type) {
		case int64:
			return x == y
		case float64:
			return inInt64Range(y) && float64(x) == y && int64(y) == x
		}
		return false
	case float64:
		switch y := b.(type) {
		case float64:
			return x == y
		case int64:
			return inInt64Range(x) && float64(y) == x && int64(x) == y
		}
		return false
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !Equal(xv, yv) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

func inInt64Range(f float64) bool { return f >= -(1<<63) && f < (1<<63) }

// Clone returns a deep copy of a normalised value. Scalars are returned as is.
func Clone(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = Clone(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = Clone(e)
		}
		return out
	}
	return v
}
