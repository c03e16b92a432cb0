package krules

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"reflect"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/krules-go/krules/storage"
)

// HandlerFunc handles an event. A returned error (or a panic) is passed to
// the App's error handler and never reaches the emitter; other handlers
// still run.
type HandlerFunc func(ctx context.Context, ev *Event) error

// Filter decides whether a handler runs for an event. Filters of a handler
// are evaluated in order and must all return true; a panicking filter counts
// as false and is reported to the error handler as a *PanicError.
type Filter func(ctx context.Context, ev *Event) bool

// Next continues a middleware chain: it runs the next middleware, or the
// handler itself.
type Next func(ctx context.Context) error

// Middleware wraps every matching, non-filtered handler of every event: the
// first registered is the outermost. Not calling next skips the handler;
// the error it returns is the handler's (after inner middleware), and the
// error the middleware returns goes to the error handler. When no handler
// matches an event, no middleware runs. HandlerName(ctx) tells which handler
// is wrapped.
type Middleware func(ctx context.Context, ev *Event, next Next) error

// Rule is a handler registration in progress: App.On(...).When(...).Do(fn).
type Rule struct {
	app      *App
	patterns []string
	filters  []Filter
	name     string
}

// On starts a handler registration for events whose type matches any of the
// patterns (Python fnmatch globs: '*', '?', '[abc]', '[!abc]'; whole type,
// case-sensitive). With no pattern the handler never matches.
func (a *App) On(patterns ...string) *Rule {
	return &Rule{app: a, patterns: slices.Clone(patterns)}
}

// When adds filters; all must pass (AND, in order, stopping at the first
// false).
func (r *Rule) When(filters ...Filter) *Rule {
	for _, f := range filters {
		if f != nil {
			r.filters = append(r.filters, f)
		}
	}
	return r
}

// Named sets the handler's name (for logs, HandlerName and App.Remove).
// Default: the Go name of the function given to Do.
func (r *Rule) Named(name string) *Rule {
	r.name = name
	return r
}

// Do registers fn and returns its Handler. A nil fn registers nothing: it
// is logged at level Error and the returned Handler's Remove reports false.
func (r *Rule) Do(fn HandlerFunc) *Handler {
	if fn == nil {
		r.app.logger.Error("krules: Do(nil): no handler registered", "patterns", r.patterns)
		return &Handler{app: r.app, name: r.name}
	}
	name := r.name
	if name == "" {
		name = funcName(fn)
	}
	h := &Handler{app: r.app, name: name, fn: fn, filters: slices.Clone(r.filters)}
	h.one = []*Handler{h}
	for _, p := range r.patterns {
		h.patterns = append(h.patterns, compilePattern(p))
	}
	a := r.app
	a.regMu.Lock()
	a.seq++
	h.seq = a.seq
	old := a.table.Load()
	// Appending in place is safe: older tables never read past their length,
	// and writers are serialised by regMu.
	a.table.Store(newTable(append(old.handlers, h), old.middleware, old.outbound))
	a.regMu.Unlock()
	return h
}

// Outbound registers an outbound hook: fn sees every event the App emits
// (App.Emit, Event.Emit, and the built-in events of Set, Delete and Flush),
// exactly once, after the event's local handlers, whether or not any local
// handler matched. Hooks run in registration order in the emitting
// goroutine, with the handlers' ctx (cascade depth included), without
// middleware and without filters; their errors and panics go to the error
// handler and to ObserveErrors observers like a handler's. Muted writes emit
// nothing, so hooks do not see them. A dispatch stopped by a cancelled ctx
// does not reach the hooks.
//
// This is the place for transports (HTTP egress, NATS publish): no dummy
// handler is needed to make an event leave the process. Events delivered by
// a transport's receiver are emits too: a hook that republishes must skip
// the events that came in (transports mark them in metadata). Hooks see the
// metadata the local handlers set (Event.SetMeta).
//
// name is used in error reports and by App.Remove; "" means the Go name of
// fn. The returned Handler's Remove unregisters the hook. RemoveAll does
// not remove hooks. A nil fn registers nothing (logged, as Do).
func (a *App) Outbound(name string, fn HandlerFunc) *Handler {
	if fn == nil {
		a.logger.Error("krules: Outbound(nil): no hook registered", "name", name)
		return &Handler{app: a, name: name}
	}
	if name == "" {
		name = funcName(fn)
	}
	h := &Handler{app: a, name: name, fn: fn, outbound: true}
	a.regMu.Lock()
	a.seq++
	h.seq = a.seq
	old := a.table.Load()
	a.table.Store(newTable(old.handlers, old.middleware, append(slices.Clip(old.outbound), h)))
	a.regMu.Unlock()
	return h
}

func funcName(fn any) string {
	f := runtime.FuncForPC(reflect.ValueOf(fn).Pointer())
	if f == nil {
		return "handler"
	}
	name := f.Name()
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	return name
}

// Handler is a registered handler.
type Handler struct {
	app      *App
	name     string
	patterns []*pattern
	filters  []Filter
	fn       HandlerFunc
	seq      uint64
	one      []*Handler // []*Handler{h}: a match result without allocation
	outbound bool       // an outbound hook (App.Outbound)
}

// Name returns the handler's name.
func (h *Handler) Name() string { return h.name }

// Patterns returns the handler's patterns.
func (h *Handler) Patterns() []string {
	out := make([]string, len(h.patterns))
	for i, p := range h.patterns {
		out[i] = p.src
	}
	return out
}

// Remove unregisters the handler; it reports whether it was registered.
// An emit already in progress still runs it.
func (h *Handler) Remove() bool {
	return h.app.remove(func(x *Handler) bool { return x == h }, true) == 1
}

// Remove unregisters every handler and outbound hook with the given name and
// returns how many.
func (a *App) Remove(name string) int {
	return a.remove(func(x *Handler) bool { return x.name == name }, true)
}

// RemoveAll unregisters every handler (middleware and outbound hooks stay)
// and returns how many.
func (a *App) RemoveAll() int {
	return a.remove(func(*Handler) bool { return true }, false)
}

func (a *App) remove(match func(*Handler) bool, outbound bool) int {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	old := a.table.Load()
	keep := make([]*Handler, 0, len(old.handlers))
	for _, h := range old.handlers {
		if !match(h) {
			keep = append(keep, h)
		}
	}
	n := len(old.handlers) - len(keep)
	out := old.outbound
	if outbound {
		out = make([]*Handler, 0, len(old.outbound))
		for _, h := range old.outbound {
			if !match(h) {
				out = append(out, h)
			}
		}
		n += len(old.outbound) - len(out)
	}
	if n > 0 {
		a.table.Store(newTable(keep, old.middleware, out))
	}
	return n
}

// Use appends middleware (see Middleware). It applies to emits that begin
// after the call.
func (a *App) Use(mw ...Middleware) {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	old := a.table.Load()
	mws := slices.Clip(old.middleware)
	for _, m := range mw {
		if m != nil {
			mws = append(mws, m)
		}
	}
	a.table.Store(newTable(old.handlers, mws, old.outbound))
}

// Handlers returns the registered handlers in registration order.
func (a *App) Handlers() []*Handler { return slices.Clone(a.table.Load().handlers) }

// table is an immutable snapshot of the registrations (copy-on-write): the
// emit path loads it with one atomic read and takes no lock. Its index is
// built once, lazily, on the first emit that needs it, so registering many
// handlers in a row costs O(1) each.
type table struct {
	handlers   []*Handler
	middleware []Middleware
	outbound   []*Handler

	once     sync.Once
	exact    map[string][]*Handler // literal pattern -> handlers (registration order)
	globs    map[string][]*Handler // literal prefix of a glob -> handlers
	lens     []int                 // the distinct lengths of the globs' prefixes, ascending
	matchAll []*Handler            // handlers with a "*" pattern
	cache    *matchCache           // only when there are globs
	changed  []*Handler            // the matches of PropertyChanged
	deleted  []*Handler            // the matches of PropertyDeleted
}

func newTable(handlers []*Handler, mws []Middleware, outbound []*Handler) *table {
	return &table{handlers: handlers, middleware: mws, outbound: outbound}
}

// wants reports whether an event matched to hs must be dispatched: a local
// handler matched or an outbound hook is registered.
func (t *table) wants(hs []*Handler) bool { return len(hs) > 0 || (t != nil && len(t.outbound) > 0) }

func (t *table) build() {
	t.exact = map[string][]*Handler{}
	t.globs = map[string][]*Handler{}
	for _, h := range t.handlers {
		all := false
		for i, p := range h.patterns {
			switch {
			case p.literal:
				if !seenBefore(h.patterns[:i], func(q *pattern) bool { return q.literal && q.src == p.src }) {
					t.exact[p.src] = append(t.exact[p.src], h)
				}
			case p.src == "*":
				all = true
			default:
				if !seenBefore(h.patterns[:i], func(q *pattern) bool { return !q.literal && q.src != "*" && q.prefix == p.prefix }) {
					t.globs[p.prefix] = append(t.globs[p.prefix], h)
				}
			}
		}
		if all {
			t.matchAll = append(t.matchAll, h)
		}
	}
	if len(t.globs) > 0 {
		t.cache = &matchCache{seed: maphash.MakeSeed()}
		for prefix := range t.globs {
			t.lens = append(t.lens, len(prefix))
		}
		slices.Sort(t.lens)
		t.lens = slices.Compact(t.lens)
	}
	t.changed, t.deleted = t.lookup(PropertyChanged), t.lookup(PropertyDeleted)
}

// builtin returns the handlers of a built-in property event type
// (PropertyChanged or PropertyDeleted), computed once per table.
func (t *table) builtin(eventType string) []*Handler {
	t.once.Do(t.build)
	switch eventType {
	case PropertyChanged:
		return t.changed
	case PropertyDeleted:
		return t.deleted
	}
	return t.match(eventType)
}

func seenBefore(ps []*pattern, same func(*pattern) bool) bool {
	for _, q := range ps {
		if same(q) {
			return true
		}
	}
	return false
}

// match returns the handlers for an event type, in registration order. It
// does not allocate when the result is one handler or comes from one source
// (the exact index or the "*" handlers); glob results are kept in an
// evicting cache.
func (t *table) match(eventType string) []*Handler {
	t.once.Do(t.build)
	if t.cache == nil {
		return t.merge(t.exact[eventType], nil)
	}
	ps := t.cache.pslot(eventType)
	if e := ps.Load(); e != nil && e.typ == eventType { // same string data: no byte compare
		return e.hs
	}
	// The second level's entry goes in the first-level slot too (no new
	// entry): a type string decoded afresh for each event (transports) has
	// a new address every time, and must not allocate per emit.
	e := t.matchHashed(eventType)
	ps.Store(e)
	return e.hs
}

// matchValid is match for an event type that is not yet validated: ok is
// false for a type that is not a valid name (badType gives the error). A
// type found in the match cache was validated when it was added, so a
// cache hit skips the validation.
func (t *table) matchValid(eventType string) (hs []*Handler, ok bool) {
	t.once.Do(t.build)
	if t.cache != nil {
		if e := t.cache.pslot(eventType).Load(); e != nil && e.typ == eventType {
			return e.hs, true
		}
	}
	if eventType == "" || len(eventType) > storage.MaxNameLen || !validString(eventType) {
		return nil, false
	}
	return t.match(eventType), true
}

// badType is the error of an event type matchValid refused.
func badType(eventType string) error {
	return fmt.Errorf("krules: emit: %w", storage.ValidateName("event type", eventType))
}

// matchHashed is match's second level, keyed by the type's bytes: it
// returns the type's entry, found or added.
func (t *table) matchHashed(eventType string) *cacheEntry {
	h := maphash.String(t.cache.seed, eventType)
	s1, s2 := t.cache.slot(h), t.cache.slot(h>>32)
	e1 := s1.Load()
	if e1 != nil && e1.typ == eventType {
		return e1
	}
	e2 := s2.Load()
	if e2 != nil && e2.typ == eventType {
		return e2
	}
	hs := t.lookup(eventType)
	// Two candidate slots: take a free one, else evict one of the two
	// (picked by a hash bit, so the cache keeps a share of a working set
	// larger than itself instead of thrashing).
	victim := s1
	if e1 != nil && (e2 == nil || h&(1<<20) != 0) {
		victim = s2
	}
	e := &cacheEntry{typ: eventType, hs: hs}
	victim.Store(e)
	return e
}

// lookup computes the handlers of an event type from the index (built).
func (t *table) lookup(eventType string) []*Handler {
	if len(t.globs) == 0 {
		return t.merge(t.exact[eventType], nil)
	}
	var buf [8]*Handler // merge never keeps globbed: it can live on the stack
	globbed := buf[:0]
	for _, i := range t.lens {
		if i > len(eventType) {
			break
		}
		for _, h := range t.globs[eventType[:i]] {
			for _, p := range h.patterns {
				if !p.literal && p.src != "*" && p.match(eventType) {
					globbed = append(globbed, h)
					break
				}
			}
		}
	}
	return t.merge(t.exact[eventType], globbed)
}

// merge combines the exact and glob matches with the "*" handlers, in
// registration order without duplicates, allocating only when more than one
// source contributes.
func (t *table) merge(exact, globbed []*Handler) []*Handler {
	switch {
	case len(globbed) == 0 && len(t.matchAll) == 0:
		return exact
	case len(exact) == 0 && len(globbed) == 0:
		return t.matchAll
	case len(exact) == 0 && len(t.matchAll) == 0 && len(globbed) == 1:
		return globbed[0].one
	}
	hs := make([]*Handler, 0, len(exact)+len(globbed)+len(t.matchAll))
	hs = append(hs, exact...)
	hs = append(hs, t.matchAll...)
	hs = append(hs, globbed...)
	slices.SortFunc(hs, func(a, b *Handler) int { return cmp.Compare(a.seq, b.seq) })
	return slices.Clip(slices.CompactFunc(hs, func(a, b *Handler) bool { return a == b }))
}

// matchCacheSlots is the size of a table's match cache (a power of two).
const matchCacheSlots = 8192

// matchPtrSlots is the size of the first level of a match cache (a power
// of two).
const matchPtrSlots = 2048

// matchCache is a lock-free cache of event type -> handlers in two levels.
// The first is direct-mapped by the address of the type string's bytes: an
// event type written as a constant in the code has one address, so its
// lookup is a multiplication and a pointer compare (the entry's string is
// compared too, which stops at the pointer when it is the same). The
// second is keyed by the bytes (maphash): each type has two candidate
// slots; a new type takes a free one or evicts one of the two, so the cache
// never stops admitting and its size is bounded (64 KiB of slots, plus
// 16 KiB for the first level, per table with globs).
type matchCache struct {
	seed   maphash.Seed
	slots  [matchCacheSlots]atomic.Pointer[cacheEntry]
	pslots [matchPtrSlots]atomic.Pointer[cacheEntry]
}

// pslot returns the first-level slot of eventType.
func (c *matchCache) pslot(eventType string) *atomic.Pointer[cacheEntry] {
	p := uint64(uintptr(unsafe.Pointer(unsafe.StringData(eventType))))
	return &c.pslots[(p*0x9E3779B97F4A7C15)>>(64-11)]
}

type cacheEntry struct {
	typ string
	hs  []*Handler
}

func (c *matchCache) slot(h uint64) *atomic.Pointer[cacheEntry] {
	return &c.slots[h&(matchCacheSlots-1)]
}

// Emit dispatches an event about subject to every matching handler, one
// after another in registration order, in the calling goroutine; it returns
// when all of them (and everything they emitted) are done. Handler errors
// and panics go to the error handler, never to the emitter. Emit returns an
// error only when the event is refused (empty type: ErrInvalidName; nil or
// invalid subject; ErrCascadeDepth) or when ctx is cancelled, which stops
// the dispatch before the next handler. A nil payload is an empty one.
// Options (EmitOption): WithExtra, WithMeta. Outbound hooks (App.Outbound)
// see the event after the local handlers. The bytes of eventType must not
// change after the call (an ordinary Go string never does; a string made
// with unsafe.String over a reused buffer would confuse the match cache).
func (a *App) Emit(ctx context.Context, eventType string, subject *Subject, payload Payload, opts ...EmitOption) error {
	if len(opts) == 0 {
		return a.emit(ctx, eventType, subject, payload, nil, nil)
	}
	extra, meta := emitOpts(opts)
	return a.emit(ctx, eventType, subject, payload, extra, meta)
}

func (a *App) emit(ctx context.Context, eventType string, subject *Subject, payload Payload, extra Extra, meta map[string]any) error {
	t := a.table.Load()
	hs, ok := t.matchValid(eventType)
	if !ok {
		return badType(eventType)
	}
	if subject == nil {
		return fmt.Errorf("krules: emit %q: %w: nil subject", eventType, ErrInvalidName)
	}
	if subject.nameErr != nil {
		return fmt.Errorf("krules: emit %q: %w", eventType, subject.nameErr)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !t.wants(hs) {
		return nil
	}
	depth, err := a.checkDepth(ctx, eventType, subject)
	if err != nil {
		return err
	}
	ev := a.newEvent()
	ev.Type, ev.Subject, ev.payload, ev.Extra, ev.app, ev.meta = eventType, subject, payload, extra, a, meta
	if payload == nil {
		ev.lazy = lazyEmpty
	} else {
		ev.fillProperty()
	}
	return a.deliver(ctx, t, hs, ev, depth)
}

// checkDepth refuses (and logs) an emit nested deeper than the cascade
// limit; it returns ctx's cascade depth.
func (a *App) checkDepth(ctx context.Context, eventType string, subject *Subject) (int, error) {
	depth := depthOf(ctx)
	if depth >= a.cascadeLimit {
		return depth, a.tooDeep(ctx, eventType, subject)
	}
	return depth, nil
}

// tooDeep logs and returns the ErrCascadeDepth error of checkDepth (kept
// out of it: a smaller frame on every emit).
func (a *App) tooDeep(ctx context.Context, eventType string, subject *Subject) error {
	a.logger.ErrorContext(ctx, "krules: cascade depth limit exceeded", "event", eventType, "subject", subject.name, "limit", a.cascadeLimit)
	return fmt.Errorf("krules: emit %q on %q: %w (limit %d)", eventType, subject.name, ErrCascadeDepth, a.cascadeLimit)
}

// deliver runs the handlers hs (matched in table t) and the outbound hooks
// for ev, an admitted event emitted at cascade depth depth. The caller has
// just checked ctx.
func (a *App) deliver(ctx context.Context, t *table, hs []*Handler, ev *Event, depth int) error {
	ev.ctx = depthCtx{Context: ctx, depth: depth + 1}
	hctx := context.Context(&ev.ctx)
	for i, h := range hs {
		if i > 0 { // the callers checked ctx just before the first
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if len(h.filters) > 0 && !a.pass(hctx, ev, h) {
			continue
		}
		if err := a.run(hctx, ev, h, t.middleware); err != nil {
			a.report(hctx, ev, h.name, err)
		}
	}
	for _, h := range t.outbound {
		if err := ctx.Err(); err != nil {
			return err
		}
		a.invoke(hctx, ev, h, nil)
	}
	return nil
}

func (a *App) pass(ctx context.Context, ev *Event, h *Handler) bool {
	for _, f := range h.filters {
		if !a.callFilter(ctx, ev, h, f) {
			return false
		}
	}
	return true
}

func (a *App) callFilter(ctx context.Context, ev *Event, h *Handler, f Filter) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			ok = false
			a.report(ctx, ev, h.name, fmt.Errorf("filter panicked (handler skipped): %w", &PanicError{Value: r, Stack: debug.Stack()}))
		}
	}()
	return f(ctx, ev)
}

type handlerKey struct{}

// HandlerName returns the name of the handler a middleware is wrapping (""
// outside a middleware chain).
func HandlerName(ctx context.Context) string {
	if h, ok := ctx.Value(handlerKey{}).(*Handler); ok {
		return h.name
	}
	return ""
}

func (a *App) invoke(ctx context.Context, ev *Event, h *Handler, mws []Middleware) {
	if err := a.run(ctx, ev, h, mws); err != nil {
		a.report(ctx, ev, h.name, err)
	}
}

// report passes a handler's error to the App's error handler and to the
// context's observer (ObserveErrors).
func (a *App) report(ctx context.Context, ev *Event, handler string, err error) {
	a.onError(ctx, ev, handler, err)
	if obs, ok := ctx.Value(observerKey{}).(ErrorHandler); ok {
		obs(ctx, ev, handler, err)
	}
}

type observerKey struct{}

// ObserveErrors returns a context under which every handler error (after its
// middleware) and recovered panic of the emits made with it, cascades
// included, is also passed to h, after the App's error handler. Transports
// use it to tell whether an event was fully handled (ack) or not (retry). h
// runs in the emitting goroutine; it must be safe for concurrent use if the
// context is shared between goroutines.
func ObserveErrors(ctx context.Context, h ErrorHandler) context.Context {
	return context.WithValue(ctx, observerKey{}, h)
}

func (a *App) run(ctx context.Context, ev *Event, h *Handler, mws []Middleware) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	if len(mws) == 0 {
		return h.fn(ctx, ev)
	}
	ctx = context.WithValue(ctx, handlerKey{}, h)
	return chain(ctx, ev, h, mws)
}

func chain(ctx context.Context, ev *Event, h *Handler, mws []Middleware) error {
	if len(mws) == 0 {
		return h.fn(ctx, ev)
	}
	return mws[0](ctx, ev, func(ctx context.Context) error {
		return chain(ctx, ev, h, mws[1:])
	})
}
