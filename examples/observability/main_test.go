package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

// lockedBuffer is the traces writer: spans end on several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs the example until the returned stop is called; stop returns
// run's error.
func start(t *testing.T, cfg config) (base string, traces *lockedBuffer, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	traces = &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, ln, traces, slog.New(slog.DiscardHandler)) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(time.Minute):
				runErr = errors.New("run did not return within a minute")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return "http://" + ln.Addr().String(), traces, stop
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitMetrics polls /metrics until every line prefix in want is there.
func waitMetrics(t *testing.T, base string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := get(t, base+"/metrics")
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, "\n"+w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no %q after 30s:\n%s", missing, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type span struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ SpanID string }
}

func spans(t *testing.T, out string) []span {
	t.Helper()
	var all []span
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var s span
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("traces output is not JSON spans: %v", err)
		}
		all = append(all, s)
	}
	return all
}

func TestStandalone(t *testing.T) {
	base, traces, stop := start(t, config{rate: 100, traces: true})
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	waitMetrics(t, base,
		`krules_events_total{event_type="order.created",handler="accept",outcome="success"}`,
		`krules_events_total{event_type="subject-property-changed",handler="count-status",outcome="success"}`,
		`krules_storage_operations_total{backend="memory",operation="set",outcome="ok"}`,
		`krules_storage_operation_duration_seconds_bucket{backend="memory",operation="set",outcome="ok",le="0.001"}`,
		`go_goroutines`)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// One order is one trace: the handler of order.created, the storage
	// set under it, and the cascade's handler.
	byTrace := map[string][]span{}
	for _, s := range spans(t, traces.String()) {
		byTrace[s.SpanContext.TraceID] = append(byTrace[s.SpanContext.TraceID], s)
	}
	complete := 0
	for _, ss := range byTrace {
		names := map[string]bool{}
		for _, s := range ss {
			names[s.Name] = true
		}
		if names["krules.handler order.created"] && names["krules.storage set"] && names["krules.handler subject-property-changed"] {
			complete++
		}
	}
	if complete == 0 {
		t.Fatalf("no trace holds the order handler, its storage span and the cascade (%d traces)", len(byTrace))
	}
}

func TestBadRate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := run(context.Background(), config{rate: 0}, ln, io.Discard, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("rate 0: no error")
	}
}

func TestWithNATS(t *testing.T) {
	url := testenv.NATSURL(t)
	stream := testenv.Unique("obsdemo")
	t.Cleanup(func() {
		nc, err := knats.Connect(url)
		if err != nil {
			t.Error(err)
			return
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		for _, s := range []string{stream, knats.DeadLetterStream(stream)} {
			if err := js.DeleteStream(context.Background(), s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	base, traces, stop := start(t, config{natsURL: url, stream: stream, rate: 100, traces: true})
	waitMetrics(t, base,
		`krules_nats_worker_handled_total{group="obs",stream="`+stream+`"}`,
		`krules_nats_consumer_pending_messages{group="obs",stream="`+stream+`"}`,
		`krules_storage_operations_total{backend="memory",operation="set",outcome="ok"}`)
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range spans(t, traces.String()) {
		if s.Name == "publish "+stream {
			found = true
			break
		}
	}
	if !found {
		t.Fatal("no publish span in the traces")
	}
}
