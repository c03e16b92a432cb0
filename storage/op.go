package storage

import (
	"fmt"
	"math"
)

// OpKind names a built-in operation.
type OpKind uint8

// Built-in operations. Each applies to the stored value of one property.
const (
	// OpInc adds Arg (a number) to the stored number; a missing or null
	// property counts as 0. When the stored value and Arg are both integers
	// (int64 in the value model) the sum is exact, and one outside the int64
	// range fails with an error wrapping ErrOverflow (so ErrInvalidValue),
	// nothing written. When either is a float64 the sum is a float64 (IEEE
	// arithmetic; PostgreSQL adds exactly in numeric and the result is read
	// back as the nearest float64); a sum beyond the float64 range fails with
	// ErrInvalidValue, nothing written.
	OpInc OpKind = iota + 1
	// OpAppend appends the elements of Arg ([]any) to the stored array; a
	// missing or null property counts as the empty array.
	OpAppend
	// OpMax keeps the greater of the stored number and Arg; a missing or null
	// property takes Arg.
	OpMax
	// OpMin keeps the smaller of the stored number and Arg; a missing or null
	// property takes Arg.
	OpMin
)

// String returns the operation's name ("Inc", "Append", "Max", "Min").
func (k OpKind) String() string {
	switch k {
	case OpInc:
		return "Inc"
	case OpAppend:
		return "Append"
	case OpMax:
		return "Max"
	case OpMin:
		return "Min"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is a built-in atomic operation. Arg is normalised: an int64 or float64
// for Inc, Max and Min, a []any for Append. Backends with server-side support
// run it in the store in one round trip; the others call [Op.Apply] inside
// their atomic read-modify-write. Integer results are exact while they stay
// within ±2^53 on every backend (and within int64 where the backend computes
// in Go).
type Op struct {
	Kind OpKind
	Arg  any
}

// NewOp builds an operation, normalising and checking its argument.
func NewOp(kind OpKind, arg any) (*Op, error) {
	n, err := Normalize(arg)
	if err != nil {
		return nil, fmt.Errorf("%v argument: %w", kind, err)
	}
	switch kind {
	case OpInc, OpMax, OpMin:
		if !isNumber(n) {
			return nil, invalid("%v argument must be a number, got %T", kind, arg)
		}
	case OpAppend:
		if _, ok := n.([]any); !ok {
			return nil, invalid("Append argument must be a list, got %T", arg)
		}
	default:
		return nil, invalid("unknown operation %v", kind)
	}
	return &Op{Kind: kind, Arg: n}, nil
}

func isNumber(v any) bool {
	switch v.(type) {
	case int64, float64:
		return true
	}
	return false
}

// Apply computes the operation's result over the stored value old (exists
// false when the property is missing). A stored value of the wrong type gives
// an error wrapping ErrInvalidValue.
func (o *Op) Apply(old any, exists bool) (any, error) {
	switch o.Kind {
	case OpInc, OpMax, OpMin:
		if !isNumber(o.Arg) {
			return nil, invalid("%v argument must be a number, got %T", o.Kind, o.Arg)
		}
	case OpAppend:
		if _, ok := o.Arg.([]any); !ok {
			return nil, invalid("Append argument must be a list, got %T", o.Arg)
		}
	default:
		return nil, invalid("unknown operation %v", o.Kind)
	}
	if inv, ok := old.(Invalid); ok && exists {
		return nil, fmt.Errorf("stored value: %w", inv.Err)
	}
	if !exists || old == nil {
		switch o.Kind {
		case OpInc, OpMax, OpMin:
			return o.Arg, nil
		case OpAppend:
			return Clone(o.Arg), nil
		}
		return nil, invalid("unknown operation %v", o.Kind)
	}
	switch o.Kind {
	case OpAppend:
		cur, ok := old.([]any)
		if !ok {
			return nil, invalid("Append: stored value is %s, not a list", typeName(old))
		}
		add := o.Arg.([]any)
		out := make([]any, 0, len(cur)+len(add))
		out = append(out, cur...)
		for _, e := range add {
			out = append(out, Clone(e))
		}
		return out, nil
	case OpInc, OpMax, OpMin:
		if !isNumber(old) {
			return nil, invalid("%v: stored value is %s, not a number", o.Kind, typeName(old))
		}
		return numOp(o.Kind, old, o.Arg)
	}
	return nil, invalid("unknown operation %v", o.Kind)
}

func numOp(k OpKind, a, b any) (any, error) {
	ai, aInt := a.(int64)
	bi, bInt := b.(int64)
	if aInt && bInt {
		switch k {
		case OpInc:
			s := ai + bi
			if (s > ai) == (bi > 0) {
				return s, nil
			}
			return nil, fmt.Errorf("inc %d by %d: %w", ai, bi, ErrOverflow)
		case OpMax:
			return max(ai, bi), nil
		case OpMin:
			return min(ai, bi), nil
		}
	}
	af, bf := toFloat(a), toFloat(b)
	switch k {
	case OpInc:
		return normFloat(af + bf)
	case OpMax:
		if af >= bf {
			return a, nil
		}
		return b, nil
	default:
		if af <= bf {
			return a, nil
		}
		return b, nil
	}
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case float64:
		return x
	}
	return math.NaN()
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case int64, float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
