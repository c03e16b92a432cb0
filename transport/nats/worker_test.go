package nats_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

func publisher(t testing.TB, js jetstream.JetStream, stream string) *knats.Publisher {
	t.Helper()
	p, err := knats.NewPublisher(context.Background(), js, knats.PublisherConfig{Stream: stream, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPublishAndHandleInOrder(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 4)
	const subjects, per = 6, 25
	rec := newRecorder(subjects * per)
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		ce, _ := cloudevents.FromContext(ctx)
		d, _ := ev.Meta(knats.MetaDeliveries)
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev), id: ce.ID(), meta: ev.Metadata(), deliv: d.(uint64)})
		return nil
	})
	// Two workers of one group in the same process share the work (once
	// they have shared the partitions: events a worker receives while it
	// hands a partition over may be delivered again to the other).
	var ws []*knats.Worker
	for range 2 {
		w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream})
		startWorker(t, w)
		ws = append(ws, w)
	}
	waitOwnedAll(t, 4, ws...)
	p := publisher(t, js, stream)
	ctx := context.Background()
	ids := map[string]bool{}
	for i := 1; i <= per; i++ {
		for s := range subjects {
			id, err := p.Publish(ctx, "tick", fmt.Sprintf("sub-%d", s), krules.Payload{"seq": i})
			if err != nil {
				t.Fatal(err)
			}
			ids[id] = true
		}
	}
	rec.wait(t, 30*time.Second)
	last := map[string]int64{}
	for _, r := range rec.all() {
		if r.seq != last[r.subject]+1 {
			t.Fatalf("subject %s: seq %d after %d", r.subject, r.seq, last[r.subject])
		}
		last[r.subject] = r.seq
		if !ids[r.id] {
			t.Fatalf("unknown event id %q", r.id)
		}
		if r.meta[knats.MetaStream] != stream || r.meta[knats.MetaSequence] == nil || r.deliv != 1 {
			t.Fatalf("metadata %v", r.meta)
		}
		if _, ok := r.meta[cloudevents.MetaCloudEvent].(*event.Event); !ok {
			t.Fatalf("no CloudEvent in metadata")
		}
	}
	for s := range subjects {
		if last[fmt.Sprintf("sub-%d", s)] != per {
			t.Fatalf("subject %d: last seq %d", s, last[fmt.Sprintf("sub-%d", s)])
		}
	}
}

func TestRetryWithBackoffKeepsOrder(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	rec := newRecorder(5)
	var attempts atomic.Int32
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		d, _ := ev.Meta(knats.MetaDeliveries)
		if seqOf(ev) == 2 && attempts.Add(1) <= 2 {
			return errors.New("transient")
		}
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev), deliv: d.(uint64)})
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Backoff: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}})
	startWorker(t, w)
	p := publisher(t, js, stream)
	for i := 1; i <= 5; i++ {
		if _, err := p.Publish(context.Background(), "tick", "a", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	rec.wait(t, 30*time.Second)
	var got []int64
	for _, r := range rec.all() {
		got = append(got, r.seq)
		if r.seq == 2 && r.deliv != 3 {
			t.Errorf("event 2 handled on delivery %d, want 3", r.deliv)
		}
	}
	if fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("order %v", got)
	}
	waitIdle(t, js, stream, 10*time.Second)
	st := w.Stats()
	if st.Failed != 2 || st.Redelivered != 2 || st.Handled != 5 || st.DeadLettered != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDeadLetterAfterMaxDeliver(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 2)
	rec := newRecorder(2)
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		if ev.Subject.Name() == "bad" {
			if seqOf(ev) == 2 {
				panic("boom")
			}
			return fmt.Errorf("cannot handle %d", seqOf(ev))
		}
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev)})
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, MaxDeliver: 2, Backoff: []time.Duration{20 * time.Millisecond}})
	startWorker(t, w)
	p := publisher(t, js, stream)
	ctx := context.Background()
	for _, e := range []struct {
		subj string
		seq  int
	}{{"bad", 1}, {"good", 1}, {"bad", 2}, {"good", 2}} {
		if _, err := p.Publish(ctx, "tick", e.subj, krules.Payload{"seq": e.seq}); err != nil {
			t.Fatal(err)
		}
	}
	rec.wait(t, 30*time.Second)
	dls := deadLetters(t, js, stream, 2)
	wantErr := []string{"cannot handle 1", "panic: boom"}
	for i, m := range dls {
		h := m.Headers()
		if h.Get(knats.HeaderDeadReason) != knats.ReasonHandlerError || !strings.Contains(h.Get(knats.HeaderDeadError), wantErr[i]) ||
			h.Get(knats.HeaderDeadDeliveries) != "2" || !strings.HasPrefix(h.Get(knats.HeaderDeadSubject), stream+".p.") {
			t.Errorf("dead letter %d headers %v", i, h)
		}
		var e event.Event
		if err := e.UnmarshalJSON(m.Data()); err != nil || e.Subject() != "bad" {
			t.Errorf("dead letter %d body: %v %q", i, err, m.Data())
		}
	}
	waitIdle(t, js, stream, 10*time.Second)
	if st := w.Stats(); st.DeadLettered != 2 || st.Handled != 2 || st.Failed != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMalformedMessagesGoToDeadLetter(t *testing.T) {
	nc, js := connect(t)
	stream := newStream(t, js, 1)
	rec := newRecorder(1)
	app := krules.New()
	app.On("*").Do(func(ctx context.Context, ev *krules.Event) error {
		rec.add(record{subject: ev.Subject.Name()})
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream})
	startWorker(t, w)
	subj := knats.PartitionSubject(stream, 0)
	bad := []struct{ body, why string }{
		{`not json`, "malformed"},
		{`{"specversion":"1.0","id":"1","type":"t","source":"s"}`, "subject"},
		{`{"specversion":"1.0","id":"2","type":"t","source":"s","subject":"x","data":[1,2]}`, "JSON object"},
		{`{"specversion":"1.0","id":"3","source":"s","subject":"x"}`, "type"},
		// Valid event, then trailing text: not JSON (the CloudEvents
		// decoder alone would take the event and ignore the rest).
		{`{"specversion":"1.0","id":"4","type":"t","source":"s","subject":"x"} trailing`, "invalid character"},
	}
	for _, b := range bad {
		if err := nc.Publish(subj, []byte(b.body)); err != nil {
			t.Fatal(err)
		}
	}
	p := publisher(t, js, stream)
	if _, err := p.Publish(context.Background(), "ok", "fine", nil); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, 30*time.Second)
	dls := deadLetters(t, js, stream, len(bad))
	for i, m := range dls {
		h := m.Headers()
		if h.Get(knats.HeaderDeadReason) != knats.ReasonMalformed || !strings.Contains(h.Get(knats.HeaderDeadError), bad[i].why) || string(m.Data()) != bad[i].body {
			t.Errorf("dead letter %d: headers %v body %q", i, h, m.Data())
		}
	}
	waitIdle(t, js, stream, 10*time.Second)
	if st := w.Stats(); st.DeadLettered != uint64(len(bad)) || st.Handled != 1 || st.Redelivered != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGracefulShutdownFinishesInFlight(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	started := make(chan struct{})
	release := make(chan struct{})
	var handled atomic.Int32
	app := krules.New()
	app.On("slow").Do(func(ctx context.Context, ev *krules.Event) error {
		close(started)
		<-release
		if ctx.Err() != nil {
			return ctx.Err()
		}
		handled.Add(1)
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, ShutdownTimeout: time.Minute})
	stop := startWorker(t, w)
	p := publisher(t, js, stream)
	if _, err := p.Publish(context.Background(), "slow", "s", nil); err != nil {
		t.Fatal(err)
	}
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) while a handler was running", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if handled.Load() != 1 {
		t.Fatalf("handled %d", handled.Load())
	}
	waitIdle(t, js, stream, 10*time.Second) // acked: nothing pending, nothing to redeliver
	if st := w.Stats(); st.Handled != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestShutdownDeadlineGivesEventBack(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	started := make(chan struct{}, 1)
	app := krules.New()
	app.On("stuck").Do(func(ctx context.Context, ev *krules.Event) error {
		started <- struct{}{}
		<-ctx.Done() // only the shutdown deadline ends it
		return ctx.Err()
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, ShutdownTimeout: 100 * time.Millisecond})
	stop := startWorker(t, w)
	p := publisher(t, js, stream)
	if _, err := p.Publish(context.Background(), "stuck", "s", nil); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := stop(); !errors.Is(err, knats.ErrShutdownTimeout) {
		t.Fatalf("Run: %v, want ErrShutdownTimeout", err)
	}
	// The event was nak'ed: a new worker gets it at once (no AckWait wait:
	// AckWait is the default 30s and the test would time out).
	rec := newRecorder(1)
	app2 := krules.New()
	app2.On("stuck").Do(func(ctx context.Context, ev *krules.Event) error {
		d, _ := ev.Meta(knats.MetaDeliveries)
		rec.add(record{deliv: d.(uint64)})
		return nil
	})
	startWorker(t, newWorker(t, js, app2, knats.WorkerConfig{Stream: stream}))
	rec.wait(t, 15*time.Second)
	if d := rec.all()[0].deliv; d != 2 {
		t.Fatalf("delivery %d, want 2", d)
	}
}

// An event republished under the same CloudEvent id (past the stream's
// de-duplication, e.g. by a producer retrying much later) is applied once
// with Idempotent, twice without.
func TestIdempotentByEventID(t *testing.T) {
	for _, idem := range []bool{false, true} {
		t.Run(fmt.Sprint("idempotent=", idem), func(t *testing.T) {
			nc, js := connect(t)
			stream := newStream(t, js, 1)
			app := krules.New()
			var mu sync.Mutex
			calls := 0
			app.On("inc").Do(func(ctx context.Context, ev *krules.Event) error {
				mu.Lock()
				calls++
				mu.Unlock()
				_, _, err := ev.Subject.Set(ctx, "n", krules.Inc(1))
				return err
			})
			w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Idempotent: idem})
			startWorker(t, w)
			e, err := cloudevents.NewEvent(context.Background(), "inc", "c", nil, cloudevents.EventOptions{ID: "same-id"})
			if err != nil {
				t.Fatal(err)
			}
			data, _ := e.MarshalJSON()
			for range 2 { // raw publishes without Nats-Msg-Id: the stream keeps both
				if err := nc.Publish(knats.PartitionSubject(stream, 0), data); err != nil {
					t.Fatal(err)
				}
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			waitIdle(t, js, stream, 15*time.Second)
			n, err := krules.GetAs[int](context.Background(), app.Subject("c"), "n")
			if err != nil {
				t.Fatal(err)
			}
			want := 2
			if idem {
				want = 1
			}
			if n != want {
				t.Fatalf("n = %d, want %d (stats %+v)", n, want, w.Stats())
			}
			if idem {
				if st := w.Stats(); st.Duplicates != 1 {
					t.Fatalf("stats %+v", st)
				}
				// The record is internal: extended property _krules_applied.
				if ok, _ := app.Subject("c").HasExt(context.Background(), knats.AppliedKey); !ok {
					t.Fatalf("no idempotency record")
				}
			}
		})
	}
}

func TestEnsureStreamChecks(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 3)
	ctx := context.Background()
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream, Partitions: 3}); err != nil {
		t.Fatalf("same config again: %v", err)
	}
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream, Partitions: 4}); !errors.Is(err, knats.ErrPartitionMismatch) {
		t.Fatalf("other partition count: %v", err)
	}
	// Partitions 0 takes the existing stream's count (a stream made under an
	// earlier DefaultPartitions keeps working) and leaves it as it is.
	s, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream})
	if err != nil {
		t.Fatalf("partitions 0 on an existing stream of 3: %v", err)
	}
	if d := s.CachedInfo().Config.Description; d != "krules-go partitions=3" {
		t.Fatalf("description after EnsureStream with 0: %q", d)
	}
	if w, err := knats.NewWorker(ctx, js, krules.New(), knats.WorkerConfig{Stream: stream}); err != nil {
		t.Fatal(err)
	} else if w.Partitions() != 3 {
		t.Fatalf("worker on the stream: partitions %d, want 3", w.Partitions())
	}
	// A new stream with Partitions 0 gets DefaultPartitions, and explicit
	// counts are still checked against it.
	fresh := newStream(t, js, 0)
	w, err := knats.NewWorker(ctx, js, krules.New(), knats.WorkerConfig{Stream: fresh})
	if err != nil {
		t.Fatal(err)
	}
	if w.Partitions() != knats.DefaultPartitions {
		t.Fatalf("new stream with partitions 0: %d partitions, want %d", w.Partitions(), knats.DefaultPartitions)
	}
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: fresh, Partitions: knats.DefaultPartitions + 1}); !errors.Is(err, knats.ErrPartitionMismatch) {
		t.Fatalf("other partition count on a default stream: %v", err)
	}
	for _, bad := range []string{"", "a.b", "a b", "a*"} {
		if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: bad}); err == nil {
			t.Errorf("stream name %q accepted", bad)
		}
	}
	plain := stream + "_plain"
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: plain, Subjects: []string{plain + ".x"}}); err != nil {
		t.Fatal(err)
	}
	defer js.DeleteStream(ctx, plain)
	if _, err := knats.NewWorker(ctx, js, krules.New(), knats.WorkerConfig{Stream: plain}); !errors.Is(err, knats.ErrNotKrulesStream) {
		t.Fatalf("worker on a foreign stream: %v", err)
	}
	if _, err := knats.NewPublisher(ctx, js, knats.PublisherConfig{Stream: "missing_" + stream}); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("publisher on a missing stream: %v", err)
	}
}

func TestPartitionOf(t *testing.T) {
	counts := make([]int, 8)
	for i := range 8000 {
		k := knats.PartitionOf(fmt.Sprintf("subject-%d", i), 8)
		if k != knats.PartitionOf(fmt.Sprintf("subject-%d", i), 8) {
			t.Fatal("not deterministic")
		}
		counts[k]++
	}
	for k, c := range counts {
		if c < 800 || c > 1200 {
			t.Errorf("partition %d got %d of 8000", k, c)
		}
	}
	// FNV-1a 32 of "" is 2166136261.
	if got := knats.PartitionOf("", 1000); got != 2166136261%1000 {
		t.Errorf("PartitionOf(\"\") = %d", got)
	}
}

// Two Idempotent groups consuming one stream keep separate idempotency
// records: each applies every event once (the second group's events used
// to be taken as duplicates of the first group's).
func TestIdempotentTwoGroups(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	ctx := context.Background()
	mem := memory.New()
	const events = 5
	handlers := func(prop string, ran chan<- struct{}) *krules.App {
		app := krules.New(krules.WithStorage(mem))
		app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
			_, _, err := ev.Subject.Set(ctx, prop, krules.Inc(1))
			ran <- struct{}{}
			return err
		})
		return app
	}
	ranA := make(chan struct{}, events)
	wa := newWorker(t, js, handlers("billing", ranA), knats.WorkerConfig{Stream: stream, Group: "billing", Idempotent: true})
	stopA := startWorker(t, wa)
	// Both groups exist (their consumers) before the events are published:
	// with interest retention a group sees the events published after it
	// was created.
	ranB := make(chan struct{}, events)
	wb := newWorker(t, js, handlers("email", ranB), knats.WorkerConfig{Stream: stream, Group: "email", Idempotent: true})
	p := publisher(t, js, stream)
	for range events {
		if _, err := p.Publish(ctx, "tick", "s", nil); err != nil {
			t.Fatal(err)
		}
	}
	for range events {
		select {
		case <-ranA:
		case <-time.After(15 * time.Second):
			t.Fatalf("group billing: handler ran fewer than %d times; stats %+v", events, wa.Stats())
		}
	}
	if err := stopA(); err != nil {
		t.Fatal(err)
	}

	// Group email runs afterwards on the same store: it must not see
	// billing's record as its own.
	startWorker(t, wb)
	waitIdle(t, js, stream, 15*time.Second)
	s := krules.New(krules.WithStorage(mem)).Subject("s")
	for _, prop := range []string{"billing", "email"} {
		if n, err := krules.GetAs[int](ctx, s, prop); err != nil || n != events {
			t.Errorf("%s = %d (%v), want %d; email stats %+v", prop, n, err, events, wb.Stats())
		}
	}
	if st := wb.Stats(); st.Duplicates != 0 || st.Handled != events {
		t.Errorf("group email stats %+v, want %d handled and no duplicates", st, events)
	}
}

// A worker whose AckWait differs from its group's existing consumers is
// refused: it used to overwrite the consumers, shortening the lease of the
// running workers so that the server handed their events to a second one.
func TestWorkerAckWaitMismatchRefused(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 2)
	ctx := context.Background()
	app := krules.New()
	newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Group: "g", AckWait: 30 * time.Second})
	// Same settings: another worker of the group joins.
	newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Group: "g", AckWait: 30 * time.Second})

	_, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: stream, Group: "g", AckWait: time.Second})
	if !errors.Is(err, knats.ErrConsumerMismatch) {
		t.Fatalf("NewWorker with another AckWait: err = %v, want ErrConsumerMismatch", err)
	}
	for k := range 2 {
		c, err := js.Consumer(ctx, stream, fmt.Sprintf("g-p%d", k))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.CachedInfo().Config.AckWait; got != 30*time.Second {
			t.Errorf("consumer g-p%d AckWait = %s after the refused worker, want 30s", k, got)
		}
	}
	// Another group is independent.
	newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Group: "h", AckWait: time.Second})
}

// Run honours ShutdownTimeout even when a handler ignores its context: it
// returns ErrShutdownTimeout without waiting for it, stops the event's
// heartbeats so another worker gets it after AckWait, and the stale
// handler, when it finally returns, commits nothing.
func TestShutdownDeadlineHandlerIgnoresContext(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	const ackWait = time.Second // the group's lease; heartbeats every 333ms
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	stale := make(chan struct{})
	app := krules.New()
	app.On("stuck").Do(func(ctx context.Context, ev *krules.Event) error {
		started <- struct{}{}
		<-release // ignores ctx, as does its write
		_, _, err := ev.Subject.Set(context.Background(), "stale", true)
		close(stale)
		return err
	})
	t.Cleanup(func() { close(release) })
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, AckWait: ackWait, ShutdownTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	if _, err := publisher(t, js, stream).Publish(context.Background(), "stuck", "s", nil); err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, knats.ErrShutdownTimeout) {
			t.Fatalf("Run: %v, want ErrShutdownTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return while a handler ignored its context")
	}

	// The lease lapses: another worker of the group gets the event while
	// the first handler still runs.
	rec := newRecorder(1)
	app2 := krules.New(krules.WithStorage(memory.New()))
	app2.On("stuck").Do(func(ctx context.Context, ev *krules.Event) error {
		d, _ := ev.Meta(knats.MetaDeliveries)
		rec.add(record{deliv: d.(uint64)})
		return nil
	})
	w2 := newWorker(t, js, app2, knats.WorkerConfig{Stream: stream, AckWait: ackWait})
	startWorker(t, w2)
	rec.wait(t, 30*time.Second)
	if d := rec.all()[0].deliv; d < 2 {
		t.Fatalf("delivery %d, want a redelivery", d)
	}

	// The stale handler finishes: its write is not committed.
	release <- struct{}{}
	<-stale
	waitIdle(t, js, stream, 15*time.Second)
	if ok, err := app.Subject("s").Has(context.Background(), "stale"); err != nil || ok {
		t.Errorf("stale handler's write committed after the shutdown deadline (has=%v, err=%v)", ok, err)
	}
}

// EnsureStream on a stream of the old layout (dead letters in the stream
// itself) moves the dead-letter subject to DeadLetterStream instead of
// failing on the overlapping subject; new streams delete handled events
// (interest retention) and keep dead letters apart.
func TestEnsureStreamLayoutAndMigration(t *testing.T) {
	_, js := connect(t)
	ctx := context.Background()
	old := "krtest_old_" + fmt.Sprint(time.Now().UnixNano())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: old, Description: "krules-go partitions=2",
		Subjects: []string{old + ".p.*", knats.DeadLetterSubject(old)},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = js.DeleteStream(ctx, old)
		_ = js.DeleteStream(ctx, knats.DeadLetterStream(old))
	})
	s, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: old, Partitions: 2})
	if err != nil {
		t.Fatalf("EnsureStream on the old layout: %v", err)
	}
	if subs := s.CachedInfo().Config.Subjects; fmt.Sprint(subs) != fmt.Sprint([]string{old + ".p.*"}) {
		t.Fatalf("old stream subjects after migration: %v", subs)
	}
	ds, err := js.Stream(ctx, knats.DeadLetterStream(old))
	if err != nil {
		t.Fatal(err)
	}
	if subs := ds.CachedInfo().Config.Subjects; len(subs) != 1 || subs[0] != knats.DeadLetterSubject(old) {
		t.Fatalf("dead-letter stream subjects %v", subs)
	}
	// Again: nothing to migrate.
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: old, Partitions: 2}); err != nil {
		t.Fatal(err)
	}

	// A new stream: handled events are deleted once acked.
	stream := newStream(t, js, 1)
	info, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.CachedInfo().Config; c.Retention != jetstream.InterestPolicy || c.Duplicates != knats.DefaultDuplicates {
		t.Fatalf("stream config retention %v duplicates %s", c.Retention, c.Duplicates)
	}
	rec := newRecorder(3)
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		rec.add(record{seq: seqOf(ev)})
		return nil
	})
	startWorker(t, newWorker(t, js, app, knats.WorkerConfig{Stream: stream}))
	p := publisher(t, js, stream)
	for i := 1; i <= 3; i++ {
		if _, err := p.Publish(ctx, "tick", "a", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	rec.wait(t, 15*time.Second)
	waitIdle(t, js, stream, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := info.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handled events still stored: %+v", st.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An owner takes no more than MaxHeld unacknowledged events of a partition
// from its pull (plus the pull's batch in flight), so the server's state of
// the consumer stays small; the rest waits at the server and then runs, in
// order.
func TestOwnerHoldsBoundedEvents(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	ctx := context.Background()
	n := knats.MaxHeld + 2*knats.FetchBatch + 100
	release := make(chan struct{})
	warm := make(chan struct{})
	rec := newRecorder(n)
	app := krules.New()
	app.On("warm").Do(func(ctx context.Context, ev *krules.Event) error { close(warm); return nil })
	app.On("e").Do(func(ctx context.Context, ev *krules.Event) error {
		if seqOf(ev) == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev)})
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream})
	startWorker(t, w)
	p := publisher(t, js, stream)
	// One event handled: the owner has its partition and is past the start
	// (it takes everything while it waits for a takeover to settle).
	warmUp(t, p, warm)
	for i := 1; i <= n; i++ {
		if _, err := p.Publish(ctx, "e", "s", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := js.Consumer(ctx, stream, knats.DefaultGroup+"-p0")
	if err != nil {
		t.Fatal(err)
	}
	limit := knats.MaxHeld + knats.FetchBatch
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending > limit {
			t.Fatalf("%d events delivered and unacknowledged, want at most %d", info.NumAckPending, limit)
		}
		// Filled up (the first event blocks its lane, all are of one
		// subject): stays so for a while.
		if info.NumAckPending >= knats.MaxHeld && int(info.NumPending) >= n-limit {
			time.Sleep(300 * time.Millisecond)
			if info, err = c.Info(ctx); err != nil {
				t.Fatal(err)
			}
			if info.NumAckPending > limit {
				t.Fatalf("after a while: %d delivered and unacknowledged, want at most %d", info.NumAckPending, limit)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the owner did not fill up: %d delivered and unacknowledged, %d pending", info.NumAckPending, info.NumPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	rec.wait(t, 30*time.Second)
	for i, r := range rec.all() {
		if r.seq != int64(i+1) {
			t.Fatalf("event %d handled as number %d", r.seq, i+1)
		}
	}
	waitIdle(t, js, stream, 10*time.Second)
}

// A partition blocked on a slow event: the events the client pulled ahead
// but the owner does not hold yet (it is at MaxHeld) get no heartbeat, so
// their AckWait lapses and the server sends them again, after the first
// copies. A copy of an event the owner already finished must not run it
// again (after later events of its subject): it is acked and dropped. Seen
// in TestEndToEndThreeWorkerProcesses/plain on a loaded machine (AckWait
// 5 s): "saw 8 after 16".
func TestRedeliveryOfFinishedEventIsDropped(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	stream := newStream(t, js, 1)
	ctx := context.Background()
	const ackWait = time.Second
	n := knats.MaxHeld + knats.FetchBatch + 50
	warm := make(chan struct{})
	rec := newRecorder(n)
	app := krules.New()
	app.On("warm").Do(func(ctx context.Context, ev *krules.Event) error { close(warm); return nil })
	app.On("e").Do(func(ctx context.Context, ev *krules.Event) error {
		if seqOf(ev) == 1 {
			// A slow event: longer than AckWait, so that what waits
			// behind it outside the owner's hold lapses.
			select {
			case <-time.After(3 * ackWait):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		rec.add(record{subject: ev.Subject.Name(), seq: seqOf(ev)})
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, AckWait: ackWait})
	startWorker(t, w)
	p := publisher(t, js, stream)
	warmUp(t, p, warm)
	for i := 1; i <= n; i++ {
		if _, err := p.Publish(ctx, "e", "s", krules.Payload{"seq": i}); err != nil {
			t.Fatal(err)
		}
	}
	rec.wait(t, 30*time.Second)
	waitIdle(t, js, stream, 10*time.Second)
	all := rec.all()
	for i, r := range all {
		if r.seq != int64(i+1) {
			t.Fatalf("handled as number %d: event %d (a finished event ran again?)", i+1, r.seq)
		}
	}
	if len(all) != n {
		t.Fatalf("%d handlings of %d events", len(all), n)
	}
}

// warmUp publishes a "warm" event and waits until the handler that closes
// warm ran: the worker owns its partition and is past its start.
func warmUp(t *testing.T, p *knats.Publisher, warm <-chan struct{}) {
	t.Helper()
	if _, err := p.Publish(context.Background(), "warm", "w", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-warm:
	case <-time.After(30 * time.Second):
		t.Fatal("warm-up event not handled")
	}
}
