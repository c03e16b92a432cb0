package krules

import (
	"context"
	"fmt"
	"sync"
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
type Payload map[string]any

// Extra is caller context passed with Set/Delete (WithExtra) to the handlers
// of the resulting event. A nil Extra stays nil, an empty one stays empty.
type Extra map[string]any

// Event is what a handler receives. One Event is shared by every handler and
// middleware of one emit (as in the original): changes to Payload or
// metadata by an earlier handler are visible to later ones.
type Event struct {
	// Type is the event type ("order.created", PropertyChanged, ...).
	Type string
	// Subject is the subject the event is about; for built-in events, the
	// very handle that was modified (handlers read its cache).
	Subject *Subject
	// Payload is never nil.
	Payload Payload
	// PropertyName, OldValue and NewValue are filled from the payload keys
	// property_name, old_value and value whenever the payload carries
	// property_name (built-in property events, and custom events too).
	PropertyName string
	OldValue     any
	NewValue     any
	// Extra is the context given with WithExtra (nil when none).
	Extra Extra

	app  *App
	ctx  depthCtx // the handlers' context: the emitter's plus the cascade depth
	mu   sync.Mutex
	meta map[string]any
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
func (e *Event) Emit(ctx context.Context, eventType string, payload Payload, opts ...CallOption) error {
	if depthOf(ctx) < e.ctx.depth {
		// Not the handler's ctx (e.g. context.Background()): keep counting
		// from this event's depth so a loop still hits the cascade limit.
		ctx = &depthCtx{Context: ctx, depth: e.ctx.depth}
	}
	return e.app.Emit(ctx, eventType, e.Subject, payload, opts...)
}

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

func (e *Event) fillProperty() {
	pn, ok := e.Payload[KeyPropertyName]
	if !ok {
		return
	}
	switch s := pn.(type) {
	case string:
		e.PropertyName = s
	default:
		e.PropertyName = fmt.Sprint(s)
	}
	e.OldValue = e.Payload[KeyOldValue]
	e.NewValue = e.Payload[KeyValue]
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
