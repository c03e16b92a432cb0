package storage

import (
	"errors"
	"fmt"
	"strconv"
)

// Invalid stands for a stored property whose text is outside the value
// model: NaN or ±Infinity (Python's json.dumps writes them by default), a
// string or object key holding NUL, nesting deeper than the limit, a number
// beyond the float64 range, text that is not JSON, or a stored property name
// holding NUL. Such a property was written by another program (Python KRules,
// a script): Go never writes one, as [Normalize] and every backend refuse
// these values on write.
//
// Loads are tolerant: [Backend.Load] and [Backend.ExtProps] return an
// Invalid value in the property's place and the other properties load as
// usual. [Backend.Get] of the property returns an error wrapping
// ErrInvalidValue (Invalid.Err) that names the subject and the property. It
// can be overwritten with a plain value and deleted; [Backend.Set] and
// [Backend.Delete] then return the Invalid as the old value. An update
// function or a built-in operation on it fails with Invalid.Err and writes
// nothing ([Mutation.Apply] checks this; the server-side operations of
// Redis and PostgreSQL check the stored text, except that they append to a
// stored list holding an integer beyond the float64 range). Flush removes it. A backend's
// Store never rewrites a property the batch does not name, so it stays as
// stored until it is overwritten or deleted.
//
// Invalid is not a value of the model: [Normalize] and [Marshal] refuse it.
// Its String method and its JSON encoding (encoding/json) mark it, for
// tools that print subjects ("krules subject dump"):
//
//	<invalid: NaN (invalid value: NaN is not a JSON number)>
//	{"$invalid":"NaN","error":"invalid value: NaN is not a JSON number"}
type Invalid struct {
	// Raw is the stored text of the value, as is.
	Raw string
	// Err says why the value is refused; it wraps ErrInvalidValue.
	Err error
}

// String marks the value and its stored text (cut after 64 bytes).
func (v Invalid) String() string {
	return fmt.Sprintf("<invalid: %s (%v)>", cut(v.Raw), v.Err)
}

// MarshalJSON encodes v as {"$invalid": Raw, "error": Err's text}, for
// tools; storage's own [Marshal] refuses an Invalid.
func (v Invalid) MarshalJSON() ([]byte, error) {
	msg := ""
	if v.Err != nil {
		msg = v.Err.Error()
	}
	b := []byte(`{"$invalid":`)
	b = appendString(b, v.Raw)
	b = append(b, `,"error":`...)
	b = appendString(b, msg)
	return append(b, '}'), nil
}

// UnmarshalProperty decodes the stored text of one property as [Unmarshal]
// does, tolerantly: text outside the value model (see [Invalid]) yields an
// Invalid value holding raw and the reason, never an error. Backends call it
// on every stored property they read.
func UnmarshalProperty(raw []byte) any {
	v, err := unmarshal(raw, true)
	if err != nil {
		return Invalid{Raw: string(raw), Err: fmt.Errorf("%w: %w", ErrInvalidValue, err)}
	}
	if p, ok := v.(*poison); ok {
		return Invalid{Raw: string(raw), Err: p.err}
	}
	return v
}

// LoadedProperty returns the property a load found under name with the
// stored text raw: the value decoded by [UnmarshalProperty], or an [Invalid]
// when the stored name itself holds a NUL or is not valid UTF-8.
func LoadedProperty(name string, raw []byte) Property {
	v := UnmarshalProperty(raw)
	if err := checkChars("property", name); err != nil {
		if inv, ok := v.(Invalid); ok {
			err = errors.Join(err, inv.Err)
		}
		v = Invalid{Raw: string(raw), Err: fmt.Errorf("%w: %w", ErrInvalidValue, err)}
	}
	return Property{Name: name, Value: v}
}

// StoredValue returns v, or the error of an [Invalid] (wrapping
// ErrInvalidValue). Backends call it on Get.
func StoredValue(v any) (any, error) {
	if inv, ok := v.(Invalid); ok {
		return nil, inv.Err
	}
	return v, nil
}

// cutLen is how much of a name or stored text error messages quote.
const cutLen = 64

// cut shortens s for an error message: the first 64 bytes (never splitting
// a UTF-8 sequence) and "…(N bytes)".
func cut(s string) string {
	if len(s) <= cutLen {
		return s
	}
	n := cutLen
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
