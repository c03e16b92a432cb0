package nats_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

// Workers join, leave and restart (gracefully) while events flow: the
// partitions move between them (leases), every event is handled, each
// subject's events in publish order, and no event twice.
func TestRebalanceKeepsOrder(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 16)
	const subjects, per = 40, 60
	var mu sync.Mutex
	seen := map[string][]int64{}
	handledBy := map[int]int{}
	newApp := func(id int) *krules.App {
		app := krules.New()
		app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
			mu.Lock()
			seen[ev.Subject.Name()] = append(seen[ev.Subject.Name()], seqOf(ev))
			handledBy[id]++
			mu.Unlock()
			return nil
		})
		return app
	}
	cfg := knats.WorkerConfig{Stream: stream, AckWait: 5 * time.Second, ShutdownTimeout: time.Minute}
	start := func(id int) (*knats.Worker, func() error) {
		w := newWorker(t, js, newApp(id), cfg)
		return w, startWorker(t, w)
	}
	w1, stop1 := start(1)
	w2, _ := start(2)
	waitOwnedAll(t, 16, w1, w2)

	p := publisher(t, js, stream)
	ctx := context.Background()
	published := make(chan error, 1)
	go func() {
		for i := 1; i <= per; i++ {
			for s := range subjects {
				e, err := cloudevents.NewEvent(ctx, "tick", fmt.Sprintf("s%02d", s), krules.Payload{"seq": i}, cloudevents.EventOptions{Source: "test"})
				if err == nil {
					_, err = p.PublishEventAsync(ctx, stream, e)
				}
				if err != nil {
					published <- err
					return
				}
			}
			time.Sleep(80 * time.Millisecond) // spread the events over the membership changes
		}
		<-js.PublishAsyncComplete()
		published <- nil
	}()

	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, v := range seen {
			n += len(v)
		}
		return n
	}
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d events handled", count(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	total := subjects * per
	waitFor(total / 5)
	w3, _ := start(3) // joins: takes its share
	waitOwnedAll(t, 16, w1, w2, w3)
	waitFor(2 * total / 5)
	if err := stop1(); err != nil { // leaves gracefully
		t.Fatalf("worker 1: %v", err)
	}
	if o := w1.Owned(); len(o) != 0 {
		t.Fatalf("worker 1 still owns %v after Run returned", o)
	}
	waitOwnedAll(t, 16, w2, w3)
	waitFor(3 * total / 5)
	w1b, _ := start(4) // restart of worker 1
	waitOwnedAll(t, 16, w1b, w2, w3)
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	waitFor(total)
	waitIdle(t, js, stream, time.Minute)

	mu.Lock()
	defer mu.Unlock()
	for s := range subjects {
		name := fmt.Sprintf("s%02d", s)
		got := seen[name]
		if len(got) != per {
			t.Fatalf("%s: handled %d events, want %d: %v", name, len(got), per, got)
		}
		for i, v := range got {
			if v != int64(i+1) {
				t.Fatalf("%s: order violated at %d: %v", name, i, got)
			}
		}
	}
	for id := 1; id <= 4; id++ {
		if handledBy[id] == 0 {
			t.Errorf("worker %d handled nothing (%v)", id, handledBy)
		}
	}
	t.Logf("handled by worker: %v", handledBy)
}

// waitOwnedAll waits until the workers own all n partitions between them,
// each at least one.
func waitOwnedAll(t *testing.T, n int, ws ...*knats.Worker) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		total, each := 0, true
		var got [][]int
		for _, w := range ws {
			o := w.Owned()
			got = append(got, o)
			total += len(o)
			each = each && len(o) > 0
		}
		if total == n && each {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions not spread over the %d workers: %v", len(ws), got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Fencing through the idempotency record: a worker that finds the subject's
// record written under a newer lease epoch of its partition than its own
// takes itself for a stale owner — it runs no handler, commits and acks
// nothing, and gives the partition up.
func TestIdempotentStaleLeaseEpochFences(t *testing.T) {
	_, js := connect(t)
	stream := newStream(t, js, 1)
	ctx := context.Background()
	mem := memory.New()
	ran := make(chan struct{}, 1)
	app := krules.New(krules.WithStorage(mem))
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		ran <- struct{}{}
		return nil
	})
	w := newWorker(t, js, app, knats.WorkerConfig{Stream: stream, Idempotent: true, AckWait: 2 * time.Second})
	kv, err := js.KeyValue(ctx, knats.LeaseBucket(stream, knats.DefaultGroup))
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	created := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Created
	// A record as a newer owner (epoch far above any revision of the
	// bucket) would have written it.
	rec := map[string]any{stream + "/" + knats.DefaultGroup: map[string]any{
		"leases": strconv.FormatInt(created.UnixNano(), 36), "lease": int64(1 << 40), "seq": int64(0), "epoch": "other", "ids": []any{},
	}}
	if _, _, err := app.Subject("x").SetExt(ctx, knats.AppliedKey, rec, krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	waitOwnedAll(t, 1, w)
	if _, err := publisher(t, js, stream).Publish(ctx, "tick", "x", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(w.Owned()) != 0 { // the worker gives the partition up
		if time.Now().After(deadline) {
			t.Fatalf("stale worker still owns %v", w.Owned())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-ran:
		t.Fatal("a stale owner ran the handler")
	case <-time.After(500 * time.Millisecond):
	}
	if n, err := remaining(ctx, js, stream); err != nil || n != 1 {
		t.Fatalf("remaining %d (%v), want the event still unacknowledged", n, err)
	}
	if st := w.Stats(); st.Handled != 0 || st.Duplicates != 0 {
		t.Fatalf("stats %+v", st)
	}
}
