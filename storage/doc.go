// Package storage defines the contract between krules and the stores that keep
// subjects: the [Backend] interface, the value model every backend shares, the
// built-in atomic operations ([Op]) and the sentinel errors.
//
// It is a leaf package (standard library only) so that backends never import
// the root package. Third-party backends implement [Backend] and prove it with
// the conformance suite in package storage/storagetest.
//
// # Value model
//
// A property value is a JSON value. [Normalize] turns any Go value that
// encoding/json can marshal into its canonical form, and every backend returns
// values in that form, so a handler sees the same Go types whether a value
// came from the in-memory store, bbolt, Redis or PostgreSQL:
//
//	JSON      Go type after Normalize / after a load
//	null      nil
//	true      bool
//	number    int64 when the number is integral and fits in an int64,
//	          float64 otherwise
//	string    string (valid UTF-8, no NUL byte)
//	array     []any
//	object    map[string]any
//
// Structs, typed maps and slices, json.Marshaler implementations (time.Time, ...)
// are converted through their JSON encoding. Values outside the model
// (channels, functions, complex numbers, NaN, ±Inf, cycles, invalid UTF-8,
// strings containing NUL, which PostgreSQL JSONB cannot store) are refused with
// [ErrInvalidValue]. Normalize always returns a deep copy, so a caller's later
// mutation of a map or slice never changes a stored value.
//
// [Equal] is the equality used for change detection: deep, and numeric across
// int64 and float64 (1 equals 1.0). bool and numbers are distinct.
//
// Another program may store text outside the model (Python's json.dumps
// writes NaN and Infinity by default). Loads are tolerant: such a property
// loads as an [Invalid] value in its place, the others load as usual, and
// reading it reports an error wrapping [ErrInvalidValue]; see [Invalid].
//
// [Marshal] writes the compact JSON text stored by the Redis, PostgreSQL and
// bolt backends (the layout of Python KRules); [Unmarshal] reads it back into
// the model.
package storage
