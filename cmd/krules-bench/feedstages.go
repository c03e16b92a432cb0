package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	natsgo "github.com/nats-io/nats.go"

	"github.com/krules-go/krules/storage"
)

// Per-stage breakdown of the feed/*-e2e rows (KRULES_BENCH_FEED_STAGES=1;
// off by default, as the taps cost a goroutine per publish in the relay).
// Every change is followed by its value i (unique in a run) through:
//
//	t0      writer: just before the Set          (writer clock, Extra "t")
//	set     writer: the Set returned             (~ commit)
//	rstart  relay: the read that returned it was started
//	read    relay: that read returned            (readProbe)
//	sent    relay: PublishMsgAsync returned      (tapJS)
//	stored  server: stored in the stream         (the message's metadata timestamp)
//	acked   relay: its PubAck reached the relay  (the tapped future)
//	recv    worker: the pull iterator handed it to the worker (tapJS.Consumer)
//	handled worker: the handler started
//
// One machine, one clock. At the end of each run the bench joins the
// records of the writer, the relay and the workers by i and prints, for the
// median sample (p45-p55) and for the slowest 1 %, the mean time of each
// stage, how many tail samples each stage dominates, and the share of
// samples whose window [t0, handled] holds the end of a GC cycle of the
// relay or of the worker that handled it (tail against median: whether the
// tail coincides with GC more than the rest does).
const envFeedStages = "KRULES_BENCH_FEED_STAGES"

func feedStagesOn() bool { return os.Getenv(envFeedStages) == "1" }

// stageTap collects a child's per-change timestamps (Unix ns).
type stageTap struct {
	mu    sync.Mutex
	ids   map[string]int64    // relay: change id -> i
	rel   map[int64]*[4]int64 // relay: i -> rstart, read, sent, acked
	seqs  map[uint64]*[2]int64
	wrk   map[int64][3]int64 // worker: i -> stored, recv, handled
	gcMin int64              // GC pause ends before this were reported
}

func newStageTap() *stageTap {
	return &stageTap{ids: map[string]int64{}, rel: map[int64]*[4]int64{}, seqs: map[uint64]*[2]int64{},
		wrk: map[int64][3]int64{}, gcMin: time.Now().UnixNano()}
}

// readDone notes a relay read (started at start) of recs.
func (t *stageTap) readDone(start int64, recs []storage.PendingChange) {
	now := time.Now().UnixNano()
	t.mu.Lock()
	for _, r := range recs {
		i, ok := extraNanos(r.Change.New)
		if !ok {
			continue
		}
		if _, seen := t.rel[i]; seen {
			continue
		}
		t.ids[r.Change.ID] = i
		t.rel[i] = &[4]int64{start, now}
	}
	t.mu.Unlock()
}

func (t *stageTap) relayStamp(id string, k int, at int64) {
	t.mu.Lock()
	if i, ok := t.ids[id]; ok {
		if r := t.rel[i]; r[k] == 0 {
			r[k] = at
		}
	}
	t.mu.Unlock()
}

// take formats what was collected since the last take ("g" line) and
// forgets it: records ";"-separated, then "|" and the GC cycle ends.
func (t *stageTap) take() string {
	var b strings.Builder
	b.WriteString("g ")
	t.mu.Lock()
	for i, r := range t.rel {
		fmt.Fprintf(&b, "r,%d,%d,%d,%d,%d;", i, r[0], r[1], r[2], r[3])
	}
	for i, w := range t.wrk {
		fmt.Fprintf(&b, "w,%d,%d,%d,%d;", i, w[0], w[1], w[2])
	}
	clear(t.ids)
	clear(t.rel)
	clear(t.wrk)
	clear(t.seqs)
	from := t.gcMin
	t.gcMin = time.Now().UnixNano()
	t.mu.Unlock()
	b.WriteString("|")
	var gs debug.GCStats
	gs.Pause = make([]time.Duration, 0, 512)
	debug.ReadGCStats(&gs)
	for _, e := range gs.PauseEnd {
		if n := e.UnixNano(); n >= from {
			b.WriteString(strconv.FormatInt(n, 10))
			b.WriteByte(',')
		}
	}
	return b.String()
}

// tapJS is the JetStream of a relay or worker child with the taps.
type tapJS struct {
	jetstream.JetStream
	t *stageTap
}

var idKey = []byte(`"id":"`)

func (j tapJS) PublishMsgAsync(msg *natsgo.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	f, err := j.JetStream.PublishMsgAsync(msg, opts...)
	if err != nil {
		return f, err
	}
	now := time.Now().UnixNano()
	var id string
	if k := bytes.Index(msg.Data, idKey); k >= 0 {
		rest := msg.Data[k+len(idKey):]
		if e := bytes.IndexByte(rest, '"'); e >= 0 {
			id = string(rest[:e])
		}
	}
	j.t.relayStamp(id, 2, now)
	tf := &tapFuture{PubAckFuture: f, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	go func() {
		select {
		case a := <-f.Ok():
			j.t.relayStamp(id, 3, time.Now().UnixNano())
			tf.ok <- a
		case e := <-f.Err():
			tf.err <- e
		}
	}()
	return tf, nil
}

type tapFuture struct {
	jetstream.PubAckFuture
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *tapFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *tapFuture) Err() <-chan error            { return f.err }

func (j tapJS) Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	c, err := j.JetStream.Consumer(ctx, stream, name)
	if err != nil {
		return c, err
	}
	return tapConsumer{c, j.t}, nil
}

func (j tapJS) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := j.JetStream.CreateConsumer(ctx, stream, cfg)
	if err != nil {
		return c, err
	}
	return tapConsumer{c, j.t}, nil
}

type tapConsumer struct {
	jetstream.Consumer
	t *stageTap
}

func (c tapConsumer) Messages(opts ...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) {
	it, err := c.Consumer.Messages(opts...)
	if err != nil {
		return it, err
	}
	return tapIter{it, c.t}, nil
}

type tapIter struct {
	jetstream.MessagesContext
	t *stageTap
}

func (it tapIter) Next(opts ...jetstream.NextOpt) (jetstream.Msg, error) {
	m, err := it.MessagesContext.Next(opts...)
	if err == nil {
		now := time.Now().UnixNano()
		if md, err := m.Metadata(); err == nil {
			it.t.mu.Lock()
			if _, ok := it.t.seqs[md.Sequence.Stream]; !ok {
				it.t.seqs[md.Sequence.Stream] = &[2]int64{md.Timestamp.UnixNano(), now}
			}
			it.t.mu.Unlock()
		}
	}
	return m, err
}

// handled notes the handler's start for the event of stream sequence seq
// and value i.
func (t *stageTap) handled(seq uint64, i int64) {
	now := time.Now().UnixNano()
	t.mu.Lock()
	if s, ok := t.seqs[seq]; ok {
		if _, dup := t.wrk[i]; !dup {
			t.wrk[i] = [3]int64{s[0], s[1], now}
		}
	}
	t.mu.Unlock()
}

// stageRun joins one run's records.
type stageRun struct {
	writer map[int64][2]int64 // i -> t0, set
	relay  map[int64][4]int64
	worker map[int64][3]int64
	wproc  map[int64]int // i -> worker index
	gcRel  []int64
	gcWrk  [][]int64
}

func parseStages(line string, proc int, run *stageRun) {
	recs, gcs, _ := strings.Cut(strings.TrimPrefix(line, "g "), "|")
	for _, r := range strings.Split(recs, ";") {
		f := strings.Split(r, ",")
		if len(f) < 5 {
			continue
		}
		var v [5]int64
		for k := 1; k < len(f) && k <= 5; k++ {
			v[k-1], _ = strconv.ParseInt(f[k], 10, 64)
		}
		switch f[0] {
		case "r":
			run.relay[v[0]] = [4]int64{v[1], v[2], v[3], v[4]}
		case "w":
			run.worker[v[0]] = [3]int64{v[1], v[2], v[3]}
			run.wproc[v[0]] = proc
		}
	}
	var g []int64
	for _, s := range strings.Split(gcs, ",") {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			g = append(g, n)
		}
	}
	if proc < 0 {
		run.gcRel = g
	} else {
		run.gcWrk[proc] = g
	}
}

// stageNames of the intervals between consecutive timestamps.
var stageNames = []string{"set", "set->rstart", "rstart->read", "read->sent", "sent->stored", "stored->recv", "recv->handled", "(sent->acked)"}

// report prints the breakdown of one run.
func (run *stageRun) report(label string) {
	type sample struct {
		total int64
		d     [8]int64
		gc    bool
	}
	var all []sample
	for i, w := range run.writer {
		r, ok1 := run.relay[i]
		k, ok2 := run.worker[i]
		if !ok1 || !ok2 || r[2] == 0 {
			continue
		}
		t0, set := w[0], w[1]
		rs := max(r[0], set) // a read started before the commit waited for it
		s := sample{total: k[2] - t0}
		s.d = [8]int64{set - t0, rs - set, r[1] - rs, r[2] - r[1], k[0] - r[2], k[1] - k[0], k[2] - k[1], r[3] - r[2]}
		in := func(g []int64) bool {
			for _, e := range g {
				if e >= t0 && e <= k[2] {
					return true
				}
			}
			return false
		}
		s.gc = in(run.gcRel) || in(run.gcWrk[run.wproc[i]])
		all = append(all, s)
	}
	if len(all) < 100 {
		fmt.Fprintf(os.Stderr, "  stages %s: only %d joined samples\n", label, len(all))
		return
	}
	slices.SortFunc(all, func(a, b sample) int { return int(a.total - b.total) })
	mean := func(ss []sample) (m [8]float64, tot float64, gc float64) {
		for _, s := range ss {
			for k := range s.d {
				m[k] += float64(s.d[k])
			}
			tot += float64(s.total)
			if s.gc {
				gc++
			}
		}
		n := float64(len(ss))
		for k := range m {
			m[k] /= n * 1e3
		}
		return m, tot / n / 1e3, gc / n
	}
	n := len(all)
	mid := all[n*45/100 : n*55/100]
	tail := all[n*99/100:]
	dom := make([]int, 8)
	for _, s := range tail {
		best := 0
		for k := 1; k < 7; k++ {
			if s.d[k] > s.d[best] {
				best = k
			}
		}
		dom[best]++
	}
	line := func(name string, ss []sample) {
		m, tot, gc := mean(ss)
		var b strings.Builder
		fmt.Fprintf(&b, "  stages %s %s (%d samples, mean total %.0fµs, GC-overlap %.0f%%):", label, name, len(ss), tot, gc*100)
		for k, v := range m {
			fmt.Fprintf(&b, " %s %.0f", stageNames[k], v)
		}
		fmt.Fprintln(os.Stderr, b.String())
	}
	line("p45-55", mid)
	line("top-1%", tail)
	var b strings.Builder
	fmt.Fprintf(&b, "  stages %s top-1%% dominated by:", label)
	for k := 0; k < 7; k++ {
		if dom[k] > 0 {
			fmt.Fprintf(&b, " %s %d", stageNames[k], dom[k])
		}
	}
	fmt.Fprintf(&b, "; GC cycles in run: relay %d, workers", len(run.gcRel))
	for _, g := range run.gcWrk {
		fmt.Fprintf(&b, " %d", len(g))
	}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&b, "; loadavg %s", strings.Join(strings.Fields(string(la))[:3], " "))
	}
	fmt.Fprintln(os.Stderr, b.String())
}
