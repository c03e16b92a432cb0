package krulestest

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"

	"github.com/krules-go/krules"
)

// RecorderHandlerName is the name of the handler a Recorder registers
// (what krules.HandlerName returns in middleware wrapping it).
const RecorderHandlerName = "krulestest.recorder"

// Recorded is one event as it was emitted: a copy taken when the event was
// dispatched, so later changes by handlers to its payload or metadata do not
// show. Payload, Extra and Meta are shallow copies (nested maps and slices
// are shared with the event).
type Recorded struct {
	// Seq is the position of the event in the Recorder, from 0.
	Seq int
	// Type is the event type.
	Type string
	// Subject is the name of the subject the event is about.
	Subject string
	// Payload is the event's payload (never nil).
	Payload krules.Payload
	// PropertyName, OldValue and NewValue are the event's property fields
	// (set for the built-in property events).
	PropertyName string
	OldValue     any
	NewValue     any
	// Extra is the event's Extra (nil when none was given).
	Extra krules.Extra
	// Meta is the event's metadata (never nil).
	Meta map[string]any
}

// String describes the event on one line: "type subject", then
// "property: old → new" for a property event or the payload otherwise.
func (r Recorded) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Type, r.Subject)
	switch {
	case r.Type == krules.PropertyDeleted:
		fmt.Fprintf(&b, " %s: %s (deleted)", r.PropertyName, show(r.OldValue))
	case r.PropertyName != "":
		fmt.Fprintf(&b, " %s: %s → %s", r.PropertyName, show(r.OldValue), show(r.NewValue))
	case len(r.Payload) > 0:
		fmt.Fprintf(&b, " %s", show(map[string]any(r.Payload)))
	}
	if len(r.Extra) > 0 {
		fmt.Fprintf(&b, " extra=%s", show(map[string]any(r.Extra)))
	}
	return b.String()
}

// Recorder keeps every event emitted through the App it is attached to, in
// the order of emission (depth first: an event emitted by a handler comes
// right after the event that handler reacts to and before the next one). It
// is safe for concurrent use; events emitted concurrently are recorded in
// the order their dispatch began.
type Recorder struct {
	mu      sync.Mutex
	events  []Recorded
	waiters []chan struct{}
	handler *krules.Handler
}

// Record attaches a new Recorder to app: a handler with the pattern "*"
// (named RecorderHandlerName). Register it before the App's own handlers so
// that every event is recorded before its handlers run; a Recorder attached
// later records an event after the handlers registered before it have run
// (so after the events they emitted). Stop detaches it.
func Record(app *krules.App) *Recorder {
	r := &Recorder{}
	r.handler = r.attach(app)
	return r
}

func (r *Recorder) attach(app *krules.App) *krules.Handler {
	return app.On("*").Named(RecorderHandlerName).Do(func(_ context.Context, ev *krules.Event) error {
		r.add(ev)
		return nil
	})
}

// Stop detaches the Recorder from its App; the events recorded so far stay.
// It reports whether the Recorder was still attached.
func (r *Recorder) Stop() bool {
	if r.handler == nil {
		return false
	}
	return r.handler.Remove()
}

func (r *Recorder) add(ev *krules.Event) {
	rec := snapshot(ev)
	r.mu.Lock()
	rec.Seq = len(r.events)
	r.events = append(r.events, rec)
	ws := r.waiters
	r.waiters = nil
	r.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

func snapshot(ev *krules.Event) Recorded {
	rec := Recorded{
		Type:         ev.Type,
		Payload:      maps.Clone(ev.Payload()),
		PropertyName: ev.PropertyName,
		OldValue:     ev.OldValue,
		NewValue:     ev.NewValue,
		Extra:        maps.Clone(ev.Extra),
		Meta:         ev.Metadata(),
	}
	if ev.Subject != nil {
		rec.Subject = ev.Subject.Name()
	}
	if rec.Payload == nil {
		rec.Payload = krules.Payload{}
	}
	return rec
}

// Events returns a copy of the recorded events, in order.
func (r *Recorder) Events() []Recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Recorded(nil), r.events...)
}

// Len returns the number of recorded events.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// Types returns the types of the recorded events, in order.
func (r *Recorder) Types() []string {
	evs := r.Events()
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type
	}
	return out
}

// Filter returns the recorded events m matches, in order.
func (r *Recorder) Filter(m *Matcher) []Recorded {
	var out []Recorded
	for _, e := range r.Events() {
		if m.Matches(e) {
			out = append(out, e)
		}
	}
	return out
}

// Reset forgets the recorded events (Seq starts from 0 again).
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.events = nil
	r.mu.Unlock()
}

// changed returns a channel closed at the next recorded event.
func (r *Recorder) changed() <-chan struct{} {
	ch := make(chan struct{})
	r.mu.Lock()
	r.waiters = append(r.waiters, ch)
	r.mu.Unlock()
	return ch
}

// dump lists events for a failure message.
func dump(evs []Recorded) string {
	if len(evs) == 0 {
		return "  (no events)"
	}
	var b strings.Builder
	for i, e := range evs {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "  %2d. %s", e.Seq, e)
	}
	return b.String()
}
