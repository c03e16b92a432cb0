package cloudevents_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// FuzzReceiver feeds arbitrary bodies, content types and ce-* headers to the
// ingress. It must never panic, must answer only 202, 400 or 413, and an
// accepted request must have reached the handlers with a non-empty type and
// subject.
func FuzzReceiver(f *testing.F) {
	f.Add([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","subject":"x","data":{"a":1}}`), "application/cloudevents+json", "", "", "", "")
	f.Add([]byte(`{"a":1}`), "application/json", "1.0", "order.created", "src", "order-1")
	f.Add([]byte(``), "application/json", "1.0", "t", "s", "")
	f.Add([]byte(`{"specversion":"1.0","type":"t"}`), "application/cloudevents+json", "", "", "", "")
	f.Add([]byte(`[1,2]`), "application/json", "1.0", "t", "s", "x")
	f.Add([]byte(`{"specversion":"0.3","id":"1","type":"t","source":"s","subject":"x","data":"aGk=","datacontentencoding":"base64"}`), "application/cloudevents+json", "", "", "", "")
	f.Add([]byte(`{"type":"t","source":"s","subject":"x","tenant_id":{"a":[1]},"n":null,"Big":1e400}`), "application/json", "", "", "", "")
	f.Add([]byte(`{"specversion":"1.0","type":"t","source":"s","subject":"x","data":{"a":1}}`), "application/json", "1.0", "t", "s", "x")
	f.Add([]byte(`{"specversion":"1.0","type":"t","source":"s","subject":"x","data_base64":"eyJhIjoxfQ=="}`), "", "", "", "", "")
	f.Fuzz(func(t *testing.T, body []byte, contentType, specversion, typ, source, subject string) {
		app := krules.New()
		var handled []*krules.Event
		app.On("*").Do(func(_ context.Context, ev *krules.Event) error {
			handled = append(handled, ev)
			return nil
		})
		rcv := cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{MaxBodyBytes: 4096})
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		set := func(k, v string) {
			if v != "" && validHeader(v) {
				req.Header.Set(k, v)
			}
		}
		set("Content-Type", contentType)
		set("Ce-Specversion", specversion)
		set("Ce-Id", "fuzz-1")
		set("Ce-Type", typ)
		set("Ce-Source", source)
		set("Ce-Subject", subject)
		rec := httptest.NewRecorder()
		rcv.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusAccepted:
			if len(handled) != 1 || handled[0].Type == "" || handled[0].Subject.Name() == "" || handled[0].Payload() == nil {
				t.Fatalf("202 but handlers saw %v", handled)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if len(handled) != 0 {
				t.Fatalf("%d but the event was dispatched", rec.Code)
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body)
		}
	})
}

func validHeader(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
