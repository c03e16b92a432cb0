package cloudevents_test

// Golden tests from the wire data captured from the real Python KRules 3.1.1
// (testdata/, copied from reference/python-wire; see its README): what the
// original's receiver (krules_fastapi_env) accepts, and the requests the
// original's emitter (krules_cloudevents) sends.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/transport/cloudevents"
)

type receiverCase struct {
	Label       string
	Description string
	Request     struct {
		Method  string
		Path    string
		Headers [][2]string
		Body    *string
	}
	Response struct {
		Status int
		Body   string
	}
	Accepted      bool
	EmittedEvents []struct {
		EventType   string          `json:"event_type"`
		SubjectName string          `json:"subject_name"`
		PayloadJSON json.RawMessage `json:"payload_json"`
	} `json:"emitted_events"`
}

func loadReceiverCases(t *testing.T) []receiverCase {
	t.Helper()
	var f struct{ Cases []receiverCase }
	b, err := os.ReadFile("testdata/http-receiver-cases.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) != 36 {
		t.Fatalf("%d receiver cases, want the 36 captured", len(f.Cases))
	}
	return f.Cases
}

func (c *receiverCase) header() http.Header {
	h := http.Header{}
	for _, kv := range c.Request.Headers {
		switch kv[0] {
		case "Host", "Content-Length", "Connection":
			continue
		}
		h.Add(kv[0], kv[1])
	}
	return h
}

func (c *receiverCase) body() []byte {
	if c.Request.Body == nil {
		return nil
	}
	return []byte(*c.Request.Body)
}

// pyTime is the datetime syntax pydantic v1 parses (what the original's
// CloudEvent model validates "time" with).
var pyTime = regexp.MustCompile(`^\d{4}-\d{1,2}-\d{1,2}[T ]\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d{1,6}\d{0,6})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$`)

// pythonNonFinite matches the bare NaN/Infinity tokens Python's json.loads
// accepts (outside strings: good enough for the bodies used here).
var pythonNonFinite = regexp.MustCompile(`(?:-?Infinity|NaN)\b`)

// pythonReceiver models what krules_fastapi_env.KrulesApp (POST "/") does
// with a request: its status and, on 200, the payload its handlers get
// (decoded with json.Number, so numbers keep their text). It is checked
// against every captured case by TestPythonReceiverModel, and then tells
// whether a request of our Dispatcher would be accepted by the original.
func pythonReceiver(method, path string, h http.Header, body []byte) (int, any) {
	if path != "/" {
		return http.StatusNotFound, nil
	}
	if method != http.MethodPost {
		return http.StatusMethodNotAllowed, nil
	}
	// FastAPI reads the body as JSON when there is no Content-Type or it is
	// application/json or application/*+json; the ce- headers are ignored.
	if ct := h.Get("Content-Type"); ct != "" {
		mt, _, _ := mime.ParseMediaType(ct)
		if mt != "application/json" && !(strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")) {
			return http.StatusUnprocessableEntity, nil
		}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return http.StatusUnprocessableEntity, nil
	}
	text := pythonNonFinite.ReplaceAllString(string(body), `"<non-finite>"`)
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var top map[string]any
	if dec.Decode(&top) != nil {
		return http.StatusUnprocessableEntity, nil
	}
	if sv, ok := top["specversion"]; ok && sv != "1.0" && sv != "0.3" {
		return http.StatusUnprocessableEntity, nil
	}
	for _, k := range []string{"type", "source"} {
		if _, ok := top[k].(string); !ok {
			return http.StatusUnprocessableEntity, nil
		}
	}
	if tm, ok := top["time"]; ok {
		if s, _ := tm.(string); !pyTime.MatchString(s) {
			return http.StatusUnprocessableEntity, nil
		}
	}
	if s, _ := top["subject"].(string); s == "" {
		return http.StatusUnprocessableEntity, nil
	}
	switch d := top["data"].(type) {
	case nil:
		return http.StatusOK, map[string]any{} // absent, null or data_base64
	case json.Number, bool:
		return http.StatusInternalServerError, nil // TypeError in krules_core
	case map[string]any:
		if len(d) == 0 {
			return http.StatusOK, map[string]any{}
		}
		return http.StatusOK, d
	default:
		return http.StatusOK, d // strings and lists pass through
	}
}

// TestPythonReceiverModel: the model reproduces the original's answer and
// payload for every captured request.
func TestPythonReceiverModel(t *testing.T) {
	for _, c := range loadReceiverCases(t) {
		t.Run(c.Label, func(t *testing.T) {
			code, payload := pythonReceiver(c.Request.Method, c.Request.Path, c.header(), c.body())
			if code != c.Response.Status {
				t.Fatalf("model says %d, the original answered %d", code, c.Response.Status)
			}
			if code != http.StatusOK {
				return
			}
			if len(c.EmittedEvents) != 1 {
				t.Fatalf("%d emitted events captured", len(c.EmittedEvents))
			}
			if bytes.Contains(c.EmittedEvents[0].PayloadJSON, []byte("not representable")) {
				return // NaN/inf: the capture has no JSON of the payload
			}
			dec := json.NewDecoder(bytes.NewReader(c.EmittedEvents[0].PayloadJSON))
			dec.UseNumber()
			var want any
			if err := dec.Decode(&want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(payload, want) {
				t.Fatalf("model payload %v, the original's handler got %v", payload, want)
			}
		})
	}
}

// goReceiverDiffers lists the captured requests that krules-go answers
// differently from the original (README, "Where krules-go differs"). Every
// other request the original accepts (200) gets 202 with the same type,
// subject and payload, and every one it refuses (422, 500) gets 400.
var goReceiverDiffers = map[string]struct {
	code   int
	errHas string
	why    string
}{
	"structured_data_string":         {400, "data must be a JSON object", "a KRules payload is a JSON object (the original passes the string to handlers that expect a dict)"},
	"structured_data_list":           {400, "data must be a JSON object", "a KRules payload is a JSON object"},
	"structured_data_number":         {400, "data must be a JSON object", "the original fails with 500 (TypeError); nothing can process it"},
	"structured_data_base64":         {400, "data: invalid JSON", "data_base64 is decoded as the spec says (the original drops it silently); here it is not JSON"},
	"structured_nan_in_data":         {400, "NaN", "NaN/Infinity are outside the value model (a direct Set refuses them too)"},
	"binary_with_structured_body":    {400, "structured CloudEvent body", "the original reads the body and ignores the headers; the HTTP binding reads the body as the data; neither guess is safe"},
	"binary_mode":                    {202, "", "krules-go reads binary mode too"},
	"binary_as_python_emitter_sends": {202, "", "krules-go reads what the original's emitter sends"},
	"post_other_path":                {202, "", "a Receiver answers on whatever path it is mounted at"},
	"get_root":                       {405, "", "as the original"},
}

// goErrHas is what the 400 error of each refused case must name.
var goErrHas = map[string]string{
	"structured_specversion_bogus": `unsupported specversion "9.9"`,
	"structured_bad_time":          `"yesterday"`,
	"structured_no_subject":        "'subject' field is required",
	"structured_empty_subject":     "'subject' field is required",
	"structured_no_type":           "type",
	"structured_no_source":         "source",
	"structured_batch_array":       "batch",
	"structured_text_plain":        `content type "text/plain"`,
	"invalid_json":                 "invalid JSON",
	"empty_body":                   "empty body",
}

// TestGoldenPythonReceiverCases posts every request the original receiver
// was tested with to the Receiver.
func TestGoldenPythonReceiverCases(t *testing.T) {
	srv, s := newServer(t, cloudevents.ReceiverConfig{})
	for _, c := range loadReceiverCases(t) {
		t.Run(c.Label, func(t *testing.T) {
			wantCode, errHas := 0, ""
			if d, ok := goReceiverDiffers[c.Label]; ok {
				wantCode, errHas = d.code, d.errHas
			} else {
				switch c.Response.Status {
				case http.StatusOK:
					wantCode = http.StatusAccepted
				case http.StatusUnprocessableEntity, http.StatusInternalServerError:
					wantCode, errHas = http.StatusBadRequest, goErrHas[c.Label]
					if errHas == "" {
						t.Fatalf("no expected error text for refused case %s", c.Label)
					}
				default:
					t.Fatalf("unexpected captured status %d", c.Response.Status)
				}
			}
			before := len(s.all())
			req, err := http.NewRequest(c.Request.Method, srv.URL+c.Request.Path, bytes.NewReader(c.body()))
			if err != nil {
				t.Fatal(err)
			}
			req.Header = c.header()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			evs := s.all()[before:]
			if resp.StatusCode != wantCode {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, wantCode)
			}
			if wantCode != http.StatusAccepted {
				if len(evs) != 0 {
					t.Fatalf("refused, but %d events reached the handlers", len(evs))
				}
				var m struct {
					Error  string
					Status int
				}
				if err := json.Unmarshal(body, &m); err != nil || m.Status != wantCode || !strings.Contains(m.Error, errHas) {
					t.Fatalf("error body %s, want status %d and an error naming %q", body, wantCode, errHas)
				}
				return
			}
			if len(evs) != 1 {
				t.Fatalf("%d events reached the handlers, want 1", len(evs))
			}
			g := evs[0]
			var m map[string]string
			if err := json.Unmarshal(body, &m); err != nil || m["status"] != "accepted" || m["id"] != g.ce.ID() || m["id"] == "" {
				t.Fatalf("answer %s, want accepted with the event id %q", body, g.ce.ID())
			}
			var wantType, wantSubject string
			var wantPayload any
			if c.Response.Status == http.StatusOK {
				py := c.EmittedEvents[0]
				wantType, wantSubject = py.EventType, py.SubjectName
				if wantPayload, err = storage.Unmarshal(py.PayloadJSON); err != nil {
					t.Fatal(err)
				}
			} else if h := c.header(); h.Get("ce-type") != "" { // binary mode, which the original refuses
				wantType, wantSubject = h.Get("ce-type"), h.Get("ce-subject")
				if wantPayload, err = storage.Unmarshal(c.body()); err != nil {
					t.Fatal(err)
				}
			} else { // structured, on a path the original does not serve
				var top struct {
					Type, Subject string
					Data          json.RawMessage
				}
				if err := json.Unmarshal(c.body(), &top); err != nil {
					t.Fatal(err)
				}
				wantType, wantSubject = top.Type, top.Subject
				if wantPayload, err = storage.Unmarshal(top.Data); err != nil {
					t.Fatal(err)
				}
			}
			if g.typ != wantType || g.subject != wantSubject {
				t.Errorf("type/subject %q/%q, want %q/%q", g.typ, g.subject, wantType, wantSubject)
			}
			if !reflect.DeepEqual(map[string]any(g.payload), wantPayload) {
				t.Errorf("payload %#v, want %#v", g.payload, wantPayload)
			}
		})
	}
}

// TestGoldenReceiverCaseDetails checks what the original's handlers cannot
// show (README of the capture): the attributes and extensions the Receiver
// reads from the captured structured requests.
func TestGoldenReceiverCaseDetails(t *testing.T) {
	byLabel := map[string]receiverCase{}
	for _, c := range loadReceiverCases(t) {
		byLabel[c.Label] = c
	}
	deliver := func(t *testing.T, label string) got {
		t.Helper()
		c := byLabel[label]
		srv, s := newServer(t, cloudevents.ReceiverConfig{})
		req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(c.body()))
		req.Header = c.header()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || len(s.all()) != 1 {
			t.Fatalf("%s: status %d, %d events", label, resp.StatusCode, len(s.all()))
		}
		return s.all()[0]
	}
	t.Run("attributes", func(t *testing.T) {
		g := deliver(t, "structured_cloudevents_json")
		if g.ce.ID() != "rx-1" || g.ce.Source() != "client" || !g.ce.Time().Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)) ||
			g.ce.Extensions()["tenant"] != "acme" || g.origin != "rx-1" {
			t.Errorf("id %q source %q time %v ext %v origin %q", g.ce.ID(), g.ce.Source(), g.ce.Time(), g.ce.Extensions(), g.origin)
		}
		// The value model: 2.0 and -0.0 are integral, 2^64+1 does not fit
		// an int64.
		want := krules.Payload{"amount": int64(7), "ratio": int64(2), "neg_zero": int64(0), "big": 18446744073709551617.0,
			"note": "café", "items": []any{int64(1), nil, true}}
		if !reflect.DeepEqual(g.payload, want) {
			t.Errorf("payload %#v, want %#v", g.payload, want)
		}
	})
	t.Run("no id", func(t *testing.T) {
		g := deliver(t, "structured_no_id")
		if len(g.ce.ID()) != 36 || g.origin != g.ce.ID() {
			t.Errorf("id %q origin %q, want a new UUID as both", g.ce.ID(), g.origin)
		}
	})
	t.Run("no specversion", func(t *testing.T) {
		if g := deliver(t, "structured_no_specversion"); g.ce.SpecVersion() != "1.0" {
			t.Errorf("specversion %q, want 1.0", g.ce.SpecVersion())
		}
	})
	t.Run("specversion 0.3", func(t *testing.T) {
		if g := deliver(t, "structured_specversion_0_3"); g.ce.SpecVersion() != "0.3" || g.ce.Extensions()["tenant"] != "acme" {
			t.Errorf("specversion %q ext %v", g.ce.SpecVersion(), g.ce.Extensions())
		}
	})
	t.Run("extension types", func(t *testing.T) {
		// count 5, active true, flags {"a": 1}, nothing null, tenant_id "t-1".
		g := deliver(t, "structured_extension_types")
		want := map[string]any{"tenant": "acme", "count": "5", "active": "true", "flags": `{"a":1}`, "tenantid": "t-1"}
		if !reflect.DeepEqual(g.ce.Extensions(), want) {
			t.Errorf("extensions %#v, want %#v", g.ce.Extensions(), want)
		}
	})
	t.Run("property changed", func(t *testing.T) {
		g := deliver(t, "structured_property_changed")
		if g.ce.Extensions()["propertyname"] != "status" || g.payload[krules.KeyPropertyName] != "status" {
			t.Errorf("ext %v payload %v", g.ce.Extensions(), g.payload)
		}
	})
}

type emitterCase struct {
	Label        string
	DispatchCall struct {
		EventType string `json:"event_type"`
		Subject   string
	} `json:"dispatch_call"`
	RequestsSent int `json:"requests_sent"`
	Request      *struct {
		Headers        [][2]string `json:"headers_in_wire_order"`
		Body           string
		RawRequestHead string `json:"raw_request_head"`
	}
}

func loadEmitterCases(t *testing.T) []emitterCase {
	t.Helper()
	var f struct{ Cases []emitterCase }
	b, err := os.ReadFile("testdata/http-emitter-requests.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) != 17 {
		t.Fatalf("%d emitter cases, want the 17 captured", len(f.Cases))
	}
	return f.Cases
}

// rawPost writes head and body byte for byte on a new connection to srv and
// reads the answer.
func rawPost(t *testing.T, srv *httptest.Server, head, body string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, head+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestGoldenPythonEmitterRequests sends every request the original's
// emitter sent, byte for byte, to the Receiver: each is accepted and
// becomes the KRules event the Python side dispatched (type, subject,
// payload), with its attributes, extensions and origin id; the one whose
// payload holds NaN is refused with a 400 that names it.
func TestGoldenPythonEmitterRequests(t *testing.T) {
	sent := 0
	for _, c := range loadEmitterCases(t) {
		if c.Request == nil {
			if c.RequestsSent != 0 {
				t.Fatalf("%s: %d requests sent but none captured", c.Label, c.RequestsSent)
			}
			continue // the original raised before sending (see the capture's README)
		}
		sent++
		t.Run(c.Label, func(t *testing.T) {
			srv, s := newServer(t, cloudevents.ReceiverConfig{})
			code, body := rawPost(t, srv, c.Request.RawRequestHead, c.Request.Body)
			evs := s.all()
			if c.Label == "6_payload_nan_inf_and_objects" {
				if code != http.StatusBadRequest || !strings.Contains(body, "NaN at offset") || len(evs) != 0 {
					t.Fatalf("status %d %s, %d events; want 400 naming NaN and nothing dispatched", code, body, len(evs))
				}
				return
			}
			if code != http.StatusAccepted || len(evs) != 1 {
				t.Fatalf("status %d %s, %d events; want 202 and one event", code, body, len(evs))
			}
			g := evs[0]
			h := http.Header{}
			for _, kv := range c.Request.Headers {
				h.Add(kv[0], kv[1])
			}
			wantType, wantSubject := c.DispatchCall.EventType, c.DispatchCall.Subject
			switch c.Label {
			case "3e_ext_named_like_core_attributes":
				wantType = "ext-type" // the original lets an ext prop named "type" replace it
			case "8b_middleware_awaited_ext": // emit('order.created', subject, ...) through the middleware
				wantType, wantSubject = "order.created", "mw-subject"
			}
			if g.typ != wantType || g.subject != wantSubject || h.Get("ce-type") != wantType {
				t.Errorf("type/subject %q/%q, want %q/%q", g.typ, g.subject, wantType, wantSubject)
			}
			wantPayload, err := storage.Unmarshal([]byte(c.Request.Body))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(map[string]any(g.payload), wantPayload) {
				t.Errorf("payload %#v, want %#v", g.payload, wantPayload)
			}
			if g.ce.ID() != h.Get("ce-id") || g.ce.Source() != h.Get("ce-source") {
				t.Errorf("id %q source %q, want the headers' %q %q", g.ce.ID(), g.ce.Source(), h.Get("ce-id"), h.Get("ce-source"))
			}
			if g.origin != h.Get("ce-originid") {
				t.Errorf("OriginID %q, want ce-originid %q", g.origin, h.Get("ce-originid"))
			}
			wantTime, err := time.Parse(time.RFC3339Nano, h.Get("ce-time"))
			if err != nil || !g.ce.Time().Equal(wantTime) {
				t.Errorf("time %v, want %v (%v)", g.ce.Time(), wantTime, err)
			}
			if g.ce.DataContentType() != "application/json" {
				t.Errorf("datacontenttype %q: \"None\" must not be read", g.ce.DataContentType())
			}
			if ds := h.Get("ce-dataschema"); ds == "None" {
				if g.ce.DataSchema() != "" {
					t.Errorf("dataschema %q, want none (the header was \"None\")", g.ce.DataSchema())
				}
			} else if g.ce.DataSchema() != ds {
				t.Errorf("dataschema %q, want %q", g.ce.DataSchema(), ds)
			}
			// Every other ce- header is an extension, its name normalised.
			wantExt := map[string]any{}
			for _, kv := range c.Request.Headers {
				name := strings.ToLower(kv[0])
				if !strings.HasPrefix(name, "ce-") {
					continue
				}
				switch name = name[3:]; name {
				case "id", "source", "type", "specversion", "time", "subject", "datacontenttype", "dataschema":
					continue
				}
				wantExt[cloudevents.NormalizeExtensionName(name)] = kv[1]
			}
			if !reflect.DeepEqual(g.ce.Extensions(), wantExt) {
				t.Errorf("extensions %#v, want %#v", g.ce.Extensions(), wantExt)
			}
			if g.extra != nil {
				t.Errorf("Extra %v, want nil (a received event carries no WithExtra context)", g.extra)
			}
		})
	}
	if sent != 13 {
		t.Fatalf("%d captured requests, want 13", sent)
	}
}

// TestGoldenPythonEmitterDetails pins what the captured cases say in words.
func TestGoldenPythonEmitterDetails(t *testing.T) {
	byLabel := map[string]emitterCase{}
	for _, c := range loadEmitterCases(t) {
		byLabel[c.Label] = c
	}
	deliver := func(t *testing.T, label string) got {
		t.Helper()
		c := byLabel[label]
		srv, s := newServer(t, cloudevents.ReceiverConfig{})
		if code, body := rawPost(t, srv, c.Request.RawRequestHead, c.Request.Body); code != http.StatusAccepted || len(s.all()) != 1 {
			t.Fatalf("status %d %s", code, body)
		}
		return s.all()[0]
	}
	t.Run("mixed payload", func(t *testing.T) {
		p := deliver(t, "1_custom_mixed_payload").payload
		want := krules.Payload{"amount": int64(100), "price": 9.99, "ratio": int64(2), "neg_zero": int64(0),
			"big": 18446744073709551617.0, "neg": int64(-7), "note": "café 😀", "quote": "say \"hi\" \\ \n", "empty": "",
			"flag": true, "off": false, "nothing": nil, "items": []any{"a", int64(1), nil, true, 2.5},
			"nested": map[string]any{"k": []any{int64(1), map[string]any{"x": nil}}, "d": map[string]any{}},
			"tuple":  []any{int64(1), "a"}}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("payload %#v\nwant %#v", p, want)
		}
	})
	t.Run("ext prop types and tenant_id", func(t *testing.T) {
		ext := deliver(t, "3_ext_props_various_types").ce.Extensions()
		want := map[string]any{"tenant": "acme", "count": "5", "active": "True", "disabled": "False",
			"flags": "{'a': 1, 'b': [True, None]}", "nothing": "None", "ratio": "1.5", "tags": "['x', 'y']",
			"tenantid": "t-1", "originid": ext["originid"]}
		if !reflect.DeepEqual(ext, want) {
			t.Errorf("extensions %#v\nwant %#v", ext, want)
		}
	})
	t.Run("originid from event_info", func(t *testing.T) {
		if g := deliver(t, "4_originid_from_event_info"); g.origin != "origin-0001" || g.ce.ID() == "origin-0001" {
			t.Errorf("origin %q id %q", g.origin, g.ce.ID())
		}
	})
	t.Run("propertyname", func(t *testing.T) {
		g := deliver(t, "2_subject_property_changed")
		if g.ce.Extensions()["propertyname"] != "temperature" || g.payload[krules.KeyOldValue] != 20.5 || g.payload[krules.KeyValue] != int64(21) {
			t.Errorf("ext %v payload %v", g.ce.Extensions(), g.payload)
		}
	})
}

// goDispatch mirrors the emitter cases with the Go Dispatcher.
var goDispatch = []struct {
	label   string // the Python case it mirrors
	typ     string
	subject string
	payload krules.Payload
	ext     map[string]any
	opts    []krules.EmitOption
}{
	{label: "1_custom_mixed_payload", typ: "order.created", subject: "order-123", payload: krules.Payload{
		"amount": 100, "price": 9.99, "ratio": 2.0, "neg_zero": math.Copysign(0, -1), "neg": -7, "note": "café 😀", "quote": "say \"hi\" \\ \n",
		"empty": "", "flag": true, "off": false, "nothing": nil, "items": []any{"a", 1, nil, true, 2.5},
		"nested": map[string]any{"k": []any{1, map[string]any{"x": nil}}, "d": map[string]any{}}, "tuple": []any{1, "a"}}},
	{label: "2_subject_property_changed", typ: krules.PropertyChanged, subject: "device-42",
		payload: krules.Payload{krules.KeyPropertyName: "temperature", krules.KeyOldValue: 20.5, krules.KeyValue: 21}},
	{label: "3_ext_props_various_types", typ: "order.created", subject: "customer-7", payload: krules.Payload{"x": 1},
		ext: map[string]any{"tenant": "acme", "count": 5, "active": true, "disabled": false, "flags": map[string]any{"a": 1, "b": []any{true, nil}},
			"nothing": nil, "ratio": 1.5, "tags": []any{"x", "y"}, "tenant_id": "t-1"}},
	{label: "3c_ext_uppercase_name", typ: "order.created", subject: "customer-9", payload: krules.Payload{"x": 1}, ext: map[string]any{"TenantID": "t-2"}},
	{label: "3f_non_ascii_subject_name", typ: "order.created", subject: "künde 1", payload: krules.Payload{"x": 1}, ext: map[string]any{"city": "München"}},
	{label: "5_extra_kwargs", typ: "order.created", subject: "order-125", payload: krules.Payload{"x": 1},
		opts: []krules.EmitOption{krules.WithMeta(cloudevents.MetaDataSchema, "https://example.com/schemas/order.json")}},
	{label: "7_empty_payload", typ: "ping", subject: "order-125", payload: krules.Payload{}},
}

// TestGoldenDispatcherToPythonReceiver: every request the Dispatcher sends
// by default is one the original receiver accepts (pythonReceiver, checked
// against the captured cases), and its handlers would get our payload;
// binary mode is what the original refuses.
func TestGoldenDispatcherToPythonReceiver(t *testing.T) {
	ctx := context.Background()
	for _, enc := range []cloudevents.Encoding{cloudevents.Structured, cloudevents.Binary} {
		for _, c := range goDispatch {
			t.Run(c.label, func(t *testing.T) {
				out := newSink(t, http.StatusOK)
				app := krules.New()
				d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "go-fixture", Encoding: enc})
				subj := app.Subject(c.subject)
				for k, v := range c.ext {
					if _, _, err := subj.SetExt(ctx, k, v, krules.NoCache()); err != nil {
						t.Fatal(err)
					}
				}
				opts := append([]krules.EmitOption{krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL)}, c.opts...)
				d.Install(app) // no local handler: the outbound hook sends
				if err := app.Emit(ctx, c.typ, app.Subject(c.subject), c.payload, opts...); err != nil {
					t.Fatal(err)
				}
				reqs := out.all()
				if len(reqs) != 1 {
					t.Fatalf("%d requests", len(reqs))
				}
				code, payload := pythonReceiver(http.MethodPost, "/", reqs[0].header, []byte(reqs[0].body))
				if enc == cloudevents.Binary {
					if code != http.StatusUnprocessableEntity {
						t.Fatalf("binary mode: the original would answer %d, the capture says 422", code)
					}
					return
				}
				if code != http.StatusOK {
					t.Fatalf("the original would answer %d to\n%v\n%s", code, reqs[0].header, reqs[0].body)
				}
				if ct := reqs[0].header.Get("Content-Type"); ct != "application/cloudevents+json" {
					t.Errorf("Content-Type %q", ct)
				}
				b, _ := json.Marshal(payload)
				pyPayload, err := storage.Unmarshal(b)
				if err != nil {
					t.Fatal(err)
				}
				want, _ := storage.Normalize(map[string]any(c.payload))
				if !storage.Equal(pyPayload, want) {
					t.Errorf("the original's handlers would get %v, want %v", pyPayload, want)
				}
				var top map[string]any
				if err := json.Unmarshal([]byte(reqs[0].body), &top); err != nil {
					t.Fatal(err)
				}
				if top["type"] != c.typ || top["subject"] != c.subject || top["source"] != "go-fixture" || top["specversion"] != "1.0" {
					t.Errorf("body %s", reqs[0].body)
				}
				for k := range reqs[0].header {
					if strings.HasPrefix(strings.ToLower(k), "ce-") {
						t.Errorf("structured request with header %s", k)
					}
				}
				// The Go Receiver reads it back to the same event.
				srv, s := newServer(t, cloudevents.ReceiverConfig{})
				req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(reqs[0].body))
				req.Header = reqs[0].header
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if evs := s.all(); resp.StatusCode != http.StatusAccepted || len(evs) != 1 || !storage.Equal(map[string]any(evs[0].payload), want) {
					t.Fatalf("Go receiver: status %d, events %v", resp.StatusCode, evs)
				}
			})
		}
	}
}
