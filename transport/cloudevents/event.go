package cloudevents

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// Metadata keys read or written by this package (krules.WithMeta, Event.Meta).
const (
	// MetaCloudEvent holds the incoming CloudEvent (a *event.Event, read-only) on the
	// event that Deliver (the Receiver, the NATS worker) emits into the App.
	MetaCloudEvent = "cloudevent"
	// MetaDispatchURL names the target of the egress middleware: a string,
	// a URLFunc or a func(subject, eventType string) string.
	MetaDispatchURL = "dispatch_url"
	// MetaDispatchPolicy overrides the dispatcher's default policy for one
	// event: "direct" or "both" (legacy "never", "always", "default" are
	// understood as in Python KRules).
	MetaDispatchPolicy = "dispatch_policy"
	// MetaDataSchema, when set to a string, becomes the dataschema attribute
	// of a dispatched event.
	MetaDataSchema = "dataschema"
	// MetaDispatched is set to true after a successful dispatch;
	// MetaDispatchedURL to the URL; MetaDispatchError to the error text
	// after a failed one (as the Python middleware does).
	MetaDispatched    = "_dispatched"
	MetaDispatchedURL = "_dispatched_url"
	MetaDispatchError = "_dispatch_error"
	// MetaEventID is set by FromKrules (so by the HTTP dispatcher and the
	// NATS publisher) to the id of the CloudEvent it built for the event;
	// later conversions of the same event (another destination, a retry)
	// reuse it, so every copy of one KRules event has one CloudEvent id.
	// A non-empty string set beforehand is used as the id.
	MetaEventID = "_cloudevent_id"
)

// Extension names used by KRules.
const (
	// ExtOriginID is the id of the event that started a chain of events.
	ExtOriginID = "originid"
	// ExtPropertyName carries property_name of property events.
	ExtPropertyName = "propertyname"
	// ExtTraceParent and ExtTraceState carry the W3C Trace Context of the
	// event (the CloudEvents Distributed Tracing extension). FromKrules
	// fills them from the event metadata of the same names (MetaTraceParent,
	// MetaTraceState, written by the otel middleware's Inject); Deliver and
	// the NATS worker copy them back into the metadata of the emitted event,
	// where the otel middleware's Extract finds them.
	ExtTraceParent = "traceparent"
	ExtTraceState  = "tracestate"
)

// Metadata keys of the W3C Trace Context, the same as the otel
// middleware's (middleware/otel.MetaTraceParent and MetaTraceState).
const (
	MetaTraceParent = "traceparent"
	MetaTraceState  = "tracestate"
)

// TraceOptions returns the krules.WithMeta options that put the trace
// context of e (its traceparent and tracestate extensions, when they are
// non-empty strings) into the metadata of the event emitted for it. Deliver
// and the NATS worker use it; it returns nil when e carries no trace.
func TraceOptions(e *event.Event) []krules.EmitOption {
	if e == nil {
		return nil
	}
	var opts []krules.EmitOption
	ext := e.Extensions()
	if s, ok := ext[ExtTraceParent].(string); ok && s != "" {
		opts = append(opts, krules.WithMeta(MetaTraceParent, s))
		if s, ok := ext[ExtTraceState].(string); ok && s != "" {
			opts = append(opts, krules.WithMeta(MetaTraceState, s))
		}
	}
	return opts
}

// ContentTypeJSON is the datacontenttype of the events this package builds.
const ContentTypeJSON = "application/json"

// InternalPrefix marks extended properties that krules keeps for itself
// (for example the NATS worker's idempotency record); they are never sent
// as CloudEvent extensions.
const InternalPrefix = "_krules"

// ErrMalformed is wrapped by every error about an event that can never be
// processed: missing required attributes, missing subject, data that is not
// a JSON object, an unsupported datacontenttype, an invalid subject name.
var ErrMalformed = errors.New("malformed CloudEvent")

type ctxKey struct{}

// delivery is what NewContext puts in a context: the incoming CloudEvent
// and the per-delivery emit counters behind deterministic event ids.
type delivery struct {
	e  *event.Event
	mu sync.Mutex     // guards n, and the MetaEventID memo of FromKrules
	n  map[string]int // ids derived so far per "type\x00subject"
}

// emitNamespace is the UUID namespace of the ids derived inside a delivery.
var emitNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://github.com/krules-go/krules/transport/cloudevents#emit"))

// nextID returns the id of the next event of this type and subject built
// inside the delivery: a name-based (version 5) UUID of the incoming
// event's source and id, the type, the subject and the ordinal of the
// event among those of the same type and subject built so far in this
// delivery. The same delivery, repeated with the same emissions, gives the
// same ids. The caller holds d.mu.
func (d *delivery) nextID(eventType, subject string) string {
	key := eventType + "\x00" + subject
	n := d.n[key]
	if d.n == nil {
		d.n = make(map[string]int)
	}
	d.n[key] = n + 1
	name := d.e.Source() + "\x00" + d.e.ID() + "\x00" + key + "\x00" + strconv.Itoa(n)
	return uuid.NewSHA1(emitNamespace, []byte(name)).String()
}

// NewContext returns a context carrying e as the CloudEvent that started the
// processing — one delivery of e. Deliver (so the HTTP Receiver) and the
// NATS worker do this, so handlers — and the handlers of events they emit
// with their ctx — can find it with FromContext.
//
// It also starts the delivery's emit counters: inside it, NewEvent and
// FromKrules give the events they build deterministic ids instead of random
// ones (see EventOptions.ID), so that a redelivery of e that emits the same
// events again gives them the same ids. Call it once per delivery.
func NewContext(ctx context.Context, e *event.Event) context.Context {
	return context.WithValue(ctx, ctxKey{}, &delivery{e: e})
}

func deliveryOf(ctx context.Context) *delivery {
	d, _ := ctx.Value(ctxKey{}).(*delivery)
	if d == nil || d.e == nil {
		return nil
	}
	return d
}

// FromContext returns the incoming CloudEvent ctx carries (see NewContext).
// The event must be treated as read-only.
func FromContext(ctx context.Context) (*event.Event, bool) {
	d := deliveryOf(ctx)
	if d == nil {
		return nil, false
	}
	return d.e, true
}

// OriginID returns the origin id of the chain ctx belongs to: the originid
// extension of the incoming CloudEvent, else that event's id; "" when ctx
// carries no CloudEvent.
func OriginID(ctx context.Context) string {
	e, ok := FromContext(ctx)
	if !ok {
		return ""
	}
	if v, ok := e.Extensions()[ExtOriginID]; ok {
		if s, ok := v.(string); ok && s != "" {
			return s
		}
		if s := fmt.Sprint(v); s != "" {
			return s
		}
	}
	return e.ID()
}

// DefaultSource returns the source attribute used when none is configured:
// the CE_SOURCE environment variable, else K_SERVICE (Knative), else the
// host name, else "krules" (as Python KRules' get_source).
func DefaultSource() string {
	if s := os.Getenv("CE_SOURCE"); s != "" {
		return s
	}
	if s := os.Getenv("K_SERVICE"); s != "" {
		return s
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "krules"
}

// NormalizeExtensionName maps a name to the CloudEvents attribute-name rule
// [a-z0-9]+: letters are lower-cased and every other character dropped
// ("Tenant_ID" -> "tenantid"). The result may be empty.
func NormalizeExtensionName(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case r >= 'A' && r <= 'Z':
			b.WriteRune(r + ('a' - 'A'))
		}
	}
	return b.String()
}

// reserved are the context attribute names an extension may not take.
var reserved = map[string]bool{
	"id": true, "source": true, "specversion": true, "type": true, "subject": true, "time": true,
	"datacontenttype": true, "dataschema": true, "data": true, "data_base64": true, "datacontentencoding": true,
}

// EventOptions are the optional parts of a built CloudEvent.
type EventOptions struct {
	// ID of the event. Default: inside a delivery (ctx from NewContext,
	// as in the handlers run by Deliver, the HTTP Receiver and the NATS
	// worker) a deterministic UUID derived from the incoming event's
	// source and id, the event type, the subject and the ordinal of the
	// event among those of the same type and subject built in the delivery
	// (see NewContext); outside a delivery a new random UUID.
	ID string
	// Source attribute. Default: DefaultSource().
	Source string
	// Time attribute. Default: now, UTC.
	Time time.Time
	// OriginID extension. Default: OriginID(ctx), else the event's own id.
	OriginID string
	// DataSchema attribute, if not empty.
	DataSchema string
	// Extensions to add. Names are normalised with NormalizeExtensionName;
	// names that normalise to "" or to a context attribute are skipped, and
	// when two names normalise to the same one the first in sorted order
	// wins. Strings stay strings; every other value is sent as its compact
	// JSON text.
	Extensions map[string]any
}

// NewEvent builds the CloudEvent (spec 1.0, datacontenttype
// application/json) of a KRules event: type, subject, the payload as data,
// the originid extension, and the propertyname extension when the payload
// carries property_name. It fails (wrapping ErrMalformed) on an empty type
// or subject and on a payload that is not JSON-encodable.
func NewEvent(ctx context.Context, eventType, subject string, payload krules.Payload, o EventOptions) (*event.Event, error) {
	if eventType == "" {
		return nil, fmt.Errorf("%w: empty event type", ErrMalformed)
	}
	if subject == "" {
		return nil, fmt.Errorf("%w: event %q: empty subject", ErrMalformed, eventType)
	}
	e := event.New(event.CloudEventsVersionV1)
	id := o.ID
	if id == "" {
		if d := deliveryOf(ctx); d != nil {
			d.mu.Lock()
			id = d.nextID(eventType, subject)
			d.mu.Unlock()
		} else {
			id = uuid.NewString()
		}
	}
	e.SetID(id)
	e.SetType(eventType)
	src := o.Source
	if src == "" {
		src = DefaultSource()
	}
	e.SetSource(src)
	e.SetSubject(subject)
	t := o.Time
	if t.IsZero() {
		t = time.Now()
	}
	e.SetTime(t.UTC())
	if o.DataSchema != "" {
		e.SetDataSchema(o.DataSchema)
	}
	if payload == nil {
		payload = krules.Payload{}
	}
	data, err := marshalPayload(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: event %q on %q: payload: %v", ErrMalformed, eventType, subject, err)
	}
	e.SetDataContentType(ContentTypeJSON)
	e.DataEncoded = data

	names := make([]string, 0, len(o.Extensions))
	for k := range o.Extensions {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		n := NormalizeExtensionName(k)
		if n == "" || reserved[n] || n == ExtOriginID || n == ExtPropertyName {
			continue
		}
		if _, dup := e.Extensions()[n]; dup {
			continue
		}
		v, err := extensionValue(o.Extensions[k])
		if err != nil {
			return nil, fmt.Errorf("%w: event %q on %q: extension %q: %v", ErrMalformed, eventType, subject, k, err)
		}
		if err := e.Context.SetExtension(n, v); err != nil {
			return nil, fmt.Errorf("%w: event %q on %q: extension %q: %v", ErrMalformed, eventType, subject, k, err)
		}
	}
	if pn, ok := payload[krules.KeyPropertyName]; ok {
		s, ok := pn.(string)
		if !ok {
			s = fmt.Sprint(pn)
		}
		if err := e.Context.SetExtension(ExtPropertyName, s); err != nil {
			return nil, fmt.Errorf("%w: event %q on %q: %v", ErrMalformed, eventType, subject, err)
		}
	}
	origin := o.OriginID
	if origin == "" {
		origin = OriginID(ctx)
	}
	if origin == "" {
		origin = id
	}
	if err := e.Context.SetExtension(ExtOriginID, origin); err != nil {
		return nil, fmt.Errorf("%w: event %q on %q: %v", ErrMalformed, eventType, subject, err)
	}
	return &e, nil
}

// FromKrules builds the CloudEvent of a dispatched KRules event: as NewEvent,
// plus the subject's extended properties as extensions (except the internal
// ones, see InternalPrefix), the dataschema metadata, and the trace context
// metadata (MetaTraceParent, MetaTraceState, when they are non-empty
// strings) as the traceparent and tracestate extensions. Extended
// properties named traceparent or tracestate are never sent: a stored trace
// context would be stale.
func FromKrules(ctx context.Context, ev *krules.Event, source string) (*event.Event, error) {
	if ev == nil || ev.Subject == nil {
		return nil, fmt.Errorf("%w: nil event or subject", ErrMalformed)
	}
	ext, err := ev.Subject.ExtProps(ctx)
	if err != nil {
		return nil, fmt.Errorf("cloudevents: event %q on %q: read extended properties: %w", ev.Type, ev.Subject.Name(), err)
	}
	for k := range ext {
		if strings.HasPrefix(k, InternalPrefix) {
			delete(ext, k)
		}
	}
	o := EventOptions{Source: source, Extensions: ext, ID: eventID(ctx, ev)}
	if v, ok := ev.Meta(MetaDataSchema); ok {
		if s, ok := v.(string); ok {
			o.DataSchema = s
		}
	}
	e, err := NewEvent(ctx, ev.Type, ev.Subject.Name(), ev.Payload(), o)
	if err != nil {
		return nil, err
	}
	// The trace context of this event, never a stale one stored on the
	// subject.
	_ = e.Context.SetExtension(ExtTraceParent, nil) // deletes; cannot fail
	_ = e.Context.SetExtension(ExtTraceState, nil)
	if tp, ok := metaString(ev, MetaTraceParent); ok {
		if err := e.Context.SetExtension(ExtTraceParent, tp); err != nil {
			return nil, fmt.Errorf("%w: event %q on %q: %v", ErrMalformed, ev.Type, ev.Subject.Name(), err)
		}
		if ts, ok := metaString(ev, MetaTraceState); ok {
			if err := e.Context.SetExtension(ExtTraceState, ts); err != nil {
				return nil, fmt.Errorf("%w: event %q on %q: %v", ErrMalformed, ev.Type, ev.Subject.Name(), err)
			}
		}
	}
	return e, nil
}

// eventID returns the CloudEvent id of ev: the MetaEventID metadata when it
// is a non-empty string, else a new id (deterministic inside a delivery, see
// NewContext; random outside), recorded in MetaEventID.
func eventID(ctx context.Context, ev *krules.Event) string {
	d := deliveryOf(ctx)
	if d != nil {
		// One lock for the memo and the counters: two dispatches of one
		// event, concurrent or not, take one ordinal.
		d.mu.Lock()
		defer d.mu.Unlock()
	}
	if id, ok := metaString(ev, MetaEventID); ok {
		return id
	}
	var id string
	if d != nil {
		id = d.nextID(ev.Type, ev.Subject.Name())
	} else {
		id = uuid.NewString()
	}
	ev.SetMeta(MetaEventID, id)
	return id
}

func metaString(ev *krules.Event, key string) (string, bool) {
	v, ok := ev.Meta(key)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok && s != ""
}

func marshalPayload(p krules.Payload) ([]byte, error) {
	if v, err := storage.Normalize(map[string]any(p)); err == nil {
		return storage.Marshal(v)
	}
	// Values outside the data model (structs, ...): fall back to
	// encoding/json through Marshal's encoder.
	return storage.Marshal(map[string]any(p))
}

func extensionValue(v any) (string, error) {
	if s, ok := v.(string); ok {
		return s, nil
	}
	b, err := storage.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// IsJSONContentType reports whether a datacontenttype denotes JSON:
// empty (the CloudEvents default for JSON-format events), application/json,
// text/json, or any type with a +json suffix.
func IsJSONContentType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json")
}

// Payload decodes the data of a CloudEvent into a KRules payload: no data
// (or JSON null) gives an empty payload; otherwise the data must be a JSON
// object with a JSON datacontenttype. Numbers follow the storage value
// model (int64 when integral, else float64). As a direct Set, it refuses
// what the value model cannot hold instead of altering it: invalid UTF-8,
// unpaired \u surrogate escapes, a repeated object key, NaN/Infinity
// tokens, NUL in a string. Errors wrap ErrMalformed.
func Payload(e *event.Event) (krules.Payload, error) {
	data := e.Data()
	if len(strings.TrimSpace(string(data))) == 0 {
		return krules.Payload{}, nil
	}
	if !IsJSONContentType(e.DataContentType()) {
		return nil, fmt.Errorf("%w: unsupported datacontenttype %q (want JSON)", ErrMalformed, e.DataContentType())
	}
	if err := checkJSON(data, "data"); err != nil {
		return nil, err
	}
	v, err := storage.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: data: %v", ErrMalformed, err)
	}
	switch m := v.(type) {
	case nil:
		return krules.Payload{}, nil
	case map[string]any:
		return krules.Payload(m), nil
	default:
		return nil, fmt.Errorf("%w: data must be a JSON object, got %T", ErrMalformed, v)
	}
}

// Check validates an incoming CloudEvent for KRules: the spec attributes
// (id, source, specversion, type), an event type that is valid UTF-8
// without NUL (as storage.ValidateName), and a non-empty, valid subject. Errors
// wrap ErrMalformed.
func Check(e *event.Event) error {
	if e == nil {
		return fmt.Errorf("%w: nil event", ErrMalformed)
	}
	if err := e.Validate(); err != nil {
		return fmt.Errorf("%w: %s", ErrMalformed, strings.TrimSpace(err.Error()))
	}
	if err := storage.ValidateName("event type", e.Type()); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if e.Subject() == "" {
		return fmt.Errorf("%w: CloudEvent 'subject' field is required for KRules events", ErrMalformed)
	}
	if err := storage.ValidateName("subject", e.Subject()); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// Deliver emits a CloudEvent into app: Check, Payload, then
// app.Emit(type, app.Subject(subject), payload) with the event as
// MetaCloudEvent metadata and in the handlers' context (FromContext,
// OriginID), and its trace context extensions as metadata (TraceOptions). It returns when the handlers are done; their errors go to the
// App's error handler, not to the caller (as App.Emit). Errors wrapping
// ErrMalformed mean the event can never be processed.
func Deliver(ctx context.Context, app *krules.App, e *event.Event, opts ...krules.EmitOption) error {
	if err := Check(e); err != nil {
		return err
	}
	p, err := Payload(e)
	if err != nil {
		return err
	}
	all := make([]krules.EmitOption, 0, len(opts)+3)
	all = append(all, krules.WithMeta(MetaCloudEvent, e))
	all = append(all, TraceOptions(e)...)
	all = append(all, opts...)
	if err := app.Emit(NewContext(ctx, e), e.Type(), app.Subject(e.Subject()), p, all...); err != nil {
		return fmt.Errorf("cloudevents: deliver %q (id %s) on %q: %w", e.Type(), e.ID(), e.Subject(), err)
	}
	return nil
}
