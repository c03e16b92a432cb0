package storage

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"strings"
	"unicode/utf8"
)

// Kind tells a default property from an extended one. Its byte values are the
// field prefixes of the Redis layout of Python KRules.
type Kind byte

const (
	// Default properties emit change events.
	Default Kind = 'p'
	// Extended properties are metadata and never emit events.
	Extended Kind = 'e'
)

// String returns "default" or "extended".
func (k Kind) String() string {
	switch k {
	case Default:
		return "default"
	case Extended:
		return "extended"
	}
	return fmt.Sprintf("Kind(%q)", byte(k))
}

// Valid reports whether k is Default or Extended.
func (k Kind) Valid() bool { return k == Default || k == Extended }

// Key names one property of a subject.
type Key struct {
	Kind Kind
	Name string
}

// Property is a named value, as returned in a [Snapshot].
type Property struct {
	Name  string
	Value any
}

// Snapshot is the whole content of one subject. Each slice keeps the order in
// which the backend holds the properties (insertion order where the backend
// keeps one; the memory and bolt backends do).
type Snapshot struct {
	Props []Property
	Ext   []Property
}

// Write is one property to put in a [Batch]. Value is already normalised.
type Write struct {
	Key
	Value any
}

// Batch is a set of changes to one subject, applied atomically by
// [Backend.Store]: Deletes first (a missing property is ignored), then Puts.
type Batch struct {
	Deletes []Key
	Puts    []Write
}

// Empty reports whether the batch changes nothing.
func (b Batch) Empty() bool { return len(b.Deletes) == 0 && len(b.Puts) == 0 }

// HasDefault reports whether the batch deletes or puts a default property
// (extended properties never emit, so a batch of only those needs no
// change record).
func (b Batch) HasDefault() bool {
	for _, k := range b.Deletes {
		if k.Kind == Default {
			return true
		}
	}
	for _, w := range b.Puts {
		if w.Kind == Default {
			return true
		}
	}
	return false
}

// UpdateFunc computes a new value from the stored one. old is nil and exists
// false when the property is missing. A backend may call it more than once
// (optimistic concurrency), so it must be free of side effects. Its result is
// normalised by [Mutation.Apply]; an error (or panic) aborts the update and
// nothing is written.
type UpdateFunc func(old any, exists bool) (any, error)

// Mutation is the new value given to [Backend.Set]: an update function (Func),
// a built-in operation (Op), or else the plain normalised Value.
type Mutation struct {
	Value any
	Func  UpdateFunc
	Op    *Op
}

// Apply computes the value the mutation gives when the stored value is old
// (exists false when missing). The result is normalised. A panic in Func is
// recovered and returned as an error. Backends without server-side operations
// call Apply inside their atomic read-modify-write.
func (m Mutation) Apply(old any, exists bool) (v any, err error) {
	switch {
	case m.Op != nil:
		return m.Op.Apply(old, exists)
	case m.Func != nil:
		if inv, ok := old.(Invalid); ok {
			return nil, fmt.Errorf("stored value: %w", inv.Err)
		}
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("update function panicked: %v", r)
			}
		}()
		nv, err := m.Func(old, exists)
		if err != nil {
			return nil, err
		}
		return Normalize(nv)
	default:
		return m.Value, nil
	}
}

// Capabilities describes what a backend guarantees. Core does not change its
// behaviour on them; they document the backend and let tests and tools adapt.
type Capabilities struct {
	// Persistent: data survives the process.
	Persistent bool
	// Shared: several processes may use the same store at once, and Set,
	// Delete and Store stay atomic across them.
	Shared bool
	// ServerSideOps: built-in [Op]s run in the store in one round trip,
	// without optimistic retries.
	ServerSideOps bool
}

// Backend stores subjects. One Backend serves every subject of an App; all
// methods take the subject name and must be safe for concurrent use.
//
// Names are validated by the caller (see [ValidateName]); values handed to a
// backend are normalised. Every backend returns values in the normalised form.
// Errors other than the sentinels of this package should be wrapped with the
// subject and property name in the message.
//
// Loads are tolerant: a stored property outside the value model (written by
// another program) comes back from Load, ExtProps, and as the old value of
// Set and Delete, as an [Invalid] in its place; Get of it fails with an error
// wrapping ErrInvalidValue; update functions and operations on it fail and
// write nothing; Store leaves it alone unless the batch names it. Backends
// decode stored text with [UnmarshalProperty] or [UnmarshalObject], which
// do this.
type Backend interface {
	// Load returns every property of the subject. An unknown subject yields an
	// empty Snapshot and no error.
	Load(ctx context.Context, subject string) (Snapshot, error)

	// Store applies the batch to the subject atomically (all or nothing).
	Store(ctx context.Context, subject string, b Batch) error

	// Set atomically replaces one property with the mutation's result and
	// returns the new and the old value (old is nil when the property was
	// missing). When Mutation.Apply fails nothing is written and its error is
	// returned. Backends that retry optimistically return an error wrapping
	// ErrConflict once their retry bound is exhausted.
	Set(ctx context.Context, subject string, k Key, m Mutation) (newValue, oldValue any, err error)

	// Get returns one property, or an error wrapping ErrNotFound.
	Get(ctx context.Context, subject string, k Key) (any, error)

	// Delete removes one property and returns its last value, or an error
	// wrapping ErrNotFound when it did not exist.
	Delete(ctx context.Context, subject string, k Key) (old any, err error)

	// Flush removes the subject with all its properties. Flushing an unknown
	// subject is not an error.
	Flush(ctx context.Context, subject string) error

	// ExtProps returns the extended properties of the subject.
	ExtProps(ctx context.Context, subject string) ([]Property, error)

	// Capabilities describes the backend.
	Capabilities() Capabilities
}

// BlindOps is an optional interface of a [Backend] that can apply a
// built-in [Op] without reading the old value back, so the store does less
// work than [Backend.Set] (Redis: one HINCRBY; PostgreSQL: one UPDATE ...
// RETURNING instead of a statement that locks and reads the row first).
// krules uses it for the NoCache Ops of a WriteOnly subject handle (see
// krules.WriteOnly), and type-asserts it once per App. A backend without it
// gets the same results through Set.
type BlindOps interface {
	// SetBlind applies op to one property atomically and returns the new
	// value. The result and the error are those of Set(ctx, subject, k,
	// Mutation{Op: op}) for the same stored value: a missing property (or a
	// JSON null) takes the argument, a stored value of the wrong type fails
	// with ErrInvalidValue, an integer Inc leaving the int64 range with
	// ErrOverflow, and nothing is written on an error. An implementation
	// falls back to Set whenever the blind path cannot decide on its own (a
	// stored value it cannot vouch for, a change feed that needs the old
	// value, an idempotency key in ctx). Safe for concurrent use.
	SetBlind(ctx context.Context, subject string, k Key, op *Op) (newValue any, err error)
}

// Lister is implemented by backends that can enumerate subjects.
type Lister interface {
	// List yields the names of the stored subjects that start with prefix
	// (every subject for ""), without loading them all into memory. The order
	// is backend-defined. An error ends the sequence.
	List(ctx context.Context, prefix string) iter.Seq2[string, error]
}

// UnmarshalObject decodes a stored JSON object (a column or document holding
// all properties of one kind, as the PostgreSQL and SQLite backends keep
// them) into properties sorted by name. Empty input is no properties.
//
// Loads are tolerant: a member whose value is outside the value model (NaN
// or ±Infinity as Python's json.dumps writes them, a string or key holding
// NUL, nesting deeper than the limit, a number beyond the float64 range), or
// whose name holds a NUL, is kept as an [Invalid] value in its place, and
// the other members load. Each member value's nesting counts from the value
// itself, as for a property stored alone. Input that is not one JSON object
// is an error.
func UnmarshalObject(raw []byte) ([]Property, error) {
	if len(raw) == 0 {
		return []Property{}, nil
	}
	d := decoders.Get().(*decoder)
	d.data, d.pos, d.python = raw, 0, true
	out, err := d.members()
	d.reset()
	decoders.Put(d)
	if err != nil {
		return nil, fmt.Errorf("stored value %.40q: %w", raw, err)
	}
	if out == nil {
		out = []Property{}
	}
	slices.SortFunc(out, func(a, b Property) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// ValidateKey checks the arguments of a call on one subject before anything
// is read or written: the subject name, and when k is not nil the property
// kind and name. Errors wrap ErrInvalidName and name the subject and
// property. Backends prefix it with their own name.
func ValidateKey(subject string, k *Key) error {
	if err := ValidateName("subject", subject); err != nil {
		return err
	}
	if k == nil {
		return nil
	}
	if !k.Kind.Valid() {
		return fmt.Errorf("property %q of subject %q: %w: unknown property kind %v", cut(k.Name), subject, ErrInvalidName, k.Kind)
	}
	if err := ValidateName("property", k.Name); err != nil {
		return fmt.Errorf("subject %q: %w", subject, err)
	}
	return nil
}

// MaxNameLen is the longest subject, property or event-type name, in bytes,
// that krules accepts on every path (the API, the HTTP Receiver, the NATS
// worker, the CLI); a longer one is refused with ErrInvalidName by
// [ValidateName]. 1 KiB stays well below the smallest limit of a store: a
// PostgreSQL btree index entry (the subject_name primary key) holds at most
// about 2.7 KB, a bbolt key 32 KiB; Redis and the memory store have none.
// Names already stored by another program are loaded whatever their
// length, but a call naming one is refused.
const MaxNameLen = 1024

// ValidateName checks a subject, property or event-type name: non-empty, at
// most [MaxNameLen] bytes, valid UTF-8 and free of NUL bytes (which
// PostgreSQL cannot store). what names the thing in the error ("subject",
// "property", "event type"). Errors wrap ErrInvalidName and quote at most
// the first 64 bytes of the name, followed by "…(N bytes)".
func ValidateName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty %s name", ErrInvalidName, what)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %s name %q is longer than %d bytes", ErrInvalidName, what, cut(name), MaxNameLen)
	}
	return checkChars(what, name)
}

// checkChars refuses invalid UTF-8 and NUL bytes in a name.
func checkChars(what, name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %s name %q is not valid UTF-8", ErrInvalidName, what, cut(name))
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: %s name %q contains a NUL byte", ErrInvalidName, what, cut(name))
	}
	return nil
}
