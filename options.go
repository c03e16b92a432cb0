package krules

// Call options come in one interface per call family, so that an option
// that does not apply to a call does not compile:
//
//	user.Get(ctx, "x", krules.Muted()) // compile error: MutedOption does not implement GetOption
//
// An option valid for several calls implements several interfaces:
//
//	option        Set/SetExt  Get/GetExt/GetAs  Delete/DeleteExt  Emit  App.Subject
//	Muted             x                              x                      x
//	NoCache           x              x               x                      x
//	WithExtra         x                              x              x
//	Default                          x
//	WithMeta                                                        x
//	WriteOnly                                                               x
//	IdempotencyKey    x                              x
//
// The interfaces have unexported methods: only the options of this package
// implement them. Options are small values resolved by a type switch, so
// passing them allocates nothing (Default and WithMeta box their value).
// A slice of options is declared with the interface of the call it is for:
//
//	opts := []krules.EmitOption{krules.WithMeta("topic", "orders")}
//	app.Emit(ctx, "order.created", order, payload, opts...)

// SetOption is an option of Subject.Set and Subject.SetExt: Muted, NoCache,
// WithExtra, IdempotencyKey.
type SetOption interface{ setOption() }

// GetOption is an option of Subject.Get, Subject.GetExt and GetAs: Default,
// NoCache.
type GetOption interface{ getOption() }

// DeleteOption is an option of Subject.Delete and Subject.DeleteExt: Muted,
// NoCache, WithExtra, IdempotencyKey.
type DeleteOption interface{ deleteOption() }

// EmitOption is an option of App.Emit and Event.Emit: WithExtra, WithMeta.
type EmitOption interface{ emitOption() }

// SubjectOption is an option of App.Subject, applied to every call made
// through the handle: NoCache, Muted, WriteOnly.
type SubjectOption interface{ subjectOption() }

// MutedOption is the option returned by Muted. It is a SetOption, a
// DeleteOption and a SubjectOption.
type MutedOption struct{}

// Muted makes Set or Delete emit no event; the write itself is unchanged.
// Given to App.Subject it mutes every write of the handle. SetExt and
// DeleteExt never emit, so it changes nothing there.
func Muted() MutedOption { return MutedOption{} }

func (MutedOption) setOption()     {}
func (MutedOption) deleteOption()  {}
func (MutedOption) subjectOption() {}

// NoCacheOption is the option returned by NoCache. It is a SetOption, a
// GetOption, a DeleteOption and a SubjectOption.
type NoCacheOption struct{}

// NoCache makes the call go straight to the store, atomically, instead of
// through the subject handle's write cache. A cache the handle already holds
// is patched so later cached reads agree. Given to App.Subject it applies to
// every call of the handle. Has, Keys, ExtProps, Dict and Flush always work
// on the (loaded) cache. On a WriteOnly handle NoCache writes of plain
// values and built-in Ops are blind: they return old value nil (see
// WriteOnly).
func NoCache() NoCacheOption { return NoCacheOption{} }

func (NoCacheOption) setOption()     {}
func (NoCacheOption) getOption()     {}
func (NoCacheOption) deleteOption()  {}
func (NoCacheOption) subjectOption() {}

// ExtraOption is the option returned by WithExtra. It is a SetOption, a
// DeleteOption and an EmitOption.
type ExtraOption struct{ extra Extra }

// WithExtra passes caller context to the handlers of the event a Set, Delete
// or Emit causes (Event.Extra). A nil Extra stays nil, an empty one empty.
// The map is not copied.
func WithExtra(e Extra) ExtraOption { return ExtraOption{extra: e} }

func (ExtraOption) setOption()    {}
func (ExtraOption) deleteOption() {}
func (ExtraOption) emitOption()   {}

// WriteOnlyOption is the option returned by WriteOnly. It is a
// SubjectOption.
type WriteOnlyOption struct{}

// WriteOnly makes App.Subject return a handle that writes without reading
// the stored value first, where it can. Use it to write properties without
// reading them (imports, projections, counters).
//
// Cached writes: a cached Set or SetExt of a plain value does not load the
// subject from the store first: the write goes to the handle's cache and
// Store writes it, as on any handle, so setting N properties and storing
// costs one store round trip instead of a load plus a store. The stored
// value is not known, so such a Set returns as old value the one this
// handle wrote before, else nil, and (unless Muted) emits PropertyChanged
// unless the new value Equals that old value: OldValue is nil for the
// first write of a property. Everything that needs the stored subject
// (Get, Has, Keys, Dict, ExtProps, Delete, Flush, cached Ops and update
// functions) loads it as usual, with the handle's unsaved writes on top.
//
// NoCache writes (NoCache given to App.Subject with WriteOnly, or to the
// call on a WriteOnly handle: both mean the same) are blind: a NoCache Set
// or SetExt of a plain value is one write that reads nothing (Redis HSET,
// a PostgreSQL upsert), and a NoCache built-in Op (Inc, Append, Max, Min)
// is applied without reading the old value back where the backend can
// (storage.BlindOps: Redis Inc of an integer is one HINCRBY, PostgreSQL
// runs one UPDATE ... RETURNING). The new value, and every error, are those
// of the same call on a normal handle (a stored value of the wrong type,
// an int64 overflow: nothing written); the old value returned is always
// nil, on every backend. Unless Muted, such a Set always emits
// PropertyChanged, with OldValue nil: the write is blind, so it cannot tell
// a value that did not change. Update functions (Update, UpdateAny),
// Delete, and every call with an IdempotencyKey keep the normal atomic path
// and its old value. With a change feed (an App whose backend writes change
// records, see App.ChangeFeed) NoCache writes are not blind either: the
// change record needs the old value, so they return it and emit as on any
// handle.
func WriteOnly() WriteOnlyOption { return WriteOnlyOption{} }

func (WriteOnlyOption) subjectOption() {}

// DefaultOption is the option returned by Default. It is a GetOption.
type DefaultOption struct{ v any }

// Default makes Get (GetExt, GetAs) return v instead of ErrNotFound when
// the property is missing; v may be nil. v is returned as given (not
// normalised or copied).
func Default(v any) DefaultOption { return DefaultOption{v: v} }

func (DefaultOption) getOption() {}

// MetaOption is the option returned by WithMeta. It is an EmitOption.
type MetaOption struct {
	key string
	v   any
}

// WithMeta sets event metadata at emit time (Event.Meta), e.g. the
// "dispatch_url" or "topic" read by the transports. Several WithMeta
// options add up; a later one wins for the same key.
func WithMeta(key string, v any) MetaOption { return MetaOption{key: key, v: v} }

func (MetaOption) emitOption() {}

// callOptions is the resolved form of a call's options. It is built on the
// caller's stack: options are applied by a type switch, never through a
// function value, so it never escapes.
type callOptions struct {
	muted     bool
	noCache   bool
	hasDef    bool
	writeOnly bool
	extra     Extra
	def       any
}

// add applies one option; an unknown value (an outside type embedding one
// of the interfaces) is ignored.
func (o *callOptions) add(opt any) {
	switch x := opt.(type) {
	case MutedOption:
		o.muted = true
	case NoCacheOption:
		o.noCache = true
	case WriteOnlyOption:
		o.writeOnly = true
	case ExtraOption:
		o.extra = x.extra
	case DefaultOption:
		o.def, o.hasDef = x.v, true
	}
}

func setOpts(base callOptions, opts []SetOption) callOptions {
	for _, x := range opts {
		base.add(x)
	}
	return base
}

func getOpts(base callOptions, opts []GetOption) callOptions {
	for _, x := range opts {
		base.add(x)
	}
	return base
}

// hasNoCache reports whether opts hold a NoCache option.
func hasNoCache(opts []GetOption) bool {
	for _, x := range opts {
		if _, ok := x.(NoCacheOption); ok {
			return true
		}
	}
	return false
}

func deleteOpts(base callOptions, opts []DeleteOption) callOptions {
	for _, x := range opts {
		base.add(x)
	}
	return base
}

// emitOpts resolves Emit's options: the Extra, and the metadata map (nil
// when no WithMeta is given).
func emitOpts(opts []EmitOption) (Extra, map[string]any) {
	var extra Extra
	var meta map[string]any
	for _, x := range opts {
		switch o := x.(type) {
		case ExtraOption:
			extra = o.extra
		case MetaOption:
			if meta == nil {
				meta = make(map[string]any, len(opts))
			}
			meta[o.key] = o.v
		}
	}
	return extra, meta
}
