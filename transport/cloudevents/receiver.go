package cloudevents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
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
// App (see Deliver) before answering.
//
// Responses (JSON bodies):
//
//	202 {"status":"accepted","id":"<event id>"}   handlers ran (their errors go to the App's error handler)
//	400 {"error":"...","status":400}               not a CloudEvent, batch mode, bad JSON, missing
//	                                               id/type/source/specversion/subject, data not a JSON
//	                                               object, non-JSON datacontenttype, invalid subject
//	405                                            method other than POST
//	413                                            body larger than MaxBodyBytes
//	500                                            the App refused the emit (e.g. cascade limit)
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
	msg := cehttp.NewMessage(r.Header, io.NopCloser(bytes.NewReader(data)))
	switch msg.ReadEncoding() {
	case binding.EncodingUnknown:
		if hasCEHeader(r.Header) {
			writeError(w, http.StatusBadRequest, "binary CloudEvent without a ce-specversion header")
		} else {
			writeError(w, http.StatusBadRequest, "not a CloudEvent: content type %q and no ce-specversion header", r.Header.Get("Content-Type"))
		}
		return
	case binding.EncodingBatch:
		writeError(w, http.StatusBadRequest, "batched CloudEvents are not supported: send one event per request")
		return
	}
	e, err := binding.ToEvent(r.Context(), msg)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid CloudEvent: %v", err)
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
		if len(k) > 3 && strings.EqualFold(k[:3], "ce-") {
			return true
		}
	}
	return false
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": fmt.Sprintf(format, args...), "status": code})
}
