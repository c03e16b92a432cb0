package krules

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Built-in event types, emitted by Subject.
const (
	// PropertyChanged is emitted by Set when a default property's value
	// changes (not muted, new value not Equal to the old one). Payload:
	// {"property_name", "old_value", "value"}.
	PropertyChanged = "subject-property-changed"
	// PropertyDeleted is emitted by Delete (unless muted) and by Flush for
	// every property. Payload: {"property_name", "old_value"}.
	PropertyDeleted = "subject-property-deleted"
	// SubjectDeleted is emitted at the end of Flush. Payload:
	// {"props": map, "ext_props": map} with the subject's last content.
	SubjectDeleted = "subject-deleted"
	// SubjectFlushed is the old name of SubjectDeleted (as in Python KRules).
	//
	// Deprecated: use SubjectDeleted.
	SubjectFlushed = SubjectDeleted
)

// Payload keys of the built-in events.
const (
	KeyPropertyName = "property_name"
	KeyOldValue     = "old_value"
	KeyValue        = "value"
)

// Payload is the data of an event. All handlers of one emit share it.
//
// A payload's numbers have different Go types depending on where the event
// came from: the types the emitter used (int, uint8, float32, ...) for a
// local emit, int64 or float64 after a round trip through a store or a
// transport (HTTP, NATS), json.Number from some decoders. Read them with
// the typed getters (Int, Float, String, Bool), which accept all of these,
// or decode the payload into a struct (Decode), rather than with a type
// assertion such as p["amount"].(int), which fails on wire events.
type Payload map[string]any

// Int returns p[key] as an int64. ok is false when the key is missing or
// the value is not an integral number that fits in an int64: any Go integer
// type, a float32 or float64 with no fractional part, a json.Number, or a
// named type over one of those. Strings are not converted.
func (p Payload) Int(key string) (int64, bool) { return toInt(p[key]) }

// Float returns p[key] as a float64. ok is false when the key is missing or
// the value is not a number (any Go integer or float type, json.Number, or
// a named type over one of those). Strings are not converted.
func (p Payload) Float(key string) (float64, bool) { return toFloat(p[key]) }

// String returns p[key] when it is a string (or a named string type); ok is
// false otherwise. Other types are not formatted.
func (p Payload) String(key string) (string, bool) {
	switch v := p[key].(type) {
	case string:
		return v, true
	case json.Number, nil:
		return "", false
	}
	if rv := reflect.ValueOf(p[key]); rv.Kind() == reflect.String {
		return rv.String(), true
	}
	return "", false
}

// Bool returns p[key] when it is a bool (or a named bool type); ok is false
// otherwise. Strings and numbers are not converted.
func (p Payload) Bool(key string) (bool, bool) {
	switch v := p[key].(type) {
	case bool:
		return v, true
	case nil:
		return false, false
	}
	if rv := reflect.ValueOf(p[key]); rv.Kind() == reflect.Bool {
		return rv.Bool(), true
	}
	return false, false
}

// Decode fills v (a non-nil pointer, typically to a struct with json tags)
// from the payload through its JSON encoding, so numbers of any Go type,
// nested maps and lists decode as encoding/json does. Fields absent from the
// payload keep their value. An error (a value that does not fit v's type, a
// nil or non-pointer v) wraps ErrInvalidValue.
func (p Payload) Decode(v any) error {
	data, err := json.Marshal(map[string]any(p))
	if err != nil {
		return fmt.Errorf("krules: decode payload: %w: %v", ErrInvalidValue, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("krules: decode payload into %T: %w: %v", v, ErrInvalidValue, err)
	}
	return nil
}

func toInt(v any) (int64, bool) {
	switch x := v.(type) {
	case nil:
		return 0, false
	case int64:
		return x, true
	case int:
		return int64(x), true
	case float64:
		return floatInt(x)
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, true
		}
		f, err := x.Float64()
		if err != nil {
			return 0, false
		}
		return floatInt(f)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int(), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		u := rv.Uint()
		if u > math.MaxInt64 {
			return 0, false
		}
		return int64(u), true
	case reflect.Float32, reflect.Float64:
		return floatInt(rv.Float())
	}
	return 0, false
}

func floatInt(f float64) (int64, bool) {
	if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, false
	}
	return int64(f), true
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case nil:
		return 0, false
	case float64:
		return x, true
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return float64(rv.Uint()), true
	case reflect.Float32, reflect.Float64:
		return rv.Float(), true
	}
	return 0, false
}

// Extra is caller context passed with Set/Delete (WithExtra) to the handlers
// of the resulting event. A nil Extra stays nil, an empty one stays empty.
type Extra map[string]any

// Event is what a handler receives. One Event is shared by every handler and
// middleware of one emit (as in the original): changes to the payload map or
// metadata by an earlier handler are visible to later ones.
//
// An Event stays valid after its handlers return (it is not reused), so a
// handler may keep it or hand it to a goroutine. Events are allocated in
// blocks of eighteen: an Event kept for long keeps its block (2.7 KB)
// and what the block's other events refer to (payloads, old and new values,
// subject handles, contexts) alive. The handler's ctx is part of its Event,
// so a goroutine or derived context that outlives the handler keeps the
// block too. The App itself holds its current blocks (one per stripe, four
// in all) until the next emit on the same stripe after they are full, so
// up to 4 x 18 recently dispatched events stay reachable until more are
// emitted (indefinitely in an App that goes idle). A handler
// that keeps events of large values for long should keep what it needs
// from them (or a copy) instead.
type Event struct {
	// Type is the event type ("order.created", PropertyChanged, ...).
	Type string
	// Subject is the subject the event is about; for built-in events, the
	// very handle that was modified (handlers read its cache).
	Subject *Subject
	// PropertyName, OldValue and NewValue describe the property of a
	// built-in property event (PropertyChanged, PropertyDeleted; NewValue is
	// nil for a deletion). For other events they are filled from the payload
	// keys property_name, old_value and value when the payload carries
	// property_name. Reading them costs nothing: prefer them to Payload.
	// Handlers must not assign them: the payload of a built-in event is
	// built from them on the first Payload call. On a WriteOnly handle,
	// OldValue is the handle's own earlier write (nil before the first),
	// not the stored value, which that handle never loaded.
	PropertyName string
	OldValue     any
	NewValue     any
	// Extra is the context given with WithExtra (nil when none).
	Extra Extra

	app *App
	ctx depthCtx // the handlers' context: the emitter's plus the cascade depth

	// payload is the emitted payload; for built-in property events (and a
	// nil emitted payload) it is built on the first Payload call, under mu.
	payload Payload
	lazy    lazyKind

	mu   sync.Mutex // guards meta, and payload when lazy != lazyNone
	meta map[string]any
}

// lazyKind tells how Payload builds a payload that was not emitted as a map.
type lazyKind uint8

const (
	lazyNone    lazyKind = iota // payload was given (non-nil): no building
	lazyEmpty                   // a nil payload: an empty map
	lazyChanged                 // PropertyChanged: property_name, old_value, value
	lazyDeleted                 // PropertyDeleted: property_name, old_value
)

// Payload returns the event's data; it is never nil. For App.Emit and
// Event.Emit it is the map given to the emit (not copied); for the built-in
// property events it is built on the first call, from PropertyName,
// OldValue and NewValue ({"property_name", "old_value", "value"}; no "value"
// for PropertyDeleted), and the same map is returned afterwards. Every
// handler of one emit gets the same map. Safe for concurrent use; writing
// to the map is not (handlers of one emit run one after another).
func (e *Event) Payload() Payload {
	if e.lazy == lazyNone && e.payload != nil {
		return e.payload
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.payload != nil {
		return e.payload
	}
	switch e.lazy {
	case lazyChanged:
		e.payload = Payload{KeyPropertyName: e.PropertyName, KeyOldValue: e.OldValue, KeyValue: e.NewValue}
	case lazyDeleted:
		e.payload = Payload{KeyPropertyName: e.PropertyName, KeyOldValue: e.OldValue}
	default:
		e.payload = Payload{}
	}
	return e.payload
}

// Meta returns the metadata value for key (set with WithMeta at emit time,
// or by SetMeta in an earlier middleware or handler). Safe for concurrent use.
func (e *Event) Meta(key string) (any, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.meta[key]
	return v, ok
}

// SetMeta sets a metadata value, visible to later middleware and handlers
// of the same emit. Safe for concurrent use.
func (e *Event) SetMeta(key string, v any) {
	e.mu.Lock()
	if e.meta == nil {
		e.meta = make(map[string]any)
	}
	e.meta[key] = v
	e.mu.Unlock()
}

// Metadata returns a copy of all metadata.
func (e *Event) Metadata() map[string]any {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]any, len(e.meta))
	for k, v := range e.meta {
		out[k] = v
	}
	return out
}

// Emit emits another event about the same subject, from inside a handler.
// Use the handler's ctx so the cascade depth is tracked. A nil payload is an
// empty one. Nothing (metadata, Extra) is inherited from e.
func (e *Event) Emit(ctx context.Context, eventType string, payload Payload, opts ...EmitOption) error {
	if depthOf(ctx) < e.ctx.depth {
		// Not the handler's ctx (e.g. context.Background()): keep counting
		// from this event's depth so a loop still hits the cascade limit.
		ctx = &depthCtx{Context: ctx, depth: e.ctx.depth}
	}
	return e.app.Emit(ctx, eventType, e.Subject, payload, opts...)
}

// Decode fills v from the event's payload (see Payload.Decode).
func (e *Event) Decode(v any) error { return e.Payload().Decode(v) }

// App returns the App that dispatched the event.
func (e *Event) App() *App { return e.app }

// String describes the event for logs.
func (e *Event) String() string {
	name := ""
	if e.Subject != nil {
		name = e.Subject.name
	}
	return fmt.Sprintf("%s on %s", e.Type, name)
}

// fillProperty fills PropertyName, OldValue and NewValue from an emitted
// payload that carries property_name.
func (e *Event) fillProperty() {
	pn, ok := e.payload[KeyPropertyName]
	if !ok {
		return
	}
	switch s := pn.(type) {
	case string:
		e.PropertyName = s
	default:
		e.PropertyName = fmt.Sprint(s)
	}
	e.OldValue = e.payload[KeyOldValue]
	e.NewValue = e.payload[KeyValue]
}

// depthCtx carries the cascade depth; embedded in Event so an emit costs one
// allocation for both.
type depthCtx struct {
	context.Context
	depth int
}

type depthKey struct{}

func (c *depthCtx) Value(key any) any {
	if key == (depthKey{}) {
		return c.depth
	}
	return c.Context.Value(key)
}

func depthOf(ctx context.Context) int {
	if d, ok := ctx.Value(depthKey{}).(int); ok {
		return d
	}
	return 0
}

// eventSlabSize is how many Events one allocation holds (see
// App.newEvent).
const eventSlabSize = 18 // 18 x 144 B + 8: fills the 2688-byte size class

// eventSlab is a block of Events allocated at once and handed out one by
// one, each index claimed by one atomic add; an Event is never handed out
// twice.
type eventSlab struct {
	n   atomic.Uint32 // indexes claimed so far (may pass eventSlabSize: full)
	evs [eventSlabSize]Event
}

// eventStripes is how many current slabs an App keeps: goroutines emitting
// at once on one App mostly claim from different slabs, so they do not
// contend on one cache line.
const (
	eventStripeBits = 2
	eventStripes    = 1 << eventStripeBits
)

// eventSlabs holds an App's current slabs, one per stripe, 64 bytes apart
// (the pointers change once per slab; the contended claim counters are in
// the slabs themselves).
type eventSlabs [eventStripes]struct {
	cur atomic.Pointer[eventSlab]
	_   [56]byte
}

// newEvent returns a new, zero Event. Events are allocated eighteen at a
// time (one heap allocation per eighteen emits instead of one per emit) and
// never reused, so a handler may keep its Event as long as it likes; the
// cost is that a kept Event keeps the memory of its slab (2.7 KB) alive
// until every Event of the slab is unreachable, and that the App keeps its
// current slabs (up to 18 handed-out Events each) until the next claim on
// their stripe after they are full.
//
// The stripe is picked from the address of the calling goroutine's stack,
// which differs between goroutines: it spreads concurrent emitters, and a
// collision costs only contention, never correctness.
func (a *App) newEvent() *Event {
	var probe byte
	// >>11: goroutine stacks start at 2 KiB, so neighbouring goroutines differ there.
	st := &a.slabs[(uint64(uintptr(unsafe.Pointer(&probe))>>11)*0x9E3779B97F4A7C15)>>(64-eventStripeBits)].cur
	sl := st.Load()
	if sl != nil {
		if i := sl.n.Add(1); i <= eventSlabSize {
			return &sl.evs[i-1]
		}
	}
	return newSlab(st, sl)
}

// newSlab installs a new slab in st, whose current slab old is full (or
// nil), and returns its first Event; if another goroutine installed one
// first, it claims from that one instead.
func newSlab(st *atomic.Pointer[eventSlab], old *eventSlab) *Event {
	fresh := new(eventSlab)
	fresh.n.Store(1)
	for !st.CompareAndSwap(old, fresh) {
		old = st.Load()
		if i := old.n.Add(1); i <= eventSlabSize {
			return &old.evs[i-1] // fresh is dropped unused: rare
		}
	}
	return &fresh.evs[0]
}
