package cloudevents_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// seen records what a handler received.
type seen struct {
	mu     sync.Mutex
	events []got
}

type got struct {
	typ, subject string
	payload      krules.Payload
	ce           *event.Event
	fromCtx      *event.Event
	origin       string
	extra        krules.Extra
}

func (s *seen) handler(ctx context.Context, ev *krules.Event) error {
	g := got{typ: ev.Type, subject: ev.Subject.Name(), payload: ev.Payload(), origin: cloudevents.OriginID(ctx), extra: ev.Extra}
	if v, ok := ev.Meta(cloudevents.MetaCloudEvent); ok {
		g.ce, _ = v.(*event.Event)
	}
	g.fromCtx, _ = cloudevents.FromContext(ctx)
	s.mu.Lock()
	s.events = append(s.events, g)
	s.mu.Unlock()
	return nil
}

func (s *seen) all() []got {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]got(nil), s.events...)
}

func newServer(t *testing.T, cfg cloudevents.ReceiverConfig) (*httptest.Server, *seen) {
	t.Helper()
	app := krules.New()
	s := &seen{}
	app.On("*").Do(s.handler)
	srv := httptest.NewServer(cloudevents.NewReceiver(app, cfg))
	t.Cleanup(srv.Close)
	return srv, s
}

func sampleEvent() event.Event {
	e := ce.NewEvent()
	e.SetID("evt-1")
	e.SetType("order.created")
	e.SetSource("test/source")
	e.SetSubject("order-1")
	e.SetTime(time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC))
	e.SetExtension("originid", "root-1")
	e.SetExtension("tenant", "acme")
	if err := e.SetData(ce.ApplicationJSON, map[string]any{"amount": 1500, "price": 2.5, "tags": []string{"a"}}); err != nil {
		panic(err)
	}
	return e
}

func TestRoundTripThroughSDK(t *testing.T) {
	for _, mode := range []string{"binary", "structured"} {
		t.Run(mode, func(t *testing.T) {
			srv, s := newServer(t, cloudevents.ReceiverConfig{})
			client, err := ce.NewClientHTTP(ce.WithTarget(srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if mode == "structured" {
				ctx = ce.WithEncodingStructured(ctx)
			} else {
				ctx = ce.WithEncodingBinary(ctx)
			}
			res := client.Send(ctx, sampleEvent())
			if !protocol.IsACK(res) {
				t.Fatalf("send: %v", res)
			}
			var hr *cehttp.Result
			if !ce.ResultAs(res, &hr) || hr.StatusCode != http.StatusAccepted {
				t.Fatalf("result %v, want HTTP 202", res)
			}
			evs := s.all()
			if len(evs) != 1 {
				t.Fatalf("handler ran %d times, want 1", len(evs))
			}
			g := evs[0]
			if g.typ != "order.created" || g.subject != "order-1" {
				t.Errorf("type/subject = %q/%q", g.typ, g.subject)
			}
			// Numbers follow the storage value model: int64 when integral.
			if g.payload["amount"] != int64(1500) || g.payload["price"] != 2.5 {
				t.Errorf("payload = %#v", g.payload)
			}
			if tags, _ := g.payload["tags"].([]any); len(tags) != 1 || tags[0] != "a" {
				t.Errorf("payload tags = %#v", g.payload["tags"])
			}
			if g.ce == nil || g.fromCtx == nil {
				t.Fatalf("CloudEvent not available: meta %v ctx %v", g.ce, g.fromCtx)
			}
			if g.ce.ID() != "evt-1" || g.ce.Source() != "test/source" || !g.ce.Time().Equal(time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)) {
				t.Errorf("attributes: id %q source %q time %v", g.ce.ID(), g.ce.Source(), g.ce.Time())
			}
			if g.ce.Extensions()["tenant"] != "acme" {
				t.Errorf("extensions = %v", g.ce.Extensions())
			}
			if g.origin != "root-1" {
				t.Errorf("OriginID = %q, want root-1", g.origin)
			}
		})
	}
}

func TestEmptyDataIsEmptyPayload(t *testing.T) {
	srv, s := newServer(t, cloudevents.ReceiverConfig{})
	client, _ := ce.NewClientHTTP(ce.WithTarget(srv.URL))
	e := ce.NewEvent()
	e.SetID("x")
	e.SetType("ping")
	e.SetSource("src")
	e.SetSubject("dev-1")
	if res := client.Send(context.Background(), e); !protocol.IsACK(res) {
		t.Fatal(res)
	}
	evs := s.all()
	if len(evs) != 1 || evs[0].payload == nil || len(evs[0].payload) != 0 {
		t.Fatalf("events = %#v", evs)
	}
	if evs[0].origin != "x" {
		t.Errorf("OriginID without originid extension = %q, want the event id", evs[0].origin)
	}
}

type rawReq struct {
	name    string
	method  string
	headers map[string]string
	body    string
	code    int
	errHas  string
}

func binaryHeaders(drop string, extra map[string]string) map[string]string {
	h := map[string]string{
		"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "s", "ce-subject": "sub",
		"Content-Type": "application/json",
	}
	delete(h, drop)
	for k, v := range extra {
		h[k] = v
	}
	return h
}

func structured(drop string, extra map[string]any) string {
	m := map[string]any{"specversion": "1.0", "id": "1", "type": "t", "source": "s", "subject": "sub", "data": map[string]any{"a": 1}}
	delete(m, drop)
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

var structuredCT = map[string]string{"Content-Type": "application/cloudevents+json"}

func TestBadRequests(t *testing.T) {
	cases := []rawReq{
		{name: "binary missing type", headers: binaryHeaders("ce-type", nil), body: `{}`, code: 400, errHas: "type"},
		{name: "binary missing source", headers: binaryHeaders("ce-source", nil), body: `{}`, code: 400, errHas: "source"},
		{name: "binary missing id", headers: binaryHeaders("ce-id", nil), body: `{}`, code: 400, errHas: "id"},
		{name: "binary missing subject", headers: binaryHeaders("ce-subject", nil), body: `{}`, code: 400, errHas: "subject"},
		{name: "binary missing specversion", headers: binaryHeaders("ce-specversion", nil), body: `{}`, code: 400, errHas: "specversion"},
		{name: "binary bad JSON data", headers: binaryHeaders("", nil), body: `{"a":`, code: 400, errHas: "data"},
		{name: "binary data not an object", headers: binaryHeaders("", nil), body: `[1,2]`, code: 400, errHas: "JSON object"},
		{name: "binary non-JSON content type", headers: binaryHeaders("", map[string]string{"Content-Type": "text/plain"}), body: `hello`, code: 400, errHas: "datacontenttype"},
		{name: "binary bad specversion", headers: binaryHeaders("", map[string]string{"ce-specversion": "9.9"}), body: `{}`, code: 400, errHas: "specversion"},
		{name: "structured missing type", headers: structuredCT, body: structured("type", nil), code: 400, errHas: "type"},
		{name: "structured missing source", headers: structuredCT, body: structured("source", nil), code: 400, errHas: "source"},
		{name: "structured missing subject", headers: structuredCT, body: structured("subject", nil), code: 400, errHas: "subject"},
		{name: "structured empty subject", headers: structuredCT, body: structured("", map[string]any{"subject": ""}), code: 400, errHas: "subject"},
		{name: "structured specversion not a string", headers: structuredCT, body: structured("", map[string]any{"specversion": 1}), code: 400, errHas: "specversion 1 is not a string"},
		{name: "structured bad JSON", headers: structuredCT, body: `{"specversion":"1.0",`, code: 400, errHas: "invalid JSON"},
		{name: "structured data not an object", headers: structuredCT, body: structured("", map[string]any{"data": "text"}), code: 400, errHas: "JSON object"},
		{name: "structured non-JSON datacontenttype", headers: structuredCT, body: structured("", map[string]any{"datacontenttype": "application/xml", "data": "<a/>"}), code: 400, errHas: "datacontenttype"},
		{name: "not a CloudEvent", headers: map[string]string{"Content-Type": "text/plain"}, body: `hello`, code: 400, errHas: "not a CloudEvent"},
		{name: "plain JSON without ce headers", headers: map[string]string{"Content-Type": "application/json"}, body: `{"a":1}`, code: 400, errHas: "not a CloudEvent"},
		{name: "batch", headers: map[string]string{"Content-Type": "application/cloudevents-batch+json"}, body: `[` + structured("", nil) + `]`, code: 400, errHas: "batch"},
		{name: "subject with NUL", headers: structuredCT, body: structured("", map[string]any{"subject": "a\x00b"}), code: 400, errHas: "NUL"},
		{name: "GET", method: http.MethodGet, headers: binaryHeaders("", nil), code: 405},
	}
	srv, s := newServer(t, cloudevents.ReceiverConfig{})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, srv.URL, c)
			if code != c.code {
				t.Fatalf("status %d, want %d (body %s)", code, c.code, body)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(body), &m); err != nil {
				t.Fatalf("error body is not JSON: %q", body)
			}
			msg, _ := m["error"].(string)
			if msg == "" || m["status"] != float64(c.code) {
				t.Fatalf("error body = %s", body)
			}
			if c.errHas != "" && !strings.Contains(msg, c.errHas) {
				t.Errorf("error %q does not mention %q", msg, c.errHas)
			}
		})
	}
	if n := len(s.all()); n != 0 {
		t.Errorf("handlers ran %d times for rejected requests", n)
	}
}

func TestBodyLimit(t *testing.T) {
	srv, s := newServer(t, cloudevents.ReceiverConfig{MaxBodyBytes: 64})
	big := `{"a":"` + strings.Repeat("x", 100) + `"}`
	for _, c := range []rawReq{
		{name: "binary", headers: binaryHeaders("", nil), body: big},
		{name: "structured", headers: structuredCT, body: structured("", map[string]any{"data": map[string]any{"a": strings.Repeat("x", 100)}})},
	} {
		code, body := do(t, srv.URL, c)
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "64 bytes") {
			t.Errorf("%s: status %d body %s, want 413", c.name, code, body)
		}
	}
	// At the limit it is accepted.
	small := rawReq{headers: binaryHeaders("", nil), body: `{"a":"` + strings.Repeat("x", 56) + `"}`}
	if len(small.body) != 64 {
		t.Fatalf("test body is %d bytes", len(small.body))
	}
	if code, body := do(t, srv.URL, small); code != http.StatusAccepted {
		t.Errorf("body at the limit: status %d %s", code, body)
	}
	if n := len(s.all()); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

func TestAcceptedBody(t *testing.T) {
	srv, _ := newServer(t, cloudevents.ReceiverConfig{})
	code, body := do(t, srv.URL, rawReq{headers: binaryHeaders("", map[string]string{"ce-id": "abc"}), body: `{"x":1}`})
	if code != http.StatusAccepted {
		t.Fatalf("status %d", code)
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(body), &m); err != nil || m["status"] != "accepted" || m["id"] != "abc" {
		t.Fatalf("body %q", body)
	}
}

func TestHandlerErrorStillAccepted(t *testing.T) {
	var mu sync.Mutex
	var errs []error
	app := krules.New(krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}))
	app.On("t").Do(func(context.Context, *krules.Event) error { return io.ErrUnexpectedEOF })
	srv := httptest.NewServer(cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}))
	defer srv.Close()
	if code, body := do(t, srv.URL, rawReq{headers: binaryHeaders("", nil), body: `{}`}); code != http.StatusAccepted {
		t.Fatalf("status %d %s", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 1 || errs[0] != io.ErrUnexpectedEOF {
		t.Fatalf("error handler got %v", errs)
	}
}

func do(t *testing.T, url string, c rawReq) (int, string) {
	t.Helper()
	m := c.method
	if m == "" {
		m = http.MethodPost
	}
	req, err := http.NewRequest(m, url, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
