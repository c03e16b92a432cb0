package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

// NATS rows: ordered krules workers against a raw JetStream pull consumer
// on the same workload, in the same run.
//
// One op is one run of natsEvents events (20,000; -nats-quick: 2,000) over
// 200 subjects, published in rounds (event i of every subject, then event
// i+1, ...) on one connection with async publishes; the clock runs from the
// first publish to the last event handled. Every event's handler does one
// Redis-backed NoCache Inc on its subject (krules) or one HINCRBY (raw); the
// order is checked per subject (a run with an order violation or a lost
// event fails). Stream, consumers and workers are set up outside the clock.
//
//   - nats/ordered-1-worker, nats/ordered-3-workers: 1 or 3 worker
//     processes (natschild.go), each a transport/nats Worker with its own
//     App and NATS connection (stream of DefaultPartitions partitions, or
//     -nats-partitions; default WorkerConfig).
//   - baseline nats/raw-consumer-1, -3: a plain stream, one durable pull
//     consumer (MaxAckPending 1000, explicit fire-and-forget acks) read by 1
//     or 3 processes with their own connection; no ordering.
//
// The worker processes report every event they handled with its finishing
// time; the order is checked over those times. The publisher stays in this
// process.
//
// Both sides encode each CloudEvent while the clock runs. Besides ns/op,
// each run prints events/s, p50/p99 publish→handled latency and the CPU
// per event of this process (the publisher), of each worker process, the
// local nats-server and redis-server (read from /proc; -cpu-nats-pid, -cpu-redis-pid count one process of each
// when the machine runs others) to stderr; -nats-cpuprofile writes a CPU
// profile per row (this process: <prefix><row>.prof; worker k:
// <prefix><row>.w<k>.prof), -nats-server-profile a nats-server one (server started
// with --profile), -nats-varz prints the server's messages in and out per
// event (server started with -m). The 3-worker row starts the clock only
// once every worker owns its fair share of the partitions, and prints the
// shares. -nats-calibrate adds nats/calibrate-raw-vs-raw, the raw consumer
// against itself: its ratio's spread is what the machine's load alone does
// to a ratio (18 runs at load 5-9: 0.72-1.33x, 3 below 0.8x). Needs KRULES_NATS_URL and
// KRULES_REDIS_URL.
func init() {
	register(Group{
		Name:    "nats",
		Enabled: func() bool { return os.Getenv("KRULES_NATS_URL") != "" && os.Getenv("KRULES_REDIS_URL") != "" },
		Setup:   natsSetup,
	})
}

var (
	natsQuick   = flag.Bool("nats-quick", false, "nats rows: 2,000 events per run instead of 20,000")
	natsParts   = flag.Int("nats-partitions", 0, "nats rows: partitions of the ordered stream (default: knats.DefaultPartitions)")
	natsProfile = flag.String("nats-cpuprofile", "", "nats rows: write a CPU profile of each row's last run to <this prefix><row>.prof")
	natsSrvProf = flag.String("nats-server-profile", "", "nats rows: the nats-server profiling URL (nats-server --profile port, http://127.0.0.1:6060); writes a 5 s server CPU profile from each run's first publish to <-nats-cpuprofile prefix><row>.server.prof")
	natsCalib   = flag.Bool("nats-calibrate", false, "nats rows: add the row nats/calibrate-raw-vs-raw: the raw consumer (1 reader) against itself, the spread the machine's load alone gives a ratio")
	natsVarz    = flag.String("nats-varz", "", "nats rows: the nats-server monitoring URL (http://127.0.0.1:8222); prints the messages the server took in and sent per event")
	natsDelay   = flag.Duration("nats-start-delay", 0, "nats ordered rows: wait this long after the workers own their partitions before the first publish (diagnostics: a delay near the pull expiry, 5 s, puts the first events at the expiry of the workers' first pull requests)")
)

// varz is the server's message counters (its /varz), zero without -nats-varz.
type varz struct {
	In  int64 `json:"in_msgs"`
	Out int64 `json:"out_msgs"`
}

func takeVarz() varz {
	var v varz
	if *natsVarz == "" {
		return v
	}
	resp, err := http.Get(strings.TrimSuffix(*natsVarz, "/") + "/varz")
	if err != nil {
		return v
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return v
}

const natsBenchSubjects = 200

func natsEvents() int {
	if *natsQuick {
		return 2000
	}
	return 20000
}

func natsSetup() ([]Row, func(), error) {
	ctx := context.Background()
	natsURL := os.Getenv("KRULES_NATS_URL")
	prefix := fmt.Sprintf("krules-bench-nats-%d:", os.Getpid())
	backend, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: prefix})
	if err != nil {
		return nil, nil, err
	}
	nc, err := knats.Connect(natsURL, natsgo.RetryOnFailedConnect(false))
	if err != nil {
		backend.Close()
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		backend.Close()
		return nil, nil, err
	}
	cleanup := func() {
		c := backend.Client()
		it := c.Scan(ctx, 0, "s:"+prefix+"*", 1000).Iterator()
		for it.Next(ctx) {
			c.Del(ctx, it.Val())
		}
		nc.Close()
		backend.Close()
	}
	b := &natsBench{url: natsURL, js: js, backend: backend, prefix: prefix}
	rows := []Row{
		{Name: "nats/ordered-1-worker", Run: func(tb *testing.B) { b.loop(tb, "nats/ordered-1-worker", b.krules, 1, true) }, Baseline: "nats/raw-consumer-1", Base: func(tb *testing.B) { b.loop(tb, "nats/raw-consumer-1", b.raw, 1, false) }},
		{Name: "nats/ordered-3-workers", Run: func(tb *testing.B) { b.loop(tb, "nats/ordered-3-workers", b.krules, 3, true) }, Baseline: "nats/raw-consumer-3", Base: func(tb *testing.B) { b.loop(tb, "nats/raw-consumer-3", b.raw, 3, false) }},
	}
	if *natsCalib {
		rows = append(rows, Row{Name: "nats/calibrate-raw-vs-raw", Run: func(tb *testing.B) { b.loop(tb, "nats/raw-consumer-1 (row)", b.raw, 1, false) }, Baseline: "nats/raw-consumer-1", Base: func(tb *testing.B) { b.loop(tb, "nats/raw-consumer-1", b.raw, 1, false) }})
	}
	return rows, cleanup, nil
}

type natsBench struct {
	url     string
	js      jetstream.JetStream
	backend *redis.Backend
	prefix  string // Redis key prefix of the workers' writes
	seq     atomic.Int64
}

func (nb *natsBench) streamName() string {
	return fmt.Sprintf("krbench_%d_%d", os.Getpid(), nb.seq.Add(1))
}

// natsRun is the state of one run: publish times, handled times, order.
type natsRun struct {
	n         int
	published []atomic.Int64 // unix nanos, by event index
	handled   []atomic.Int64 // unix nanos of its first handling, by event index
	count     atomic.Int64
	finished  chan struct{}
	cpu0, cpu cpuSample // CPU used when the first event was published and when the last was handled
	vz0, vz   varz      // server message counters then
	name      string
	prof      *os.File
	procs     []*natsProc // the worker processes

	mu   sync.Mutex
	recs []handledRec // every handling reported, repeats included

	// Set by check.
	violations int
	repeats    int
}

// handledRec is one handling of event i, finished at t (unix ns).
type handledRec struct {
	i int
	t int64
}

func newNatsRun(n int) *natsRun {
	return &natsRun{n: n, published: make([]atomic.Int64, n), handled: make([]atomic.Int64, n), finished: make(chan struct{}), recs: make([]handledRec, 0, n+n/8)}
}

// begin is called right before the first publish: it samples the CPU
// counters and, with -nats-cpuprofile, starts this process's CPU profile
// (stopped when the last event was handled; the last run of a row is kept).
func (r *natsRun) begin(b *testing.B) {
	if *natsProfile != "" {
		f, err := os.Create(*natsProfile + strings.ReplaceAll(r.name, "/", "_") + ".prof")
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		r.prof = f
	}
	if *natsSrvProf != "" {
		path := *natsProfile + strings.ReplaceAll(r.name, "/", "_") + ".server.prof"
		url := strings.TrimSuffix(*natsSrvProf, "/") + "/debug/pprof/profile?seconds=5"
		go func() {
			resp, err := http.Get(url)
			if err != nil {
				fmt.Fprintf(os.Stderr, "nats-server profile: %v\n", err)
				return
			}
			defer resp.Body.Close()
			if f, err := os.Create(path); err == nil {
				_, _ = io.Copy(f, resp.Body)
				f.Close()
			}
		}()
	}
	r.vz0 = takeVarz()
	for _, p := range r.procs {
		p.cpu0 = procCPU(p.cmd.Process.Pid)
		p.sys0 = procSyscalls(p.cmd.Process.Pid)
	}
	r.cpu0 = takeCPU()
}

// event i: subject i % subjects, per-subject seq i / subjects + 1.
func benchSubject(i int) string { return fmt.Sprintf("bench-%03d", i%natsBenchSubjects) }

// handledAt records a handling of event i, finished at t (unix ns), as a
// worker process reported it.
func (r *natsRun) handledAt(i int, t int64) {
	r.mu.Lock()
	r.recs = append(r.recs, handledRec{i, t})
	r.mu.Unlock()
	if r.handled[i].CompareAndSwap(0, t) && int(r.count.Add(1)) == r.n {
		r.cpu = takeCPU()
		for _, p := range r.procs {
			p.cpu = procCPU(p.cmd.Process.Pid)
			p.sys = procSyscalls(p.cmd.Process.Pid)
		}
		r.vz = takeVarz()
		if r.prof != nil {
			pprof.StopCPUProfile()
			r.prof.Close()
		}
		close(r.finished)
	}
}

// order replays the handlings in the order they finished (the events of a
// subject run one after the other, so their finishing times order them,
// across processes too) and counts the order violations (an event handled
// after a later one of its subject) and the repeats (redeliveries of an
// event already handled). It returns the last seq handled per subject.
func (r *natsRun) order() map[string]int64 {
	r.mu.Lock()
	recs := slices.Clone(r.recs)
	r.mu.Unlock()
	slices.SortStableFunc(recs, func(a, b handledRec) int { return cmp.Compare(a.t, b.t) })
	last := map[string]int64{}
	r.violations, r.repeats = 0, 0
	for _, h := range recs {
		subj, seq := benchSubject(h.i), int64(h.i/natsBenchSubjects+1)
		switch l := last[subj]; {
		case seq == l+1:
			last[subj] = seq
		case seq <= l:
			r.repeats++
			if seq < l {
				r.violations++
			}
		default:
			r.violations++
			last[subj] = seq
		}
	}
	return last
}

func (r *natsRun) check(b *testing.B, ordered bool) {
	last := r.order()
	if !ordered {
		return // raw has no ordering: its violations are not failures
	}
	fail := func(format string, args ...any) {
		err := fmt.Errorf("%s: "+format, append([]any{r.name}, args...)...)
		fmt.Fprintln(os.Stderr, "krules-bench:", err) // testing.Benchmark does not print b.Fatal's text
		b.Fatal(err)
	}
	if r.violations > 0 {
		fail("%d per-subject order violations", r.violations)
	}
	per := int64(r.n / natsBenchSubjects)
	for s := range natsBenchSubjects {
		if got := last[benchSubject(s)]; got != per {
			fail("subject %s: last seq %d, want %d", benchSubject(s), got, per)
		}
	}
}

// cpuText is the CPU per event of each worker process, of this process
// (self: the publisher) and of the servers; total is all of them (µs).
func (r *natsRun) cpuText() (text string, total float64) {
	var ws []string
	var sc int64
	d := r.cpu.sub(r.cpu0)
	sum := d.self + d.nats + d.redis + d.postgres
	for _, p := range r.procs {
		ws = append(ws, strconv.FormatFloat(float64((p.cpu-p.cpu0).Microseconds())/float64(r.n), 'f', 1, 64))
		sc += p.sys - p.sys0
		sum += p.cpu - p.cpu0
	}
	total = float64(sum.Microseconds()) / float64(r.n)
	return "workers [" + strings.Join(ws, " ") + "] (" + strconv.FormatFloat(float64(sc)/float64(r.n), 'f', 2, 64) + " read+write syscalls/event) " + d.perEvent(r.n) + " total " + strconv.FormatFloat(total, 'f', 1, 64), total
}

// tail counts the slowest 1 % of the events by partition of n (the
// partition a krules Publisher puts their subject in): a stall of one
// partition shows as one large count, a stall of everything as an even
// spread.
func (r *natsRun) tail(n int) []int {
	type lat struct {
		i int
		d int64
	}
	ls := make([]lat, r.n)
	for i := range ls {
		ls[i] = lat{i, r.handled[i].Load() - r.published[i].Load()}
	}
	slices.SortFunc(ls, func(a, b lat) int { return cmp.Compare(b.d, a.d) })
	out := make([]int, n)
	for _, l := range ls[:r.n/100] {
		out[knats.PartitionOf(benchSubject(l.i), n)]++
	}
	return out
}

// finish is, per partition of n, when its last event was handled (ms after
// the first publish): a partition that lagged behind the others shows as a
// late finish.
func (r *natsRun) finish(n int) []int64 {
	t0 := r.published[0].Load()
	out := make([]int64, n)
	for i := range r.n {
		k := knats.PartitionOf(benchSubject(i), n)
		out[k] = max(out[k], (r.handled[i].Load()-t0)/1e6)
	}
	return out
}

// procSyscalls is the number of read and write system calls of process
// pid so far (/proc/<pid>/io syscr + syscw; 0 where unreadable): each is a
// wake-up of the other side of a socket, the cost that batching saves.
func procSyscalls(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0
	}
	var n int64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscr: "); ok {
			c, _ := strconv.ParseInt(v, 10, 64)
			n += c
		} else if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			c, _ := strconv.ParseInt(v, 10, 64)
			n += c
		}
	}
	return n
}

func (r *natsRun) latencies() (p50, p99 time.Duration) {
	ls := make([]int64, r.n)
	for i := range ls {
		ls[i] = r.handled[i].Load() - r.published[i].Load()
	}
	slices.Sort(ls)
	return time.Duration(ls[len(ls)/2]), time.Duration(ls[len(ls)*99/100])
}

// loop runs b.N runs of run (one op = one run of natsEvents events) and
// prints each run's rate, latencies and CPU; the events/s, p50, p99 and
// the total CPU per event (workers, publisher, servers) of the run also go
// to the table's extra column (ordered rows).
func (nb *natsBench) loop(b *testing.B, name string, run func(*testing.B, *natsRun, int) time.Duration, workers int, ordered bool) {
	b.StopTimer()
	for range b.N {
		r := newNatsRun(natsEvents())
		r.name = name
		elapsed := run(b, r, workers)
		r.check(b, ordered)
		p50, p99 := r.latencies()
		cpu, total := r.cpuText()
		fmt.Fprintf(os.Stderr, "    %-24s %6d events in %7.3fs = %7.0f events/s  p50 %8s  p99 %8s  (out of order %d, repeated %d)  %s\n",
			name, r.n, elapsed.Seconds(), float64(r.n)/elapsed.Seconds(), p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), r.violations, r.repeats,
			cpu)
		if *natsVarz != "" {
			fmt.Fprintf(os.Stderr, "      server msgs/event: in %.2f out %.2f\n", float64(r.vz.In-r.vz0.In)/float64(r.n), float64(r.vz.Out-r.vz0.Out)/float64(r.n))
		}
		if ordered {
			parts := *natsParts
			if parts == 0 {
				parts = knats.DefaultPartitions
			}
			fmt.Fprintf(os.Stderr, "      slowest 1%% of the events by partition: %v\n", r.tail(parts))
			fmt.Fprintf(os.Stderr, "      last event handled, by partition (ms after the first publish): %v\n", r.finish(parts))
			b.ReportMetric(float64(r.n)/elapsed.Seconds(), "ev/s")
			b.ReportMetric(float64(p50)/1e6, "p50-ms")
			b.ReportMetric(float64(p99)/1e6, "p99-ms")
			b.ReportMetric(total, "cpu-µs/ev")
		}
	}
}

// benchEvents builds the n CloudEvents of one run.
func benchEvents(b *testing.B, n int) []*event.Event {
	out := make([]*event.Event, n)
	for i := range out {
		e, err := cloudevents.NewEvent(context.Background(), "bench.event", benchSubject(i),
			krules.Payload{"i": i, "seq": i/natsBenchSubjects + 1}, cloudevents.EventOptions{Source: "krules-bench"})
		if err != nil {
			b.Fatal(err)
		}
		out[i] = e
	}
	return out
}

func (nb *natsBench) krules(b *testing.B, r *natsRun, workers int) time.Duration {
	ctx := context.Background()
	name := nb.streamName()
	if _, err := knats.EnsureStream(ctx, nb.js, knats.StreamConfig{Name: name, Partitions: *natsParts}); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = nb.js.DeleteStream(ctx, name)
		_ = nb.js.DeleteStream(ctx, knats.DeadLetterStream(name))
		_ = nb.js.DeleteKeyValue(ctx, knats.LeaseBucket(name, knats.DefaultGroup))
	}()
	p, err := knats.NewPublisher(ctx, nb.js, knats.PublisherConfig{Stream: name})
	if err != nil {
		b.Fatal(err)
	}
	// The first worker creates the group's consumers and lease bucket, the
	// others join it.
	first, err := spawnNats(r, "nats-worker", name, nb.prefix, 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	rest, err := spawnNats(r, "nats-worker", name, nb.prefix, 1, workers-1)
	r.procs = append(first, rest...)
	defer stopNats(r.procs)
	if err != nil {
		b.Fatal(err)
	}
	parts := *natsParts
	if parts == 0 {
		parts = knats.DefaultPartitions
	}
	waitSpread(b, r.procs, parts)
	evs := benchEvents(b, r.n)
	time.Sleep(*natsDelay)
	r.begin(b)
	start := time.Now()
	b.StartTimer()
	for i, e := range evs {
		r.published[i].Store(time.Now().UnixNano())
		if _, err := p.PublishEventAsync(ctx, name, e); err != nil {
			b.Fatal(err)
		}
	}
	nb.waitDone(b, name, r)
	b.StopTimer()
	return time.Since(start)
}

func (nb *natsBench) raw(b *testing.B, r *natsRun, consumers int) time.Duration {
	ctx := context.Background()
	name := nb.streamName()
	if _, err := nb.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}}); err != nil {
		b.Fatal(err)
	}
	defer nb.js.DeleteStream(ctx, name)
	if _, err := nb.js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1000}); err != nil {
		b.Fatal(err)
	}
	var err error
	r.procs, err = spawnNats(r, "nats-raw", name, nb.prefix, 0, consumers)
	if err != nil {
		b.Fatal(err)
	}
	defer stopNats(r.procs)
	evs := benchEvents(b, r.n)
	r.begin(b)
	start := time.Now()
	b.StartTimer()
	for i, e := range evs {
		r.published[i].Store(time.Now().UnixNano())
		// Encoded on the clock, as the krules Publisher does.
		d, err := e.MarshalJSON()
		if err != nil {
			b.Fatal(err)
		}
		// Waits for room as the krules Publisher does (on a loaded
		// machine the server acknowledges slower than this publishes).
		for {
			_, err := nb.js.PublishAsync(fmt.Sprintf("%s.%d", name, i%natsBenchSubjects), d, jetstream.WithStallWait(200*time.Millisecond))
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue
			}
			if err != nil {
				b.Fatal(err)
			}
			break
		}
	}
	nb.waitDone(b, name, r)
	b.StopTimer()
	return time.Since(start)
}

// waitSpread waits until the worker processes own all partitions between
// them and each owns its fair share (parts/len(ps), rounded down or up: the
// group has settled after the joins, so no rebalance runs on the clock),
// and prints the shares.
func waitSpread(b *testing.B, ps []*natsProc, parts int) {
	deadline := time.Now().Add(time.Minute)
	lo, hi := int64(parts/len(ps)), int64((parts+len(ps)-1)/len(ps))
	for time.Now().Before(deadline) {
		total, fair := int64(0), true
		var shares []int64
		for _, p := range ps {
			n := p.owned.Load()
			shares = append(shares, n)
			total += n
			fair = fair && n >= lo && n <= hi
		}
		if total == int64(parts) && fair {
			if len(ps) > 1 {
				fmt.Fprintf(os.Stderr, "    partitions per worker: %v\n", shares)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatal("workers did not take their fair shares of the partitions within a minute")
}

// waitDone waits for the run's last event (2 minutes at most; then it
// prints the missing events and the state of the stream's consumers).
func (nb *natsBench) waitDone(b *testing.B, stream string, r *natsRun) {
	js := nb.js
	select {
	case <-r.finished:
		return
	case <-time.After(2 * time.Minute):
	}
	var missing []int
	for i := range r.handled {
		if r.handled[i].Load() == 0 && len(missing) < 10 {
			missing = append(missing, i)
		}
	}
	var counts []string
	if nb.backend != nil {
		app := krules.New(krules.WithStorage(nb.backend))
		for _, i := range missing {
			v, err := app.Subject(benchSubject(i), krules.NoCache()).Get(context.Background(), "n")
			counts = append(counts, fmt.Sprintf("%s n=%v (%v)", benchSubject(i), v, err))
		}
	}
	err := fmt.Errorf("%s: %d of %d events handled within 2 minutes; missing (first 10) %v; their subjects' counters %v", r.name, r.count.Load(), r.n, missing, counts)
	fmt.Fprintln(os.Stderr, "krules-bench:", err) // testing.Benchmark does not print b.Fatal's text
	ctx := context.Background()
	if st, e := js.Stream(ctx, stream); e == nil {
		for names := st.ConsumerNames(ctx); ; {
			n, ok := <-names.Name()
			if !ok {
				break
			}
			if c, e := st.Consumer(ctx, n); e == nil {
				if ci, e := c.Info(ctx); e == nil {
					fmt.Fprintf(os.Stderr, "  consumer %s: pending %d ack-pending %d waiting %d redelivered %d delivered %d/%d ack floor %d/%d\n",
						n, ci.NumPending, ci.NumAckPending, ci.NumWaiting, ci.NumRedelivered, ci.Delivered.Consumer, ci.Delivered.Stream, ci.AckFloor.Consumer, ci.AckFloor.Stream)
				}
			}
		}
	}
	b.Fatal(err)
}
