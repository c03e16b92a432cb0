package cloudevents_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// hreq is a request given as header lines (repeatable, any bytes) and body.
type hreq struct {
	name    string
	headers [][2]string
	body    string
}

// serve runs one request through a Receiver (no network, so headers may
// hold bytes a client would refuse to send) and returns the answer and
// what the handlers saw.
func serve(t *testing.T, r hreq) (*httptest.ResponseRecorder, []got) {
	t.Helper()
	app := krules.New()
	s := &seen{}
	app.On("*").Do(s.handler)
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(r.body))
	for _, kv := range r.headers {
		req.Header[http.CanonicalHeaderKey(kv[0])] = append(req.Header[http.CanonicalHeaderKey(kv[0])], kv[1])
	}
	rec := httptest.NewRecorder()
	cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}).ServeHTTP(rec, req)
	return rec, s.all()
}

// bin returns the headers of a valid binary-mode event, with replace
// applied (an empty value drops the header) and more appended.
func bin(replace map[string]string, more ...[2]string) [][2]string {
	base := [][2]string{
		{"ce-specversion", "1.0"}, {"ce-id", "id-1"}, {"ce-type", "order.created"},
		{"ce-source", "src"}, {"ce-subject", "order-1"}, {"Content-Type", "application/json"},
	}
	var out [][2]string
	for _, kv := range base {
		if v, ok := replace[kv[0]]; ok {
			if v == "" {
				continue
			}
			kv[1] = v
		}
		out = append(out, kv)
	}
	return append(out, more...)
}

var jsonCT = [][2]string{{"Content-Type", "application/json"}}

// TestAcceptedBeyondSpec: what the Receiver accepts that the CloudEvents
// spec does not (issue 14.2 and 14.3; see Receiver).
func TestAcceptedBeyondSpec(t *testing.T) {
	t.Run("structured as application/json", func(t *testing.T) {
		for _, h := range [][][2]string{jsonCT, nil, {{"Content-Type", "application/json; charset=utf-8"}}} {
			rec, evs := serve(t, hreq{headers: h, body: `{"specversion":"1.0","id":"1","type":"t","source":"s","subject":"x","data":{"a":1}}`})
			if rec.Code != http.StatusAccepted || len(evs) != 1 || evs[0].payload["a"] != int64(1) {
				t.Fatalf("headers %v: %d %s %v", h, rec.Code, rec.Body, evs)
			}
		}
	})
	t.Run("structured without specversion or id", func(t *testing.T) {
		rec, evs := serve(t, hreq{headers: jsonCT, body: `{"type":"t","source":"s","subject":"x"}`})
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		if e := evs[0].ce; e.SpecVersion() != "1.0" || len(e.ID()) != 36 || !strings.Contains(rec.Body.String(), e.ID()) {
			t.Errorf("specversion %q id %q answer %s", e.SpecVersion(), e.ID(), rec.Body)
		}
	})
	t.Run("structured extensions", func(t *testing.T) {
		rec, evs := serve(t, hreq{headers: jsonCT, body: `{"specversion":"1.0","id":"1","type":"t","source":"s","subject":"x",
			"Tenant_ID":"acme","n":5,"big":1e400,"ok":false,"obj":{"b":[1, 2]},"null":null,"__":"dropped"}`})
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		want := map[string]any{"tenantid": "acme", "n": "5", "big": "1e400", "ok": "false", "obj": `{"b":[1,2]}`}
		if got := evs[0].ce.Extensions(); !equalExt(got, want) {
			t.Errorf("extensions %#v, want %#v", got, want)
		}
	})
	t.Run("structured data_base64 of a JSON object", func(t *testing.T) {
		// Spec behaviour (the original drops data_base64 and gives {}).
		rec, evs := serve(t, hreq{headers: jsonCT, body: `{"specversion":"1.0","id":"1","type":"t","source":"s","subject":"x","datacontenttype":"application/json","data_base64":"eyJhIjoxfQ=="}`})
		if rec.Code != http.StatusAccepted || len(evs) != 1 || evs[0].payload["a"] != int64(1) {
			t.Fatalf("%d %s %v", rec.Code, rec.Body, evs)
		}
	})
	t.Run("binary None attributes", func(t *testing.T) {
		rec, evs := serve(t, hreq{headers: bin(nil, [2]string{"ce-datacontenttype", "None"}, [2]string{"ce-dataschema", "None"},
			[2]string{"ce-time", "None"}, [2]string{"ce-nothing", "None"}), body: `{"a":1}`})
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		e := evs[0].ce
		if e.DataSchema() != "" || !e.Time().IsZero() || e.DataContentType() != "application/json" {
			t.Errorf("dataschema %q time %v datacontenttype %q: a \"None\" was read as a value", e.DataSchema(), e.Time(), e.DataContentType())
		}
		// An extension's "None" cannot be told from the string: it stays.
		if e.Extensions()["nothing"] != "None" {
			t.Errorf("extensions %v", e.Extensions())
		}
	})
	t.Run("binary extension names", func(t *testing.T) {
		rec, evs := serve(t, hreq{headers: bin(nil, [2]string{"ce-tenant_id", "t-1"}, [2]string{"ce-Zone-2", "z"},
			[2]string{"ce-__", "dropped"}), body: `{}`})
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		if want := map[string]any{"tenantid": "t-1", "zone2": "z"}; !equalExt(evs[0].ce.Extensions(), want) {
			t.Errorf("extensions %v, want %v", evs[0].ce.Extensions(), want)
		}
	})
}

func equalExt(got, want map[string]any) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// TestRefusals: every request the Receiver refuses gets 400 with a JSON
// body whose error names the problem, and reaches no handler (issues 14.3
// and 15.3).
func TestRefusals(t *testing.T) {
	se := func(members string) string {
		return `{"specversion":"1.0","id":"1","type":"t","source":"s","subject":"x"` + members + `}`
	}
	cases := []struct {
		hreq
		errHas string
	}{
		// 15.3: data the value model cannot hold, not silently altered.
		{hreq{"binary invalid UTF-8 in data", bin(nil), "{\"a\":\"\xff\"}"}, `invalid UTF-8 byte 0xff in a string at offset 6`},
		{hreq{"structured invalid UTF-8 in data", jsonCT, se(",\"data\":{\"a\":\"x\xc3\"}")}, `invalid UTF-8 byte 0xc3`},
		{hreq{"binary lone surrogate in data", bin(nil), `{"a":"\ud800"}`}, `unpaired UTF-16 surrogate escape \ud800`},
		{hreq{"structured lone surrogate in data", jsonCT, se(`,"data":{"a":"\udc00x"}`)}, `unpaired UTF-16 surrogate escape \udc00`},
		{hreq{"binary NaN in data", bin(nil), `{"a":NaN}`}, `NaN at offset 5 is not a JSON number`},
		{hreq{"binary Infinity in data", bin(nil), `{"a":-Infinity}`}, `-Infinity at offset 5 is not a JSON number`},
		{hreq{"binary NUL in data", bin(nil), `{"a":"x\u0000y"}`}, `contains a NUL byte`},
		{hreq{"binary duplicate key in data", bin(nil), `{"a":1,"b":{"c":1,"c":2}}`}, `duplicate object key "c" at offset 18`},
		{hreq{"structured duplicate key", jsonCT, se(`,"id":"2"`)}, `duplicate object key "id"`},
		{hreq{"structured duplicate key in data", jsonCT, se(`,"data":{"k":1,"k":1}`)}, `duplicate object key "k"`},
		// 15.3: the event type, like a name given to Set.
		{hreq{"binary NUL in type", bin(map[string]string{"ce-type": "a\x00b"}), `{}`}, `event type name "a\x00b" contains a NUL byte`},
		{hreq{"structured NUL in type", jsonCT, `{"specversion":"1.0","id":"1","type":"a\u0000b","source":"s","subject":"x"}`}, `contains a NUL byte`},
		{hreq{"binary invalid UTF-8 in type", bin(map[string]string{"ce-type": "a\xffb"}), `{}`}, `is not valid UTF-8`},
		{hreq{"binary NUL in subject", bin(map[string]string{"ce-subject": "a\x00b"}), `{}`}, `subject name "a\x00b" contains a NUL byte`},
		// 15.3: repeated attributes.
		{hreq{"duplicate ce-id", bin(nil, [2]string{"ce-id", "id-2"}), `{}`}, `header ce-id given 2 times`},
		{hreq{"duplicate ce-subject", bin(nil, [2]string{"ce-subject", "other"}), `{}`}, `header ce-subject given 2 times`},
		{hreq{"duplicate ce-type", bin(nil, [2]string{"Ce-Type", "other"}), `{}`}, `header ce-type given 2 times`},
		// 15.3: a specversion that is there but unknown.
		{hreq{"binary specversion 9.9", bin(map[string]string{"ce-specversion": "9.9"}), `{}`}, `unsupported specversion "9.9"`},
		{hreq{"structured specversion 9.9", jsonCT, `{"specversion":"9.9","id":"1","type":"t","source":"s","subject":"x"}`}, `unsupported specversion "9.9"`},
		{hreq{"binary no specversion", bin(map[string]string{"ce-specversion": ""}), `{}`}, `without a ce-specversion header`},
		// 14.3: extension names that cannot be mapped.
		{hreq{"binary two names, one extension", bin(nil, [2]string{"ce-tenant_id", "a"}, [2]string{"ce-tenantid", "b"}), `{}`}, `both map to the attribute "tenantid"`},
		{hreq{"binary name normalised to an attribute", bin(nil, [2]string{"ce-sub_ject", "y"}), `{}`}, `normalises to the context attribute "subject"`},
		{hreq{"structured two names, one extension", jsonCT, se(`,"tenant_id":"a","TenantID":"b"`)}, `both map to the attribute "tenantid"`},
		{hreq{"structured name normalised to an attribute", jsonCT, se(`,"Type":"y"`)}, `normalises to the context attribute "type"`},
		{hreq{"binary real ce-datacontenttype", bin(nil, [2]string{"ce-datacontenttype", "application/json"}), `{}`}, `in binary mode the datacontenttype is the Content-Type header`},
		// Ambiguous or not a CloudEvent.
		{hreq{"ce- headers with a structured body", bin(nil), se(`,"data":{"a":1}`)}, `ce- headers together with a structured CloudEvent body`},
		{hreq{"plain JSON", jsonCT, `{"a":1}`}, `not a CloudEvent: no ce- headers`},
		{hreq{"empty body", jsonCT, ``}, `empty body`},
		{hreq{"invalid JSON", jsonCT, `{"type":`}, `invalid JSON: unexpected end of input`},
		{hreq{"specversion not a string", jsonCT, `{"specversion":1.0,"type":"t"}`}, `specversion 1.0 is not a string`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, evs := serve(t, c.hreq)
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("status %d %s, want 400", rec.Code, rec.Body)
			}
			if len(evs) != 0 {
				t.Fatalf("refused, but %d events reached the handlers", len(evs))
			}
			var m struct {
				Error  string
				Status int
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || m.Status != 400 {
				t.Fatalf("body %q is not the JSON error", rec.Body)
			}
			if !strings.Contains(m.Error, c.errHas) {
				t.Errorf("error %q does not name %q", m.Error, c.errHas)
			}
		})
	}
}

// TestPayloadAndCheckErrors: the conversions the NATS transport shares
// report the same problems as errors wrapping ErrMalformed.
func TestPayloadAndCheckErrors(t *testing.T) {
	mk := func(typ string, data string) *event.Event {
		e := event.New()
		e.SetID("1")
		e.SetSource("s")
		e.SetType(typ)
		e.SetSubject("x")
		_ = e.SetData("application/json", []byte(data))
		return &e
	}
	for _, data := range []string{"{\"a\":\"\xff\"}", `{"a":"\ud800"}`, `{"a":1,"a":2}`, `{"a":NaN}`, `[1]`} {
		if _, err := cloudevents.Payload(mk("t", data)); !errors.Is(err, cloudevents.ErrMalformed) {
			t.Errorf("Payload(%q) = %v, want ErrMalformed", data, err)
		}
	}
	if err := cloudevents.Check(mk("a\x00b", `{}`)); !errors.Is(err, cloudevents.ErrMalformed) || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("Check(NUL in type) = %v", err)
	}
	app := krules.New()
	ran := false
	app.On("*").Do(func(context.Context, *krules.Event) error { ran = true; return nil })
	if err := cloudevents.Deliver(context.Background(), app, mk("t", `{"a":NaN}`)); !errors.Is(err, cloudevents.ErrMalformed) || ran {
		t.Errorf("Deliver(NaN) = %v, handler ran %v", err, ran)
	}
}
