package krules

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"

	"github.com/krules-go/krules/storage"
)

// Op is a built-in atomic operation given to Set as the value: Inc, Append,
// Max, Min. With NoCache (or on a NoCache handle) it runs in the store in one
// round trip where the backend allows (Redis script, one SQL statement),
// without optimistic retries; in cache mode it applies to the cached value.
// Integer results are exact up to 2^53 on every backend.
type Op struct {
	op  *storage.Op
	err error
}

func newOp(kind storage.OpKind, arg any) Op {
	op, err := storage.NewOp(kind, arg)
	return Op{op: op, err: err}
}

// Inc adds n (a number) to the property; a missing or null property counts
// as 0. Inc(-1) decrements.
func Inc(n any) Op { return newOp(storage.OpInc, n) }

// Append appends values to the property's list; a missing or null property
// counts as the empty list.
func Append(values ...any) Op { return newOp(storage.OpAppend, values) }

// Max sets the property to v if v is greater (or the property is missing).
func Max(v any) Op { return newOp(storage.OpMax, v) }

// Min sets the property to v if v is smaller (or the property is missing).
func Min(v any) Op { return newOp(storage.OpMin, v) }

// UpdateFunc is the most general update function: it receives the stored
// value (nil and exists false when missing) and returns the new value or an
// error that aborts the Set. Set also accepts func(old any) any,
// func(old any) (any, error) and func() any.
//
// Update functions may run more than once with NoCache on backends that
// retry optimistically (Redis, bolt under contention is serialised and runs
// once), so they must not have side effects, and they must not call methods
// of the same Subject handle (in cache mode they run under its lock).
type UpdateFunc = storage.UpdateFunc

// Update adapts a typed update function: the stored value is converted to T
// as GetAs does (the zero T when missing or null), and fn's result is stored.
//
//	s.Set(ctx, "score", krules.Update(func(c int) int { return max(c, 150) }))
func Update[T any](fn func(T) T) UpdateFunc {
	return func(old any, exists bool) (any, error) {
		var cur T
		if exists && old != nil {
			c, err := convert[T](old)
			if err != nil {
				return nil, err
			}
			cur = c
		}
		return fn(cur), nil
	}
}

// GetAs reads a property (as Subject.Get, honouring Default and NoCache)
// and converts it to T: numbers to any integer type when integral and in
// range or to any float type, and everything else through its JSON encoding
// (so structs with json tags work). A null value gives the zero T. A value
// that does not convert gives an error wrapping ErrInvalidValue.
func GetAs[T any](ctx context.Context, s *Subject, prop string, opts ...CallOption) (T, error) {
	v, err := s.Get(ctx, prop, opts...)
	if err != nil {
		var zero T
		return zero, err
	}
	out, err := convert[T](v)
	if err != nil {
		return out, fmt.Errorf("krules: property %q of subject %q: %w", prop, s.name, err)
	}
	return out, nil
}

func convert[T any](v any) (T, error) {
	var zero T
	if v == nil {
		return zero, nil
	}
	if t, ok := v.(T); ok {
		return t, nil
	}
	rv := reflect.ValueOf(&zero).Elem()
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, ok := asInt(v)
		if !ok || rv.OverflowInt(i) {
			return zero, convErr(v, rv.Type())
		}
		rv.SetInt(i)
		return zero, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, ok := asInt(v)
		if !ok || i < 0 || rv.OverflowUint(uint64(i)) {
			return zero, convErr(v, rv.Type())
		}
		rv.SetUint(uint64(i))
		return zero, nil
	case reflect.Float32, reflect.Float64:
		var f float64
		switch x := v.(type) {
		case int64:
			f = float64(x)
		case float64:
			f = x
		default:
			return zero, convErr(v, rv.Type())
		}
		if rv.OverflowFloat(f) {
			return zero, convErr(v, rv.Type())
		}
		rv.SetFloat(f)
		return zero, nil
	}
	data, err := storage.Marshal(v)
	if err != nil {
		return zero, err
	}
	if err := json.Unmarshal(data, &zero); err != nil {
		return zero, fmt.Errorf("%w: cannot convert %s to %v: %v", ErrInvalidValue, data, rv.Type(), err)
	}
	return zero, nil
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case float64:
		if x == math.Trunc(x) && x >= math.MinInt64 && x < math.MaxInt64 {
			return int64(x), true
		}
	}
	return 0, false
}

func convErr(v any, t reflect.Type) error {
	return fmt.Errorf("%w: cannot convert %v (%T) to %v", ErrInvalidValue, v, v, t)
}

// mutation turns a value given to Set into a storage.Mutation.
func mutation(value any) (storage.Mutation, error) {
	switch v := value.(type) {
	case Op:
		if v.err != nil {
			return storage.Mutation{}, v.err
		}
		if v.op == nil {
			return storage.Mutation{}, fmt.Errorf("%w: zero Op (use Inc, Append, Max or Min)", ErrInvalidValue)
		}
		return storage.Mutation{Op: v.op}, nil
	case *Op:
		if v == nil {
			return storage.Mutation{}, fmt.Errorf("%w: nil *Op", ErrInvalidValue)
		}
		return mutation(*v)
	case UpdateFunc:
		if v == nil {
			return storage.Mutation{}, fmt.Errorf("%w: nil update function", ErrInvalidValue)
		}
		return storage.Mutation{Func: v}, nil
	case func(old any, exists bool) (any, error):
		return mutation(UpdateFunc(v))
	case func(old any) any:
		if v == nil {
			return mutation(UpdateFunc(nil))
		}
		return storage.Mutation{Func: func(old any, _ bool) (any, error) { return v(old), nil }}, nil
	case func(old any) (any, error):
		if v == nil {
			return mutation(UpdateFunc(nil))
		}
		return storage.Mutation{Func: func(old any, _ bool) (any, error) { return v(old) }}, nil
	case func() any:
		if v == nil {
			return mutation(UpdateFunc(nil))
		}
		return storage.Mutation{Func: func(any, bool) (any, error) { return v(), nil }}, nil
	}
	n, err := storage.Normalize(value)
	if err != nil {
		return storage.Mutation{}, err
	}
	return storage.Mutation{Value: n}, nil
}
