package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

// natsStream connects and creates a stream of its own (deleted at the end).
func natsStream(t *testing.T, r knats.Retention) (string, jetstream.JetStream, string) {
	t.Helper()
	url := testenv.NATSURL(t)
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.Unique("clitest")
	if _, err := knats.EnsureStream(t.Context(), js, knats.StreamConfig{Name: name, Partitions: 2, Retention: r}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range []string{name, knats.DeadLetterStream(name)} {
			if err := js.DeleteStream(context.Background(), s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	return url, js, name
}

func publisher(t *testing.T, js jetstream.JetStream, stream string) *knats.Publisher {
	t.Helper()
	p, err := knats.NewPublisher(t.Context(), js, knats.PublisherConfig{Stream: stream, Source: "clitest"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func publish(t *testing.T, p *knats.Publisher, typ, subject string, payload krules.Payload) string {
	t.Helper()
	id, err := p.Publish(t.Context(), typ, subject, payload)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestEventsTailAll(t *testing.T) {
	t.Parallel()
	url, js, stream := natsStream(t, knats.RetentionLimits)
	// A worker group exists (its consumers), and is not disturbed by tail.
	if _, err := knats.NewWorker(t.Context(), js, krules.New(), knats.WorkerConfig{Stream: stream, Group: "g"}); err != nil {
		t.Fatal(err)
	}
	p := publisher(t, js, stream)
	publish(t, p, krules.PropertyChanged, "user-1", krules.Payload{"property_name": "status", "old_value": "new", "value": "paid"})
	publish(t, p, "other.thing", "x-1", nil)
	orderID := publish(t, p, "order.created", "order-1", krules.Payload{"amount": 5})
	publish(t, p, krules.PropertyDeleted, "user-1", krules.Payload{"property_name": "status", "old_value": "paid"})

	r := run(t, "", 0, "events", "tail", "--nats", url, "--stream", stream, "--all", "-n", "3", "subject-property-*", "order.*")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	want := []string{
		`subject-property-changed  user-1  status "new" → "paid"`,
		`order.created  order-1  {"amount":5}`,
		`subject-property-deleted  user-1  status "paid" → (deleted)`,
	}
	if len(lines) != len(want) {
		t.Fatalf("tail printed %d lines, want %d:\n%s", len(lines), len(want), r.stdout)
	}
	for i, l := range lines {
		ts, rest, _ := strings.Cut(l, "  ")
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", ts); err != nil {
			t.Errorf("line %d %q: time %q: %v", i, l, ts, err)
		}
		if rest != want[i] {
			t.Errorf("line %d = %q, want %q", i, rest, want[i])
		}
	}

	r = run(t, "", 0, "events", "tail", "-o", "json", "--nats", url, "--stream", stream, "--all", "-n", "2")
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		recs = append(recs, decode(t, l).(map[string]any))
	}
	if len(recs) != 2 {
		t.Fatalf("tail -o json: %d records", len(recs))
	}
	if g := recs[0]; g["type"] != krules.PropertyChanged || g["subject"] != "user-1" || g["property"] != "status" || g["old_value"] != "new" || g["value"] != "paid" || g["source"] != "clitest" || g["stream_seq"] != 1.0 {
		t.Errorf("first json record %v", g)
	}
	if g := recs[1]; g["type"] != "other.thing" || g["property"] != nil {
		t.Errorf("second json record %v", g)
	}
	r = run(t, "", 0, "events", "tail", "-o", "json", "--nats", url, "--stream", stream, "--all", "-n", "1", "order.*")
	if g := decode(t, r.stdout).(map[string]any); g["id"] != orderID || !jsonEqual(g["data"], map[string]any{"amount": 5.0}) {
		t.Errorf("order record %v", g)
	}

	// The group's consumers still have every event pending: tail acked
	// nothing and took nothing from them.
	s, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	pending := 0
	l := s.ListConsumers(t.Context())
	for info := range l.Info() {
		if strings.HasPrefix(info.Name, "g-p") {
			pending += int(info.NumPending)
			if info.NumAckPending != 0 || info.Delivered.Consumer != 0 {
				t.Errorf("consumer %s: %d ack pending, %d delivered after tail", info.Name, info.NumAckPending, info.Delivered.Consumer)
			}
		}
	}
	if pending != 4 {
		t.Errorf("worker group has %d events pending after tail, want 4", pending)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// Without --all, tail starts with the next event: it prints an event
// published while it runs.
func TestEventsTailLive(t *testing.T) {
	t.Parallel()
	url, js, stream := natsStream(t, knats.RetentionLimits)
	p := publisher(t, js, stream)
	publish(t, p, "old.event", "s-0", nil) // before tail: not printed
	cmd := exec.Command(binary(t), "events", "tail", "--nats", url, "--stream", stream, "-n", "1", "live.*")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Publish until tail has seen one (it may start after the first ones).
	deadline := time.After(30 * time.Second)
	for i := 0; ; i++ {
		publish(t, p, "live.event", "s-"+strconv.Itoa(i+1), nil)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("tail: %v\nstderr: %s", err, errb.String())
			}
			if line := out.String(); !strings.Contains(line, "  live.event  s-") || strings.Count(line, "\n") != 1 {
				t.Fatalf("tail printed %q", line)
			}
			return
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("tail printed nothing in 30s; stdout %q stderr %q", out.String(), errb.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestEventsDeadAndReplay(t *testing.T) {
	t.Parallel()
	url, js, stream := natsStream(t, knats.RetentionInterest)
	var fail atomic.Bool
	fail.Store(true)
	handled := make(chan string, 10)
	app := krules.New()
	app.On("order.*").Do(func(_ context.Context, ev *krules.Event) error {
		if fail.Load() {
			return errors.New("carrier down")
		}
		handled <- ev.Subject.Name()
		return nil
	})
	w, err := knats.NewWorker(t.Context(), js, app, knats.WorkerConfig{Stream: stream, MaxDeliver: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-stopped })

	p := publisher(t, js, stream)
	id := publish(t, p, "order.ship", "order-9", krules.Payload{"n": 1})
	// A message that is not a CloudEvent: dead-lettered as malformed.
	if _, err := js.Publish(t.Context(), knats.PartitionSubject(stream, 0), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	var dead []any
	for deadline := time.Now().Add(30 * time.Second); ; {
		dead = decode(t, run(t, "", 0, "events", "dead", "-o", "json", "--nats", url, "--stream", stream).stdout).([]any)
		if len(dead) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters after 30s, want 2", len(dead))
		}
		time.Sleep(50 * time.Millisecond)
	}
	var shipSeq, badSeq string
	for _, d := range dead {
		d := d.(map[string]any)
		switch d["reason"] {
		case knats.ReasonHandlerError:
			if d["type"] != "order.ship" || d["subject"] != "order-9" || d["id"] != id || d["deliveries"] != 1.0 || !strings.Contains(d["error"].(string), "carrier down") {
				t.Errorf("handler-error dead letter %v", d)
			}
			if d["nats_subject"] != knats.PartitionSubject(stream, knats.PartitionOf("order-9", 2)) {
				t.Errorf("nats_subject %v", d["nats_subject"])
			}
			shipSeq = strconv.Itoa(int(d["seq"].(float64)))
		case knats.ReasonMalformed:
			badSeq = strconv.Itoa(int(d["seq"].(float64)))
		default:
			t.Errorf("dead letter %v", d)
		}
	}
	if shipSeq == "" || badSeq == "" {
		t.Fatalf("dead letters %v", dead)
	}
	table := run(t, "", 0, "events", "dead", "--nats", url, "--stream", stream).stdout
	if !strings.HasPrefix(table, "SEQ ") || !strings.Contains(table, "handler-error") || !strings.Contains(table, "order.ship") ||
		!strings.Contains(table, "carrier down") || !strings.Contains(table, "malformed") {
		t.Errorf("dead table:\n%s", table)
	}

	// Bad input and missing things.
	run(t, "", 2, "events", "replay", "--nats", url, "--stream", stream)
	run(t, "", 2, "events", "replay", "--nats", url, "--stream", stream, "--seq", "1", "--all")
	run(t, "", 2, "events", "dead", "--nats", url)
	run(t, "", 2, "events", "replay", "--nats", url, "--stream", stream, "--seq", badSeq) // malformed: refused
	run(t, "", 1, "events", "replay", "--nats", url, "--stream", stream, "--seq", "999999")
	run(t, "", 1, "events", "dead", "--nats", url, "--stream", stream+"nope")
	run(t, "", 2, "events", "frobnicate")

	// Replay: the event reaches the worker again and leaves the dead letters.
	fail.Store(false)
	r := run(t, "", 0, "events", "replay", "--nats", url, "--stream", stream, "--seq", shipSeq)
	if !strings.HasPrefix(r.stdout, "replayed dead letter "+shipSeq+" (order.ship on order-9)") {
		t.Errorf("replay output %q", r.stdout)
	}
	select {
	case s := <-handled:
		if s != "order-9" {
			t.Fatalf("handled %q", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("replayed event not handled within 30s")
	}
	dead = decode(t, run(t, "", 0, "events", "dead", "-o", "json", "--nats", url, "--stream", stream).stdout).([]any)
	if len(dead) != 1 || dead[0].(map[string]any)["reason"] != knats.ReasonMalformed {
		t.Fatalf("after replay, dead letters %v; want only the malformed one", dead)
	}
	// --all skips the malformed one and keeps it.
	r = run(t, "", 0, "events", "replay", "--nats", url, "--stream", stream, "--all")
	if !strings.HasPrefix(r.stdout, "skipped dead letter "+badSeq+": malformed") {
		t.Errorf("replay --all output %q", r.stdout)
	}
	if d := decode(t, run(t, "", 0, "events", "dead", "-o", "json", "--nats", url, "--stream", stream).stdout).([]any); len(d) != 1 {
		t.Errorf("after replay --all, %d dead letters, want the malformed one", len(d))
	}
	if s := w.Stats(); s.Handled != 1 || s.DeadLettered != 2 {
		t.Errorf("worker stats %+v", s)
	}
}

func TestEventsUnreachableServer(t *testing.T) {
	t.Parallel()
	r := run(t, "", 3, "events", "dead", "--nats", "nats://127.0.0.1:1", "--stream", "s", "--timeout", "2s")
	if !strings.Contains(r.stderr, "connect") {
		t.Errorf("stderr %q", r.stderr)
	}
}
