package cloudevents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"
	"github.com/krules-go/krules"
)

// DefaultMaxBodyBytes is the default request body limit of a Receiver (1 MiB).
const DefaultMaxBodyBytes = 1 << 20

// ReceiverConfig configures a Receiver. The zero value is ready to use.
type ReceiverConfig struct {
	// MaxBodyBytes is the largest accepted request body; larger requests get
	// 413. Default DefaultMaxBodyBytes; negative means no limit.
	MaxBodyBytes int64
	// Options are added to every emit (for example krules.WithMeta).
	Options []krules.EmitOption
}

// Receiver is the HTTP ingress: an http.Handler that accepts one CloudEvent
// per POST, in binary mode (ce-* headers, data in the body) or structured
// mode (Content-Type application/cloudevents+json), and emits it into the
// App (see Deliver) before answering. It answers on whatever path it is
// mounted at. Serve it with Serve or ListenAndServe (or an http.Server
// from NewServer): they set the timeouts and header limit a bare
// http.Server lacks, and Serve drains in-flight requests on shutdown.
//
// Responses (JSON bodies):
//
//	202 {"status":"accepted","id":"<event id>"}   handlers ran (their errors go to the App's error handler)
//	400 {"error":"...","status":400}               see below; the error names the problem
//	405                                            method other than POST
//	413                                            body larger than MaxBodyBytes
//	500                                            the App refused the emit (e.g. cascade limit)
//
// 400 means: not a CloudEvent, batch mode, invalid JSON, a missing
// type/source/subject (or, in binary mode, id/specversion), an unsupported
// specversion (only "1.0" and "0.3"), a bad time, data that is not a JSON
// object (or absent/null), a non-JSON datacontenttype, an invalid event
// type or subject name (empty, invalid UTF-8, NUL), a ce- header given more
// than once, two extension names that normalise to the same name or one
// that normalises to a context attribute, ce- headers together with a
// structured body, and data the value model cannot hold — invalid UTF-8,
// \u escapes of unpaired surrogates, a repeated object key (in the data or
// the event), NaN/Infinity tokens, NUL in a string. Nothing is altered
// (encoding/json would replace invalid UTF-8 with U+FFFD and keep the last
// of repeated keys): the Receiver refuses what a direct Set refuses. No
// handler runs for a refused request.
//
// # Accepted beyond the CloudEvents spec
//
// For Python KRules senders (krules_cloudevents, and the clients of
// krules_fastapi_env) the Receiver also accepts, and only this:
//
//   - Structured mode without application/cloudevents+json: with no ce-
//     header, a body that is a JSON object with a "specversion" or "type"
//     member is read as a structured event when the Content-Type is
//     application/json (any parameters) or absent.
//   - In structured mode, a missing "specversion" means "1.0", and a missing
//     "id" is given a new random UUID (answered in the 202 body; a retry of
//     such an event gets another id, so receivers cannot de-duplicate it).
//   - In binary mode, the header value "None" (Python's str(None)) of the
//     optional attributes ce-datacontenttype, ce-dataschema and ce-time
//     means the attribute is absent. An extension's "None" stays the string
//     "None" (it cannot be told from one).
//   - Extension names outside [a-z0-9]+, in either mode (ce-tenant_id,
//     "TenantID"), are mapped with NormalizeExtensionName, as the
//     Dispatcher sends them: ce-tenant_id becomes the extension tenantid.
//     A name that normalises to "" is dropped.
//   - In structured mode, a null extension is absent, and an extension
//     whose value is not a string (number, bool, object, array) is kept as
//     its compact JSON text ({"a": 1} becomes the string `{"a":1}`).
//
// Binary-mode extension values are header text: the Python emitter's str()
// of non-string values ("True", "5", "{'a': 1}") arrives as that text.
//
// The handlers run in the request goroutine with a context that keeps the
// request's values but is not cancelled when the client goes away, so a
// dispatch is never cut in half. Handlers that write through the event's
// subject in cache mode must call Store themselves, as in Python KRules.
// A Receiver is safe for concurrent use.
type Receiver struct {
	app *krules.App
	cfg ReceiverConfig
}

// NewReceiver returns the ingress handler of app.
func NewReceiver(app *krules.App, cfg ReceiverConfig) *Receiver {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	return &Receiver{app: app, cfg: cfg}
}

// ServeHTTP implements http.Handler.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method %s not allowed: POST a CloudEvent", r.Method)
		return
	}
	body := io.Reader(r.Body)
	if rc.cfg.MaxBodyBytes > 0 {
		body = http.MaxBytesReader(w, r.Body, rc.cfg.MaxBodyBytes)
	}
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "request body larger than %d bytes", mbe.Limit)
			return
		}
		writeError(w, http.StatusBadRequest, "read body: %v", err)
		return
	}
	e, code, err := decodeRequest(r.Context(), r.Header, data)
	if err != nil {
		writeError(w, code, "%v", err)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	if err := Deliver(ctx, rc.app, e, rc.cfg.Options...); err != nil {
		if errors.Is(err, ErrMalformed) {
			writeError(w, http.StatusBadRequest, "%v", err)
			return
		}
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "accepted", "id": e.ID()})
}

func hasCEHeader(h http.Header) bool {
	for k := range h {
		if isCEHeader(k) {
			return true
		}
	}
	return false
}

func isCEHeader(k string) bool { return len(k) > 3 && strings.EqualFold(k[:3], "ce-") }

// supportedSpecVersion reports whether the SDK reads this specversion.
func supportedSpecVersion(v string) bool { return v == "1.0" || v == "0.3" }

// noneAttrs are the optional attributes whose header the Python emitter
// sends as the literal text "None" when they are unset.
var noneAttrs = map[string]bool{"datacontenttype": true, "dataschema": true, "time": true}

// decodeRequest reads the CloudEvent of one request (body already read). It
// returns the HTTP status to answer with when it fails.
func decodeRequest(ctx context.Context, h http.Header, body []byte) (*event.Event, int, error) {
	ct := h.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	plainJSON := mt == "" || mt == "application/json"
	switch {
	case mt == "application/cloudevents-batch+json":
		return nil, http.StatusBadRequest, errors.New("batched CloudEvents are not supported: send one event per request")
	case mt == "application/cloudevents+json":
		return decodeStructured(body)
	case hasCEHeader(h):
		if plainJSON && looksStructured(body, true) {
			// Python KRules' receiver reads such a body as the event and
			// ignores the headers; the HTTP binding reads the body as the
			// data. Neither reading is safe to guess.
			return nil, http.StatusBadRequest, fmt.Errorf("%w: ce- headers together with a structured CloudEvent body (\"specversion\" and \"type\" members): send either structured mode (the event as the body, no ce- headers) or binary mode (the data as the body)", ErrMalformed)
		}
		return decodeBinary(ctx, h, body)
	case plainJSON:
		// A structured event posted as application/json (or without a
		// Content-Type), as Python KRules clients do.
		if len(bytes.TrimSpace(body)) == 0 {
			return nil, http.StatusBadRequest, fmt.Errorf("not a CloudEvent: empty body and no ce- headers")
		}
		if err := checkJSON(body, "structured CloudEvent"); err != nil {
			return nil, http.StatusBadRequest, err
		}
		if !looksStructured(body, false) {
			return nil, http.StatusBadRequest, fmt.Errorf("not a CloudEvent: no ce- headers, and the body is not a JSON object with a \"specversion\" or \"type\" member")
		}
		return decodeStructured(body)
	}
	return nil, http.StatusBadRequest, fmt.Errorf("not a CloudEvent: content type %q, and no ce- headers", ct)
}

// looksStructured reports whether body is a JSON object with a
// "specversion" or a "type" member at the top level (both when both is
// set).
func looksStructured(body []byte, both bool) bool {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return false
	}
	_, sv := top["specversion"]
	_, ty := top["type"]
	if both {
		return sv && ty
	}
	return sv || ty
}

// contextAttrs are the top-level members of a structured event that are not
// extensions (spec 1.0 and 0.3).
var contextAttrs = map[string]bool{
	"specversion": true, "id": true, "source": true, "type": true, "subject": true, "time": true,
	"datacontenttype": true, "dataschema": true, "data": true, "data_base64": true,
	"schemaurl": true, "datacontentencoding": true,
}

// decodeStructured reads a structured-mode event after mapping what Python
// KRules clients send onto the spec (see Receiver): no "specversion" means
// "1.0", no "id" gets a new UUID, extension names are normalised, null
// extensions dropped and non-string ones sent as their JSON text.
func decodeStructured(body []byte) (*event.Event, int, error) {
	if err := checkJSON(body, "structured CloudEvent"); err != nil {
		return nil, http.StatusBadRequest, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: structured CloudEvent: not a JSON object", ErrMalformed)
	}
	changed := false
	if raw, ok := top["specversion"]; ok {
		var sv string
		if json.Unmarshal(raw, &sv) != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: specversion %s is not a string (supported: \"1.0\", \"0.3\")", ErrMalformed, cutRaw(raw))
		}
		if !supportedSpecVersion(sv) {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: unsupported specversion %s (supported: \"1.0\", \"0.3\")", ErrMalformed, cutQuote(sv))
		}
	} else {
		top["specversion"] = json.RawMessage(`"1.0"`)
		changed = true
	}
	if _, ok := top["id"]; !ok {
		top["id"], _ = json.Marshal(uuid.NewString())
		changed = true
	}
	names := make([]string, 0, len(top))
	for k := range top {
		if !contextAttrs[k] {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	from := make(map[string]string) // normalised extension name -> member it came from
	for _, k := range names {
		raw := top[k]
		n := NormalizeExtensionName(k)
		switch {
		case n == "":
			delete(top, k)
			changed = true
			continue
		case contextAttrs[n]:
			return nil, http.StatusBadRequest, fmt.Errorf("%w: extension %s normalises to the context attribute %q", ErrMalformed, cutQuote(k), n)
		}
		if prev, dup := from[n]; dup {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: extensions %s and %s both map to the attribute %q", ErrMalformed, cutQuote(prev), cutQuote(k), n)
		}
		from[n] = k
		switch raw = bytes.TrimSpace(raw); raw[0] { // valid JSON: checked by checkJSON
		case 'n': // null
			delete(top, k)
			changed = true
			continue
		case '"':
		default:
			raw, _ = json.Marshal(string(compactJSON(raw)))
			changed = true
		}
		if n != k {
			delete(top, k)
			changed = true
		}
		top[n] = raw
	}
	if changed {
		var err error
		if body, err = json.Marshal(top); err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: structured CloudEvent: %v", ErrMalformed, err)
		}
	}
	var e event.Event
	if err := format.JSON.Unmarshal(body, &e); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: invalid CloudEvent: %v", ErrMalformed, err)
	}
	return &e, 0, nil
}

func compactJSON(raw []byte) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

// decodeBinary reads a binary-mode event after mapping what the Python
// emitter sends onto the spec (see Receiver): "None" optional attributes
// dropped, non-conforming extension names normalised.
func decodeBinary(ctx context.Context, h http.Header, body []byte) (*event.Event, int, error) {
	clean := make(http.Header, len(h))
	from := make(map[string]string) // normalised extension name -> header it came from
	for k, vs := range h {
		if !isCEHeader(k) {
			clean[k] = vs
			continue
		}
		name := strings.ToLower(k[3:])
		if len(vs) != 1 {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: header ce-%s given %d times", ErrMalformed, name, len(vs))
		}
		v := vs[0]
		if noneAttrs[name] && v == "None" {
			continue // Python's str(None) for an unset attribute
		}
		if name == "datacontenttype" {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: header ce-datacontenttype %s: in binary mode the datacontenttype is the Content-Type header", ErrMalformed, cutQuote(v))
		}
		n := NormalizeExtensionName(name)
		switch {
		case n == "":
			continue // nothing to map it to; the Dispatcher drops such names too
		case n != name && reserved[n]:
			return nil, http.StatusBadRequest, fmt.Errorf("%w: extension header ce-%s normalises to the context attribute %q", ErrMalformed, name, n)
		}
		if prev, dup := from[n]; dup {
			return nil, http.StatusBadRequest, fmt.Errorf("%w: headers ce-%s and ce-%s both map to the attribute %q", ErrMalformed, prev, name, n)
		}
		from[n] = name
		clean[textproto.CanonicalMIMEHeaderKey("ce-"+n)] = vs
	}
	sv := clean.Get("Ce-Specversion")
	switch {
	case sv == "":
		return nil, http.StatusBadRequest, fmt.Errorf("%w: binary CloudEvent without a ce-specversion header", ErrMalformed)
	case !supportedSpecVersion(sv):
		return nil, http.StatusBadRequest, fmt.Errorf("%w: unsupported specversion %s (supported: \"1.0\", \"0.3\")", ErrMalformed, cutQuote(sv))
	}
	msg := cehttp.NewMessage(clean, io.NopCloser(bytes.NewReader(body)))
	e, err := binding.ToEvent(ctx, msg)
	if err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("%w: invalid CloudEvent: %v", ErrMalformed, err)
	}
	return e, 0, nil
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": fmt.Sprintf(format, args...), "status": code})
}

// cutRaw returns JSON text for an error message, cut after 64 bytes.
func cutRaw(raw []byte) string {
	const max = 64
	if len(raw) <= max {
		return string(raw)
	}
	i := max
	for i > 0 && !utf8.RuneStart(raw[i]) {
		i--
	}
	return fmt.Sprintf("%s... (%d bytes)", raw[:i], len(raw))
}
