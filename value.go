package krules

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/krules-go/krules/storage"
)

// Op is an operation given to Set as the value instead of a plain value: a
// built-in atomic operation (Inc, Append, Max, Min) or a type-checked update
// function (Update, UpdateAny). The zero Op is refused with ErrInvalidValue.
//
// Built-in operations run, with NoCache (or on a NoCache handle), in the
// store in one round trip where the backend allows (Redis script, one SQL
// statement), without optimistic retries; in cache mode they apply to the
// cached value. Integer results are exact up to 2^53 on every backend.
//
// Update functions are Go code: with NoCache they run inside the backend's
// atomic read-modify-write and may run more than once on optimistic
// backends (Redis), so they must be free of side effects; in cache mode they
// run under the handle's lock and must not call methods of the same handle.
// Their error or panic is returned by Set and nothing changes.
//
// Why constructors rather than function values given to Set: Set's value is
// an any, so a function of the wrong shape could only be refused at run
// time. Update and UpdateAny have typed parameters, so the compiler checks
// the function; a bare function given to Set is refused with
// ErrInvalidValue before anything is written.
type Op struct {
	op  *storage.Op
	fn  storage.UpdateFunc
	err error
}

func newOp(kind storage.OpKind, arg any) Op {
	op, err := storage.NewOp(kind, arg)
	return Op{op: op, err: err}
}

// Inc adds n (a number) to the property; a missing or null property counts
// as 0. Inc(-1) decrements. A non-number n makes Set fail with
// ErrInvalidValue.
func Inc(n any) Op { return newOp(storage.OpInc, n) }

// Append appends values to the property's list; a missing or null property
// counts as the empty list.
func Append(values ...any) Op { return newOp(storage.OpAppend, values) }

// Max sets the property to v if v is greater (or the property is missing).
func Max(v any) Op { return newOp(storage.OpMax, v) }

// Min sets the property to v if v is smaller (or the property is missing).
func Min(v any) Op { return newOp(storage.OpMin, v) }

// Update returns the Op that stores fn(current). The stored value is
// converted to T as GetAs does (the zero T when missing or null; a value
// that does not convert fails the Set with ErrInvalidValue); fn's result is
// normalised as a plain value. With T = any, fn receives the stored value as
// is (nil when missing), like a Python KRules lambda:
//
//	s.Set(ctx, "score", krules.Update(func(c int) int { return max(c, 150) }))
//	s.Set(ctx, "tags", krules.Update(func(old any) any { ... }))
//
// A nil fn makes Set fail with ErrInvalidValue. See Op for when fn runs.
func Update[T any](fn func(current T) T) Op {
	if fn == nil {
		return Op{err: fmt.Errorf("%w: nil update function", ErrInvalidValue)}
	}
	return Op{fn: func(old any, exists bool) (any, error) {
		var cur T
		if exists && old != nil {
			c, err := convert[T](old)
			if err != nil {
				return nil, err
			}
			cur = c
		}
		return fn(cur), nil
	}}
}

// UpdateAny returns the Op that stores the result of the most general
// update function: fn receives the stored value (nil and exists false when
// the property is missing) and returns the new value, or an error that
// aborts the Set (returned wrapped; nothing changes). The old value fn
// receives is a copy it may modify. A nil fn makes Set fail with
// ErrInvalidValue. See Op for when fn runs.
func UpdateAny(fn func(old any, exists bool) (any, error)) Op {
	if fn == nil {
		return Op{err: fmt.Errorf("%w: nil update function", ErrInvalidValue)}
	}
	return Op{fn: fn}
}

// GetAs reads a property (as Subject.Get, honouring Default and NoCache)
// and converts it to T: numbers to any integer type when integral and in
// range or to any float type, and everything else through its JSON encoding
// (so structs with json tags work). A null value gives the zero T. A value
// that does not convert gives an error wrapping ErrInvalidValue.
func GetAs[T any](ctx context.Context, s *Subject, prop string, opts ...GetOption) (T, error) {
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

// mutation turns a value given to Set into a storage.Mutation. A value
// already in canonical form (nil, bool, int64, a valid string, a finite
// non-integral float64) is kept as given: no copy, no re-boxing.
func mutation(value any) (storage.Mutation, error) {
	switch v := value.(type) {
	case nil, bool, int64:
		return storage.Mutation{Value: value}, nil
	case int:
		return storage.Mutation{Value: intAsInt64(value)}, nil
	case string:
		if validString(v) {
			return storage.Mutation{Value: value}, nil
		}
	case float64:
		if v != math.Trunc(v) && !math.IsNaN(v) {
			return storage.Mutation{Value: value}, nil
		}
	case Op:
		return v.mutation()
	case *Op:
		if v == nil {
			return storage.Mutation{}, fmt.Errorf("%w: nil *Op", ErrInvalidValue)
		}
		return v.mutation()
	}
	n, err := storage.Normalize(value)
	if err != nil {
		if value != nil && reflect.TypeOf(value).Kind() == reflect.Func {
			return storage.Mutation{}, fmt.Errorf("%w: a function (%T) is not a value: wrap it in krules.Update or krules.UpdateAny", ErrInvalidValue, value)
		}
		return storage.Mutation{}, err
	}
	return storage.Mutation{Value: n}, nil
}

func (o Op) mutation() (storage.Mutation, error) {
	switch {
	case o.err != nil:
		return storage.Mutation{}, o.err
	case o.op != nil:
		return storage.Mutation{Op: o.op}, nil
	case o.fn != nil:
		return storage.Mutation{Func: o.fn}, nil
	}
	return storage.Mutation{}, fmt.Errorf("%w: zero Op (use Inc, Append, Max, Min, Update or UpdateAny)", ErrInvalidValue)
}

// validString reports whether s is a storable string (valid UTF-8, no NUL
// byte). ASCII is checked eight bytes at a time (a string of 4 to 7 bytes
// as two overlapping 4-byte words, a tail as an overlapping last word), so
// a short name costs a few instructions; anything else falls back to
// utf8.ValidString.
func validString(s string) bool {
	n := len(s)
	switch {
	case n >= 8:
		for i := 0; i+8 <= n; i += 8 {
			if !asciiWord(load64(s, i)) {
				return validSlow(s)
			}
		}
		if n%8 != 0 && !asciiWord(load64(s, n-8)) {
			return validSlow(s)
		}
		return true
	case n >= 4:
		if !asciiWord(uint64(load32(s, 0)) | uint64(load32(s, n-4))<<32) {
			return validSlow(s)
		}
		return true
	}
	for i := 0; i < n; i++ {
		if s[i]-1 >= utf8.RuneSelf-1 { // a zero or a non-ASCII byte
			return validSlow(s)
		}
	}
	return true
}

// asciiWord reports whether the eight bytes of w are ASCII and non-zero.
func asciiWord(w uint64) bool {
	const hi, lo = 0x8080808080808080, 0x0101010101010101
	return w&hi == 0 && (w-lo)&^w&hi == 0
}

func load64(s string, i int) uint64 {
	b := s[i : i+8]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func load32(s string, i int) uint32 {
	b := s[i : i+4]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func validSlow(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// eface is the layout of an empty interface value.
type eface struct {
	typ, data unsafe.Pointer
}

// int64Type is the type word of an any holding an int64.
var int64Type = func() unsafe.Pointer {
	var v any = int64(0)
	return (*eface)(unsafe.Pointer(&v)).typ
}()

// intAsInt64 returns v, an any holding an int, as an any holding the same
// number as an int64, reusing v's box: on a 64-bit platform int and int64
// have the same size and representation, and a box is never written after
// it is made, so the two interfaces can share it. This saves the allocation
// of a new int64 box on every Set of an int (the value normalisation of
// package storage turns int into int64). On 32-bit platforms it converts.
func intAsInt64(v any) any {
	if strconv.IntSize != 64 {
		return int64(v.(int))
	}
	e := *(*eface)(unsafe.Pointer(&v))
	e.typ = int64Type
	return *(*any)(unsafe.Pointer(&e))
}
