package krules

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// Subject is a handle on a named subject, with its own write cache.
//
// In cache mode (the default) the first access loads the subject from the
// store; Set and Delete then change only this handle's cache, and Store
// writes all changes in one atomic batch and drops the cache, so the next
// access reloads. Another handle on the same name sees the changes only
// after Store. With NoCache (per call, or per handle via App.Subject) Set,
// Get and Delete go straight to the store atomically, and patch the cache if
// this handle has one. On a WriteOnly handle (App.Subject with WriteOnly)
// cached Sets of plain values skip the first load, and NoCache Sets of
// plain values and built-in Ops read no old value (see WriteOnly).
//
// Events fire on the calling goroutine after the write: Set emits
// PropertyChanged when the value changed (storage.Equal), Delete emits
// PropertyDeleted, Flush emits PropertyDeleted per property and then
// SubjectDeleted. Extended properties (SetExt, ...) never emit.
//
// A Subject is safe for concurrent use; its lock is held while it loads or
// stores, so one slow store call delays the handle's other callers. Values
// returned by Set and carried by events are shared with the cache and must
// be treated as read-only; Get, ExtProps and Dict return copies.
//
// On a NoCache handle, Has, Keys, ExtProps and Dict read the store afresh
// on every call. A NoCache call on a cached handle drops the cache when it
// holds no unsaved change (the next cached read reloads), and otherwise
// patches it: a NoCache read never discards an unsaved change; a NoCache
// write of a property replaces that property's unsaved change made before
// the NoCache write began, and keeps one made by a cached Set or Delete
// while the NoCache write was in flight (that change is the later one:
// Store writes it over the NoCache write). When a NoCache call's result may
// be older than what the cache holds (another NoCache call on the same
// handle overlapped it, or the handle reloaded while it was in flight), the
// call does not patch the cache: it drops the loaded values, keeps the
// unsaved changes, and the next access reloads.
type Subject struct {
	app     *App
	name    string
	nameErr error
	base    callOptions
	// cachedOK: a valid name on a handle with a cache (not NoCache), so
	// Get may answer from the loaded cache. Set by App.Subject.
	cachedOK bool
	// mem: when the App's store is a *memory.Backend, the handle's
	// resolved reference to its subject there (direct calls skip the
	// store's name lookup); unbound otherwise.
	mem memory.Ref

	mu     sync.Mutex
	loaded bool
	props  propCache
	ext    propCache
	// dseq is the handle's clock: it counts the NoCache calls begun on the
	// handle (directBegin, without mu). Each cached Set or Delete stamps
	// its cache entry with its value and each load records it (loadGen),
	// both under mu, so afterDirect tells the pending changes made before
	// a NoCache call began (superseded by a write) from those made while
	// it was in flight (kept), a cache loaded while it was in flight
	// (which may hold later writes), and another NoCache call begun since.
	dseq    atomic.Uint64
	loadGen uint64 // dseq at the end of the last load (under mu)

	feedPending map[string]*storage.ChangeMeta // change feed: metadata of cached writes (changefeed.go)
}

// Name returns the subject's name.
func (s *Subject) Name() string { return s.name }

// String returns the subject's name.
func (s *Subject) String() string { return s.name }

// App returns the App the handle belongs to.
func (s *Subject) App() *App { return s.app }

func (s *Subject) cache(k storage.Kind) *propCache {
	if k == storage.Extended {
		return &s.ext
	}
	return &s.props
}

func (s *Subject) loadLocked(ctx context.Context) error {
	if s.loaded {
		return nil
	}
	snap, err := s.app.backend.Load(ctx, s.name)
	if err != nil {
		return fmt.Errorf("krules: load subject %q: %w", s.name, err)
	}
	// A WriteOnly handle may hold writes made without a load: they go on
	// top of the loaded subject, still pending.
	blind := [2]propCache{s.props, s.ext}
	s.props = newPropCache(snap.Props)
	s.ext = newPropCache(snap.Ext)
	for j, c := range []*propCache{&s.props, &s.ext} {
		for i := range blind[j].ents {
			switch e := &blind[j].ents[i]; e.state {
			case stDirty:
				c.put(e.name, e.v, true, e.gen)
			case stDeleted: // left by unloadLocked
				c.remove(e.name, true, e.gen)
			}
		}
	}
	s.loaded = true
	s.loadGen = s.dseq.Load()
	return nil
}

// unloadLocked drops the loaded part of the cache and keeps the unsaved
// changes: the next access reloads the subject and puts them back on top
// (as for a WriteOnly handle's blind writes).
func (s *Subject) unloadLocked() {
	s.loaded = false
	s.props, s.ext = s.props.pendingOnly(), s.ext.pendingOnly()
}

func what(k storage.Kind) string {
	if k == storage.Extended {
		return "extended property"
	}
	return "property"
}

func (s *Subject) check(k storage.Kind, prop string) error {
	if s.nameErr != nil {
		return fmt.Errorf("krules: %w", s.nameErr)
	}
	if prop != "" && len(prop) <= storage.MaxNameLen && validString(prop) {
		return nil
	}
	if err := storage.ValidateName(what(k), prop); err != nil {
		return fmt.Errorf("krules: subject %q: %w", s.name, err)
	}
	return nil
}

// listeners returns the handlers of the event a write of kind k will emit
// (none for extended properties or Muted) and ctx's cascade depth, and
// refuses the write with ErrCascadeDepth when that emit would exceed the
// cascade limit. The event is PropertyDeleted when deleted is true, else
// PropertyChanged.
func (s *Subject) listeners(ctx context.Context, k storage.Kind, o *callOptions, deleted bool) (*table, []*Handler, int, error) {
	if k != storage.Default || o.muted {
		return nil, nil, 0, nil
	}
	if s.app.feed.on {
		if err := s.feedCheck(ctx, k, o, builtinType(deleted)); err != nil { // change feed hook
			return nil, nil, 0, err
		}
	}
	t := s.app.eventTable() // change feed hook: no local handlers under FeedRemote
	t.once.Do(t.build)
	hs := t.changed
	if deleted {
		hs = t.deleted
	}
	if !t.wants(hs) {
		return t, hs, 0, nil
	}
	depth, err := s.app.checkDepth(ctx, builtinType(deleted), s)
	if err != nil {
		return nil, nil, 0, err
	}
	return t, hs, depth, nil
}

// builtinType is PropertyDeleted or PropertyChanged.
func builtinType(deleted bool) string {
	if deleted {
		return PropertyDeleted
	}
	return PropertyChanged
}

// emitProperty dispatches a built-in property event (lazy: lazyChanged or
// lazyDeleted) to hs, already admitted by listeners at cascade depth depth.
// Its payload map is built only if a handler asks for it.
func (s *Subject) emitProperty(ctx context.Context, t *table, hs []*Handler, depth int, lazy lazyKind, prop string, old, nv any, extra Extra) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	typ := PropertyChanged
	if lazy == lazyDeleted {
		typ = PropertyDeleted
	}
	ev := s.app.newEvent()
	ev.Type, ev.Subject, ev.PropertyName, ev.OldValue, ev.NewValue, ev.Extra, ev.app, ev.lazy = typ, s, prop, old, nv, extra, s.app, lazy
	return s.app.deliver(ctx, t, hs, ev, depth)
}

// directTok is a NoCache call on a cached handle, from directBegin to
// afterDirect: dseq just after the call began. Zero is no call (a NoCache
// handle has no cache to patch).
type directTok uint64

func (t directTok) on() bool { return t != 0 }

// start is dseq just before the call began: a cache entry stamped, or a
// load recorded, later than start was made while the call was in flight.
func (t directTok) start() uint64 { return uint64(t) - 1 }

// directBegin marks the start of a NoCache call (a store call) on a handle
// that has a cache. A call that succeeds passes its token to afterDirect;
// one that fails calls afterFailed (the store may have written all the
// same); one that is replayed drops it.
func (s *Subject) directBegin() directTok { return directTok(s.dseq.Add(1)) }

// afterDirect ends a NoCache call tok (begun with directBegin) and brings
// the handle's cache (if loaded) in line with its result: v is the stored
// value (present false: the property is not stored); write tells a write
// from a read. A cache without unsaved changes is dropped, so the next
// cached read reloads: that stays right whatever order concurrent NoCache
// calls finish in. A cache with unsaved changes is patched: a write
// replaces the property and its pending change made before the write began
// (stamp <= tok.start()), and keeps a pending change made while it was in
// flight (stamp > tok.start(): a later write); a read only refreshes
// properties without a pending change, so it never loses an unsaved write.
// When the call's result may be older than what the cache holds (another
// NoCache call of the handle overlapped it, or the cache was loaded while
// it was in flight, after a Store perhaps), the cache is not patched but
// unloaded, keeping its unsaved changes: the next access reloads.
//
// A NoCache handle has no cache to patch (its cached reads load afresh, and
// it makes no cached writes): callers skip directBegin and afterDirect
// there.
func (s *Subject) afterDirect(k storage.Kind, prop string, v any, present, write bool, tok directTok) {
	s.mu.Lock()
	// Another NoCache call began since (it may have reached the store
	// before this one, or after: that order is unknown), or the cache was
	// loaded while this one was in flight. A call that began before this
	// one and ends after it sees this one's begin and is stale itself, so
	// of overlapping calls only the last to begin may patch.
	stale := uint64(tok) != s.dseq.Load() || s.loadGen > tok.start()
	s.afterDirectLocked(k, prop, v, present, write, tok.start(), stale)
	s.mu.Unlock()
}

// afterFailed follows a NoCache write that failed: it may have been applied
// all the same (a timeout after the store wrote), so a loaded cache is
// unloaded (keeping the unsaved puts and deletes) and the next access
// reloads what the store holds.
func (s *Subject) afterFailed() {
	s.mu.Lock()
	if s.loaded {
		s.unloadLocked()
	}
	s.mu.Unlock()
}

func (s *Subject) afterDirectLocked(k storage.Kind, prop string, v any, present, write bool, start uint64, stale bool) {
	c := s.cache(k)
	if !s.loaded {
		if write && len(c.ents) > 0 && !c.pendingAfter(prop, start) {
			// A WriteOnly handle's unloaded write of prop made before
			// this write is superseded.
			c.remove(prop, false, 0)
		}
		return
	}
	if !s.props.hasPending() && !s.ext.hasPending() {
		s.loaded = false
		s.props, s.ext = propCache{}, propCache{}
		return
	}
	if write {
		if c.pendingAfter(prop, start) {
			return
		}
		if stale {
			c.remove(prop, false, 0) // superseded, if pending before the write
			s.unloadLocked()
			return
		}
	} else if c.isPending(prop) {
		return
	} else if stale {
		s.unloadLocked()
		return
	}
	if present {
		c.put(prop, storage.Clone(v), false, 0)
	} else {
		c.remove(prop, false, 0)
	}
}

// view returns the properties for the whole-subject reads (Has, Keys,
// ExtProps, Dict): the handle's cache, loaded if needed; on a NoCache handle
// a fresh load that is not kept. done must be called when finished.
func (s *Subject) view(ctx context.Context) (props, ext *propCache, done func(), err error) {
	if s.nameErr != nil {
		return nil, nil, nil, fmt.Errorf("krules: %w", s.nameErr)
	}
	if s.base.noCache {
		snap, err := s.app.backend.Load(ctx, s.name)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("krules: load subject %q: %w", s.name, err)
		}
		p, e := newPropCache(snap.Props), newPropCache(snap.Ext)
		return &p, &e, func() {}, nil
	}
	s.mu.Lock()
	if err := s.loadLocked(ctx); err != nil {
		s.mu.Unlock()
		return nil, nil, nil, err
	}
	return &s.props, &s.ext, s.mu.Unlock, nil
}

func (s *Subject) notFound(k storage.Kind, prop string) error {
	return fmt.Errorf("krules: %s %q of subject %q: %w", what(k), prop, s.name, ErrNotFound)
}

// Set sets a default property and returns the new and the old value (old is
// nil when the property was missing). value is a plain value (normalised to
// the data model, see package storage) or an Op: a built-in operation (Inc,
// Append, Max, Min) or a typed update function (Update, UpdateAny). An update
// function's error or panic is returned and nothing changes. A bare Go
// function is not a value: it is refused with ErrInvalidValue (wrap it in
// Update or UpdateAny, whose signatures the compiler checks).
//
// Unless Muted, Set emits PropertyChanged when the new value is not Equal to
// the old one, with WithExtra's Extra, and returns after its handlers ran
// (and the App's outbound hooks, see App.Outbound). On a WriteOnly handle
// the old value is the handle's own earlier write (nil before the first),
// since the stored one is not loaded: a plain Set there emits unless it
// repeats that earlier write, and its OldValue does not say whether the
// store held the property. A NoCache Set of a plain value or a built-in Op
// on a WriteOnly handle is blind: it returns old value nil and, unless
// Muted, always emits, with OldValue nil (see WriteOnly).
// Options (SetOption): Muted, WithExtra, NoCache, IdempotencyKey.
//
// In cache mode an update function runs under the handle's lock: it must
// not call methods of the same handle (that deadlocks). With NoCache it may
// run more than once on optimistic backends: keep it free of side effects.
//
// Inside a handler, pass the handler's ctx: it carries the cascade depth
// that stops handler loops (WithCascadeLimit); a Set with an unrelated ctx
// (context.Background()) inside a handler escapes the limit.
//
// Errors: ErrInvalidName, ErrInvalidValue (nothing written), ErrConflict
// (NoCache update functions on optimistic backends), ErrCascadeDepth
// (nothing written), store errors. If ctx is cancelled while the change
// event is dispatched, Set returns the values and ctx's error: the write
// took effect. A NoCache Set that fails with a timeout or network error may
// have been applied all the same (the store got the command, the answer was
// lost): to retry it safely give it an IdempotencyKey (plain values and
// built-in Ops; the same holds for Delete).
func (s *Subject) Set(ctx context.Context, prop string, value any, opts ...SetOption) (newValue, oldValue any, err error) {
	return s.set(ctx, storage.Default, prop, value, opts)
}

// SetExt sets an extended property, as Set but never emitting an event.
// Update functions and Ops are evaluated as for Set.
func (s *Subject) SetExt(ctx context.Context, prop string, value any, opts ...SetOption) (newValue, oldValue any, err error) {
	return s.set(ctx, storage.Extended, prop, value, opts)
}

func (s *Subject) set(ctx context.Context, k storage.Kind, prop string, value any, opts []SetOption) (any, any, error) {
	if err := s.check(k, prop); err != nil {
		return nil, nil, err
	}
	o := &s.base // read-only; a copy only when options change it
	if len(opts) > 0 {
		oo := setOpts(s.base, opts)
		o = &oo
	}
	mut, err := mutation(value)
	if err != nil {
		return nil, nil, fmt.Errorf("krules: set %s %q of subject %q: %w", what(k), prop, s.name, err)
	}
	bctx, hasIdem := ctx, false
	if len(opts) > 0 {
		var idem string
		if idem, hasIdem = idemKeyOf(opts); hasIdem {
			if bctx, err = s.directCtx(ctx, idem, o.noCache, &mut); err != nil {
				return nil, nil, fmt.Errorf("krules: set %s %q of subject %q: %w", what(k), prop, s.name, err)
			}
		}
	}
	t, hs, depth, err := s.listeners(ctx, k, o, false)
	if err != nil {
		return nil, nil, err
	}
	var nv, old any
	// A blind write (see WriteOnly): a NoCache Set of a plain value or a
	// built-in Op on a WriteOnly handle reads no old value.
	blind := o.noCache && s.base.writeOnly && mut.Func == nil && !hasIdem && !s.app.feed.on
	if o.noCache {
		var tok directTok
		if !s.base.noCache {
			tok = s.directBegin()
		}
		if blind {
			nv, err = s.setBlind(bctx, storage.Key{Kind: k, Name: prop}, mut)
		} else if s.mem.Bound() { // the memory store checks ctx itself
			nv, old, err = s.mem.Set(s.feedCtx(bctx, o), storage.Key{Kind: k, Name: prop}, mut)
		} else {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			nv, old, err = s.app.backend.Set(s.feedCtx(bctx, o), s.name, storage.Key{Kind: k, Name: prop}, mut)
		}
		if err != nil {
			if tok.on() {
				s.afterFailed()
			}
			return nil, nil, fmt.Errorf("krules: set %s %q of subject %q: %w", what(k), prop, s.name, err)
		}
		if hasIdem && storage.Replayed(bctx) {
			return nv, old, nil // the first call wrote and emitted
		}
		if tok.on() {
			s.afterDirect(k, prop, nv, true, true, tok)
		}
	} else {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		s.mu.Lock()
		if !s.loaded && !(o.writeOnly && mut.Op == nil && mut.Func == nil) {
			if err := s.loadLocked(ctx); err != nil {
				s.mu.Unlock()
				return nil, nil, err
			}
		}
		c := s.cache(k)
		i := c.find(prop)
		var exists bool
		old, exists = c.at(i)
		if mut.Op == nil && mut.Func == nil {
			nv = mut.Value // a plain value, already normalised
		} else {
			arg := old
			if exists && mut.Func != nil {
				arg = storage.Clone(old) // the function may mutate its argument
			}
			nv, err = mut.Apply(arg, exists)
			if err != nil {
				s.mu.Unlock()
				return nil, nil, fmt.Errorf("krules: set %s %q of subject %q: %w", what(k), prop, s.name, err)
			}
		}
		c.putAt(i, prop, nv, true, s.dseq.Load())
		s.noteFeed(ctx, k, prop, o) // change feed hook
		s.mu.Unlock()
	}
	if t.wants(hs) && (blind || !storage.Equal(nv, old)) {
		if err := s.emitProperty(ctx, t, hs, depth, lazyChanged, prop, old, nv, o.extra); err != nil {
			return nv, old, err
		}
	}
	return nv, old, nil
}

// Get returns a default property's value (a copy). A missing property gives
// the Default option's value if one was given, else an error wrapping
// ErrNotFound. Options (GetOption): Default, NoCache.
func (s *Subject) Get(ctx context.Context, prop string, opts ...GetOption) (any, error) {
	// Fast path (as in GetExt): a property found in the loaded cache has a
	// valid name (it was checked when set, or came from the store), and its
	// value makes the options (Default) moot.
	if s.cachedOK && (len(opts) == 0 || !hasNoCache(opts)) {
		s.mu.Lock()
		if s.loaded {
			if v, ok := s.props.get(prop); ok {
				s.mu.Unlock()
				return s.readable(storage.Default, prop, v)
			}
		}
		s.mu.Unlock()
	}
	return s.get(ctx, storage.Default, prop, opts)
}

// GetExt returns an extended property's value, as Get.
func (s *Subject) GetExt(ctx context.Context, prop string, opts ...GetOption) (any, error) {
	if s.cachedOK && (len(opts) == 0 || !hasNoCache(opts)) {
		s.mu.Lock()
		if s.loaded {
			if v, ok := s.ext.get(prop); ok {
				s.mu.Unlock()
				return s.readable(storage.Extended, prop, v)
			}
		}
		s.mu.Unlock()
	}
	return s.get(ctx, storage.Extended, prop, opts)
}

// get is Get and GetExt past their fast path: options, a NoCache read, a
// load, a missing property.
func (s *Subject) get(ctx context.Context, k storage.Kind, prop string, opts []GetOption) (any, error) {
	o := getOpts(s.base, opts)
	if err := s.check(k, prop); err != nil {
		return nil, err
	}
	if o.noCache {
		var v any
		var err error
		var tok directTok
		if !s.base.noCache {
			tok = s.directBegin()
		}
		if s.mem.Bound() {
			v, err = s.mem.Get(ctx, storage.Key{Kind: k, Name: prop})
		} else {
			v, err = s.app.backend.Get(ctx, s.name, storage.Key{Kind: k, Name: prop})
		}
		if errors.Is(err, ErrNotFound) {
			if tok.on() {
				s.afterDirect(k, prop, nil, false, false, tok)
			}
			if o.hasDef {
				return o.def, nil
			}
			return nil, s.notFound(k, prop)
		}
		if err != nil {
			return nil, fmt.Errorf("krules: get %s %q of subject %q: %w", what(k), prop, s.name, err)
		}
		if tok.on() {
			s.afterDirect(k, prop, v, true, false, tok)
		}
		return v, nil
	}
	s.mu.Lock()
	if err := s.loadLocked(ctx); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	v, ok := s.cache(k).get(prop)
	s.mu.Unlock()
	if !ok {
		if o.hasDef {
			return o.def, nil
		}
		return nil, s.notFound(k, prop)
	}
	return s.readable(k, prop, v)
}

// Has reports whether a default property exists (in the handle's cache,
// loading it if needed).
func (s *Subject) Has(ctx context.Context, prop string) (bool, error) {
	return s.has(ctx, storage.Default, prop)
}

// HasExt reports whether an extended property exists.
func (s *Subject) HasExt(ctx context.Context, prop string) (bool, error) {
	return s.has(ctx, storage.Extended, prop)
}

func (s *Subject) has(ctx context.Context, k storage.Kind, prop string) (bool, error) {
	if err := s.check(k, prop); err != nil {
		return false, err
	}
	props, ext, done, err := s.view(ctx)
	if err != nil {
		return false, err
	}
	defer done()
	c := props
	if k == storage.Extended {
		c = ext
	}
	_, ok := c.get(prop)
	return ok, nil
}

// Keys returns the names of the default properties, in insertion order
// (as far as the backend keeps it).
func (s *Subject) Keys(ctx context.Context) ([]string, error) {
	props, _, done, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return props.names(), nil
}

// ExtProps returns a copy of the extended properties.
func (s *Subject) ExtProps(ctx context.Context) (map[string]any, error) {
	_, ext, done, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return ext.toMap(), nil
}

// Dict exports the subject as in Python KRules:
// {"name": <subject name>, <property>: <value>, ..., "ext": {<extended>}}.
// As there, a property called "name" replaces the subject name, and the "ext"
// key always holds the extended properties.
func (s *Subject) Dict(ctx context.Context) (map[string]any, error) {
	props, ext, done, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	m := props.toMap()
	if _, ok := m["name"]; !ok {
		m["name"] = s.name
	}
	m["ext"] = ext.toMap()
	return m, nil
}

// Delete removes a default property and, unless Muted, emits
// PropertyDeleted (with WithExtra's Extra). A missing property is an error
// wrapping ErrNotFound. Options (DeleteOption): Muted, WithExtra, NoCache.
func (s *Subject) Delete(ctx context.Context, prop string, opts ...DeleteOption) error {
	return s.del(ctx, storage.Default, prop, opts)
}

// DeleteExt removes an extended property; it never emits.
func (s *Subject) DeleteExt(ctx context.Context, prop string, opts ...DeleteOption) error {
	return s.del(ctx, storage.Extended, prop, opts)
}

func (s *Subject) del(ctx context.Context, k storage.Kind, prop string, opts []DeleteOption) error {
	if err := s.check(k, prop); err != nil {
		return err
	}
	o := deleteOpts(s.base, opts)
	bctx, hasIdem := ctx, false
	if len(opts) > 0 {
		var idem string
		if idem, hasIdem = idemKeyOf(opts); hasIdem {
			var err error
			if bctx, err = s.directCtx(ctx, idem, o.noCache, nil); err != nil {
				return fmt.Errorf("krules: delete %s %q of subject %q: %w", what(k), prop, s.name, err)
			}
		}
	}
	t, hs, depth, err := s.listeners(ctx, k, &o, true)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var old any
	if o.noCache {
		var tok directTok
		if !s.base.noCache {
			tok = s.directBegin()
		}
		if s.mem.Bound() {
			old, err = s.mem.Delete(s.feedCtx(bctx, &o), storage.Key{Kind: k, Name: prop})
		} else {
			old, err = s.app.backend.Delete(s.feedCtx(bctx, &o), s.name, storage.Key{Kind: k, Name: prop})
		}
		if errors.Is(err, ErrNotFound) {
			if tok.on() { // the store lacks prop: so does the cache now
				s.afterDirect(k, prop, nil, false, false, tok)
			}
			return s.notFound(k, prop)
		}
		if err != nil {
			if tok.on() {
				s.afterFailed()
			}
			return fmt.Errorf("krules: delete %s %q of subject %q: %w", what(k), prop, s.name, err)
		}
		if hasIdem && storage.Replayed(bctx) {
			return nil // the first call deleted and emitted
		}
		if tok.on() {
			s.afterDirect(k, prop, nil, false, true, tok)
		}
	} else {
		s.mu.Lock()
		if err := s.loadLocked(ctx); err != nil {
			s.mu.Unlock()
			return err
		}
		c := s.cache(k)
		v, ok := c.get(prop)
		if !ok {
			s.mu.Unlock()
			return s.notFound(k, prop)
		}
		old = v
		c.remove(prop, true, s.dseq.Load())
		s.noteFeed(ctx, k, prop, &o) // change feed hook
		s.mu.Unlock()
	}
	if t.wants(hs) {
		return s.emitProperty(ctx, t, hs, depth, lazyDeleted, prop, old, nil, o.extra)
	}
	return nil
}

// Store writes the handle's cached changes to the store in one atomic batch
// and drops the cache (the next access reloads). Without a cache (or
// unsaved WriteOnly writes) it does nothing. If the store fails, the cache
// is kept and the error returned.
func (s *Subject) Store(ctx context.Context) error {
	if s.nameErr != nil {
		return fmt.Errorf("krules: %w", s.nameErr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded && !s.props.hasPending() && !s.ext.hasPending() {
		return nil
	}
	var b storage.Batch
	if n := s.props.pending + s.ext.pending; n > 0 {
		b.Puts = make([]storage.Write, 0, n)
	}
	s.props.batch(storage.Default, &b)
	s.ext.batch(storage.Extended, &b)
	if !b.Empty() {
		if err := s.app.backend.Store(s.storeCtx(ctx), s.name, b); err != nil { // change feed hook
			return fmt.Errorf("krules: store subject %q: %w", s.name, err)
		}
	}
	s.feedPending = nil // change feed hook
	s.loaded = false
	s.props, s.ext = propCache{}, propCache{}
	return nil
}

// Flush deletes the subject: it emits PropertyDeleted for every default
// property and then every extended one (insertion order; handlers still see
// the data), removes the subject from the store, drops the cache, and emits
// SubjectDeleted with {"props": ..., "ext_props": ...}. The snapshot is the
// handle's cache if loaded (unsaved changes included), else the stored
// subject.
//
// Once the first event is dispatched Flush runs to the end, so handlers and
// store never disagree: a ctx cancelled after that point is not seen by the
// remaining handlers nor by the store's flush.
func (s *Subject) Flush(ctx context.Context) error {
	if s.nameErr != nil {
		return fmt.Errorf("krules: %w", s.nameErr)
	}
	t := s.app.eventTable() // change feed hook: no local handlers under FeedRemote
	hsProp, hsSubj := t.builtin(PropertyDeleted), t.match(SubjectDeleted)
	if err := s.feedCheck(ctx, storage.Default, &callOptions{}, SubjectDeleted); err != nil { // change feed hook
		return err
	}
	depth := 0
	if t.wants(hsProp) || t.wants(hsSubj) {
		d, err := s.app.checkDepth(ctx, SubjectDeleted, s)
		if err != nil {
			return err
		}
		depth = d
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.loadLocked(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	type kv struct {
		name string
		v    any
	}
	var all []kv
	if t.wants(hsProp) {
		for n, v := range s.props.all() {
			all = append(all, kv{n, storage.Clone(v)})
		}
		for n, v := range s.ext.all() {
			all = append(all, kv{n, storage.Clone(v)})
		}
	}
	props, ext := s.props.toMap(), s.ext.toMap()
	s.mu.Unlock()

	ctx = context.WithoutCancel(ctx) // from here on, finish
	for _, p := range all {
		if err := s.emitProperty(ctx, t, hsProp, depth, lazyDeleted, p.name, p.v, nil, nil); err != nil {
			return err
		}
	}
	if err := s.app.backend.Flush(s.feedCtx(ctx, &callOptions{}), s.name); err != nil { // change feed hook
		return fmt.Errorf("krules: flush subject %q: %w", s.name, err)
	}
	s.mu.Lock()
	s.loaded = false
	s.props, s.ext = propCache{}, propCache{}
	s.mu.Unlock()
	if !t.wants(hsSubj) {
		return nil
	}
	ev := &Event{Type: SubjectDeleted, Subject: s, payload: Payload{"props": props, "ext_props": ext}, app: s.app}
	return s.app.deliver(ctx, t, hsSubj, ev, depth)
}
