package krules

// CallOption adjusts one call (Set, Get, Delete, Emit, ...), or, given to
// App.Subject, every call made through that handle. An option that does not
// apply to a call is ignored: Muted and NoCache mean nothing to Emit,
// Default only applies to reads, WithMeta only to emits.
type CallOption func(*callOptions)

type callOptions struct {
	muted   bool
	noCache bool
	extra   Extra
	hasDef  bool
	def     any
	meta    map[string]any
}

// resolve applies opts over base. Kept out of the callers so that the
// options struct only escapes (and allocates) when options are given.
//
//go:noinline
func resolve(base callOptions, opts []CallOption) callOptions {
	base.apply(opts)
	return base
}

func (o *callOptions) apply(opts []CallOption) {
	for _, f := range opts {
		if f != nil {
			f(o)
		}
	}
}

// Muted makes Set or Delete emit no event. The write itself is unchanged.
func Muted() CallOption { return func(o *callOptions) { o.muted = true } }

// NoCache makes the call go straight to the store, atomically, instead of
// through the subject handle's write cache. A cache the handle already holds
// is patched so later cached reads agree. Given to App.Subject it applies to
// every call of the handle. Has, Keys, ExtProps, Dict and Flush always work
// on the (loaded) cache.
func NoCache() CallOption { return func(o *callOptions) { o.noCache = true } }

// WithExtra passes caller context to the handlers of the event a Set, Delete
// or Emit causes (Event.Extra). A nil Extra stays nil, an empty one empty.
func WithExtra(e Extra) CallOption {
	return func(o *callOptions) { o.extra = e }
}

// Default makes Get (GetExt, GetAs) return v instead of ErrNotFound when
// the property is missing; v may be nil.
func Default(v any) CallOption {
	return func(o *callOptions) { o.def = v; o.hasDef = true }
}

// WithMeta sets event metadata at emit time (Event.Meta), e.g. the
// "dispatch_url" or "topic" read by the transports.
func WithMeta(key string, v any) CallOption {
	return func(o *callOptions) {
		if o.meta == nil {
			o.meta = make(map[string]any)
		}
		o.meta[key] = v
	}
}
