package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

// Change-feed rows: the cost of writing the change record in the same
// atomic operation as the data. redis/set-feed and postgres/set-feed are a
// NoCache Set of a changing value on a backend in feed mode (the record is
// written, no relay runs); the baseline is the same Set with the feed off
// (the redis/set and postgres/set rows), on the same server in the same
// run. Keys and tables of this run are removed afterwards.
func init() {
	register(Group{
		Name:    "feed-redis",
		Enabled: func() bool { return os.Getenv("KRULES_REDIS_URL") != "" },
		Setup:   feedRedisSetup,
	})
	register(Group{
		Name:    "feed-postgres",
		Enabled: func() bool { return os.Getenv("KRULES_POSTGRES_URL") != "" },
		Setup:   feedPostgresSetup,
	})
}

// setOp is a NoCache Set of a changing value, so every call is an
// effective change (and, in feed mode, writes a record).
func setOp(app *krules.App) func(i int) error {
	ctx := context.Background()
	s := app.Subject("k-set", krules.NoCache())
	return func(i int) error {
		_, _, err := s.Set(ctx, "n", i)
		return err
	}
}

func feedRedisSetup() ([]Row, func(), error) {
	ctx := context.Background()
	url := os.Getenv("KRULES_REDIS_URL")
	prefix := fmt.Sprintf("krules-bench-feed-%d:", os.Getpid())
	plain, err := redis.Open(ctx, url, redis.Config{Prefix: prefix + "plain:"})
	if err != nil {
		return nil, nil, err
	}
	fed, err := redis.Open(ctx, url, redis.Config{Prefix: prefix + "feed:", ChangeFeed: true})
	if err != nil {
		plain.Close()
		return nil, nil, err
	}
	done := func() {
		c := plain.Client()
		for _, p := range []string{prefix + "plain:", prefix + "feed:"} {
			c.Del(ctx, "s:"+p+"k-set", "f:"+p+"changes", "f:"+p+"seq", "f:"+p+"lease")
		}
		plain.Close()
		fed.Close()
	}
	rows := []Row{{
		Name:     "redis/set-feed",
		Op:       setOp(krules.New(krules.WithStorage(fed))),
		Baseline: "redis/set (feed off)",
		BaseOp:   setOp(krules.New(krules.WithStorage(plain))),
	}}
	return rows, done, nil
}

func feedPostgresSetup() ([]Row, func(), error) {
	ctx := context.Background()
	url := os.Getenv("KRULES_POSTGRES_URL")
	table := fmt.Sprintf("krules_bench_feed_%d", os.Getpid())
	plain, err := postgres.Open(ctx, url, postgres.Config{Table: table + "_plain"})
	if err != nil {
		return nil, nil, err
	}
	fed, err := postgres.Open(ctx, url, postgres.Config{Table: table, ChangeFeed: true})
	if err != nil {
		plain.Close()
		return nil, nil, err
	}
	done := func() {
		for _, t := range []string{table + "_plain", table, table + "_feed", table + "_feed_seq"} {
			if _, err := plain.Pool().Exec(ctx, `DROP TABLE IF EXISTS "`+t+`"`); err != nil {
				fmt.Fprintf(os.Stderr, "krules-bench: postgres cleanup: %v\n", err)
			}
		}
		plain.Close()
		fed.Close()
	}
	rows := []Row{{
		Name:     "postgres/set-feed",
		Op:       setOp(krules.New(krules.WithStorage(fed))),
		Baseline: "postgres/set (feed off)",
		BaseOp:   setOp(krules.New(krules.WithStorage(plain))),
	}}
	return rows, done, nil
}

// End-to-end rows: a change committed by a NoCache Set in this (the
// writer) process until a handler ran in another process. Per store, a
// relay process (feed.NewRelay, the realistic deployment: the relay is not
// in the writer) and three worker processes (each its own App and
// knats.NewWorker on the stream) are the bench itself re-executed (see
// feedchild.go); they die with it. The writer puts its clock (Unix ns, just
// before the Set) in the write's Extra; a worker's handler subtracts it
// from its own clock (same machine, one clock) and the bench collects the
// latencies at the end of each run. Two rows per store:
//
//	feed/<store>-e2e      the writer goroutines as fast as they can over 200
//	                      subjects: changes/s = 1e9/ns_per_op (p99 here is queueing)
//	feed/<store>-e2e-1k   the same writers paced to 1,000 changes/s: the latency
//
// The writers are goroutines of one App, as a user's request handlers
// would be: 8 by default, KRULES_BENCH_FEED_WRITERS=<n> for another count
// (on PostgreSQL the writers' pool gets pool_max_conns = the writer count
// unless KRULES_POSTGRES_URL sets it; pgxpool's default is max(4,
// GOMAXPROCS) connections).
//
// Each row reports p50-ms, p99-ms and changes/s (b.ReportMetric) and prints
// the CPU per change of each process to stderr. With
// KRULES_BENCH_FEED_PROFILE=<dir> the writer and every child write a CPU
// profile there. Needs KRULES_NATS_URL.
//
// One group per store, so that the processes of one store are gone before
// the rows of the next run.
func init() {
	for _, kind := range []string{"redis", "postgres"} {
		env := "KRULES_" + strings.ToUpper(kind) + "_URL"
		register(Group{
			Name: "feed-e2e-" + kind,
			Enabled: func() bool {
				return os.Getenv("KRULES_NATS_URL") != "" && os.Getenv(env) != ""
			},
			Setup: func() ([]Row, func(), error) { return feedE2ESetup(kind) },
		})
	}
}

// e2eRate is the writers' pace of the feed/*-e2e-1k rows (changes/s).
const e2eRate = 1000

func feedE2ESetup(kind string) ([]Row, func(), error) {
	ctx := context.Background()
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"), natsgo.RetryOnFailedConnect(false))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	profDir := os.Getenv("KRULES_BENCH_FEED_PROFILE")
	var cleanups []func()
	done := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		nc.Close()
	}
	if profDir != "" {
		f, err := os.Create(filepath.Join(profDir, kind+"-writer.pprof"))
		if err == nil && pprof.StartCPUProfile(f) == nil {
			cleanups = append(cleanups, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	var rows []Row
	add := func(name string, b feedStore, drop func()) {
		stream := fmt.Sprintf("krules_bench_feed_%s_%d", kind, os.Getpid())
		cleanups = append(cleanups, drop)
		if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: stream}); err != nil {
			fmt.Fprintf(os.Stderr, "krules-bench: feed/%s-e2e: %v\n", kind, err)
			return
		}
		cleanups = append(cleanups, func() {
			_ = js.DeleteStream(ctx, stream)
			_ = js.DeleteStream(ctx, knats.DeadLetterStream(stream))
			_ = js.DeleteKeyValue(ctx, knats.LeaseBucket(stream, knats.DefaultGroup))
		})
		e := &e2e{kind: kind, name: name, stream: stream, store: b, profDir: profDir,
			writer: krules.New(krules.WithStorage(b))}
		cleanups = append(cleanups, e.stop)
		rows = append(rows,
			Row{Name: "feed/" + kind + "-e2e", Run: e.run(0), Benchtime: 3 * time.Second},
			Row{Name: "feed/" + kind + "-e2e-1k", Run: e.run(e2eRate), Benchtime: e2eWindow()})
	}
	switch kind {
	case "redis":
		prefix := fmt.Sprintf("krules-bench-e2e-%d:", os.Getpid())
		b, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: prefix, ChangeFeed: true})
		if err != nil {
			done()
			return nil, nil, err
		}
		add(prefix, b, func() {
			c := b.Client()
			it := c.Scan(ctx, 0, "s:"+prefix+"*", 1000).Iterator()
			for it.Next(ctx) {
				c.Del(ctx, it.Val())
			}
			c.Del(ctx, "f:"+prefix+"changes", "f:"+prefix+"seq", "f:"+prefix+"lease")
			b.Close()
		})
	case "postgres":
		table := fmt.Sprintf("krules_bench_e2e_%d", os.Getpid())
		b, err := postgres.Open(ctx, e2ePostgresURL(), postgres.Config{Table: table, ChangeFeed: true})
		if err != nil {
			done()
			return nil, nil, err
		}
		add(table, b, func() {
			for _, t := range []string{table, table + "_feed", table + "_feed_seq"} {
				_, _ = b.Pool().Exec(ctx, `DROP TABLE IF EXISTS "`+t+`"`)
			}
			b.Close()
		})
	}
	return rows, done, nil
}

type feedStore interface {
	storage.Backend
	storage.FeedStore
}

// e2e is the processes of one store's end-to-end rows, started at the
// first run of either row.
type e2e struct {
	kind, name, stream, profDir string
	store                       feedStore
	writer                      *krules.App

	once    sync.Once
	err     error
	workers []*feedProc
	relay   *feedProc
	counter atomic.Int64
	setMu   sync.Mutex
	setLats []int64            // durations of the writers' Sets (ns) in the current run
	commits map[int64][2]int64 // with stages: value -> writer's clock before and after its Set
}

// feedProc is a child process (feedchild.go) seen from the bench.
type feedProc struct {
	role  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan struct{}
	lat   chan []int64
	stg   chan string // "g" lines (feedstages.go)
	exit  chan struct{}
	count atomic.Int64 // last "s" line: handled (worker) or published (relay)
	owned atomic.Int64
}

func (e *e2e) start() error {
	for i := range 3 {
		p, err := e.spawn("feed-worker", i)
		if err != nil {
			return err
		}
		e.workers = append(e.workers, p)
	}
	// All partitions owned, each worker some, before the relay publishes.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		total, each := int64(0), true
		for _, w := range e.workers {
			n := w.owned.Load()
			total += n
			each = each && n > 0
		}
		if total == knats.DefaultPartitions && each {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workers own %d of %d partitions after a minute", total, knats.DefaultPartitions)
		}
	}
	p, err := e.spawn("feed-relay", 0)
	if err != nil {
		return err
	}
	e.relay = p
	return nil
}

// spawn starts the bench binary as a child and waits for its "ready".
func (e *e2e) spawn(role string, i int) (*feedProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envChild+"="+role, envFeedStore+"="+e.kind,
		envFeedName+"="+e.name, envFeedStream+"="+e.stream)
	if e.profDir != "" {
		cmd.Env = append(cmd.Env, envCPUProfile+"="+filepath.Join(e.profDir, fmt.Sprintf("%s-%s-%d.pprof", e.kind, role, i)))
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = childAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &feedProc{role: role, cmd: cmd, stdin: stdin, ready: make(chan struct{}),
		lat: make(chan []int64, 1), stg: make(chan string, 1), exit: make(chan struct{})}
	go p.read(stdout)
	select {
	case <-p.ready:
		return p, nil
	case <-p.exit:
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s child exited before ready", role)
	case <-time.After(time.Minute):
		p.kill()
		return nil, fmt.Errorf("%s child not ready after a minute", role)
	}
}

func (p *feedProc) read(r io.Reader) {
	defer close(p.exit)
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "ready":
			close(p.ready)
		case strings.HasPrefix(line, "s "):
			f := strings.Fields(line)
			if len(f) == 3 {
				c, _ := strconv.ParseInt(f[1], 10, 64)
				o, _ := strconv.ParseInt(f[2], 10, 64)
				p.count.Store(c)
				p.owned.Store(o)
			}
		case strings.HasPrefix(line, "g "):
			p.stg <- line
		case line == "l" || strings.HasPrefix(line, "l "):
			f := strings.Fields(line)[1:]
			l := make([]int64, 0, len(f))
			for _, s := range f {
				if n, err := strconv.ParseInt(s, 10, 64); err == nil {
					l = append(l, n)
				}
			}
			p.lat <- l
		}
	}
}

// latencies asks a worker for the latencies since the last call.
func (p *feedProc) latencies() ([]int64, error) {
	if _, err := io.WriteString(p.stdin, "lat\n"); err != nil {
		return nil, err
	}
	select {
	case l := <-p.lat:
		return l, nil
	case <-p.exit:
		return nil, fmt.Errorf("%s child exited", p.role)
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("%s child: no latencies after 30 s", p.role)
	}
}

// stages asks a child for its per-stage records since the last call.
func (p *feedProc) stages() (string, error) {
	if _, err := io.WriteString(p.stdin, "stg\n"); err != nil {
		return "", err
	}
	select {
	case l := <-p.stg:
		return l, nil
	case <-p.exit:
		return "", fmt.Errorf("%s child exited", p.role)
	case <-time.After(30 * time.Second):
		return "", fmt.Errorf("%s child: no stages after 30 s", p.role)
	}
}

// kill ends the child: stdin EOF (a graceful exit, which writes its CPU
// profile), SIGKILL after 10 s.
func (p *feedProc) kill() {
	_ = p.stdin.Close()
	select {
	case <-p.exit:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
	}
	_ = p.cmd.Wait()
}

func (e *e2e) stop() {
	if e.relay != nil {
		e.relay.kill()
	}
	for _, w := range e.workers {
		w.kill()
	}
}

func (e *e2e) handled() int64 {
	var n int64
	for _, w := range e.workers {
		n += w.count.Load()
	}
	return n
}

// cpu is the CPU time of the writer, the relay, the workers and the servers.
func (e *e2e) cpu() (writer, relay, workers time.Duration, srv cpuSample) {
	srv = takeCPU()
	relay = procCPU(e.relay.cmd.Process.Pid)
	for _, w := range e.workers {
		workers += procCPU(w.cmd.Process.Pid)
	}
	return srv.self, relay, workers, srv
}

// run measures b.N changes; rate 0: as fast as the writers go, else paced
// to rate changes/s.
func (e *e2e) run(rate int) func(b *testing.B) {
	return func(b *testing.B) {
		e.once.Do(func() {
			if e.err = e.start(); e.err == nil {
				e.err = e.warmUp()
			}
		})
		if e.err != nil {
			b.Fatal(e.err)
		}
		for _, w := range append([]*feedProc{e.relay}, e.workers...) { // forget the latencies of earlier runs
			if _, err := w.latencies(); err != nil {
				b.Fatal(err)
			}
		}
		stages := feedStagesOn()
		if stages {
			for _, w := range append([]*feedProc{e.relay}, e.workers...) {
				if _, err := w.stages(); err != nil {
					b.Fatal(err)
				}
			}
		}
		e.setMu.Lock()
		e.setLats = e.setLats[:0]
		if stages {
			e.commits = map[int64][2]int64{}
		} else {
			e.commits = nil
		}
		e.setMu.Unlock()
		w0, r0, k0, s0 := e.cpu()
		start := e.handled()
		b.ResetTimer()
		t0 := time.Now()
		n := int64(b.N)
		r0pub := e.relay.count.Load()
		if err := e.write(n, rate); err != nil {
			b.Fatal(err)
		}
		// Where the backlog is when the writers are done: records not yet
		// published by the relay, events not yet handled by the workers.
		lagRelay := n - (e.relay.count.Load() - r0pub)
		lagWorkers := n - (e.handled() - start) - lagRelay
		if err := e.wait(start + n); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		wall := time.Since(t0)
		w1, r1, k1, s1 := e.cpu()
		var all []int64
		for _, w := range e.workers {
			l, err := w.latencies()
			if err != nil {
				b.Fatal(err)
			}
			all = append(all, l...)
		}
		if len(all) == 0 {
			b.Fatal("no latencies reported")
		}
		read, err := e.relay.latencies()
		if err != nil {
			b.Fatal(err)
		}
		if stages {
			run := &stageRun{writer: e.commits, relay: map[int64][4]int64{}, worker: map[int64][3]int64{},
				wproc: map[int64]int{}, gcWrk: make([][]int64, len(e.workers))}
			for k, w := range append([]*feedProc{e.relay}, e.workers...) {
				l, err := w.stages()
				if err != nil {
					b.Fatal(err)
				}
				parseStages(l, k-1, run)
			}
			run.report(fmt.Sprintf("feed/%s-e2e rate=%d", e.kind, rate))
		}
		slices.Sort(all)
		p50 := time.Duration(all[len(all)/2])
		p99 := time.Duration(all[len(all)*99/100])
		e.setMu.Lock()
		setQ := quantiles(e.setLats)
		e.setMu.Unlock()
		readQ := quantiles(read)
		b.ReportMetric(float64(p50)/1e6, "p50-ms")
		b.ReportMetric(float64(p99)/1e6, "p99-ms")
		b.ReportMetric(float64(n)/wall.Seconds(), "changes/s")
		if n >= 1000 {
			us := func(d time.Duration) string {
				return strconv.FormatFloat(float64(d.Microseconds())/float64(n), 'f', 1, 64)
			}
			srv := s1.sub(s0)
			db := "redis " + us(srv.redis)
			if e.kind == "postgres" {
				db = "pg " + us(srv.postgres)
			}
			fmt.Fprintf(os.Stderr, "  feed/%s-e2e rate=%d writers=%d: %d changes in %v (%.0f/s), p50 %v, p99 %v, max %v (writer's Set: %s; commit -> relay read: %s); backlog at writers' end: relay %d, workers %d; cpu/change µs: writer %s relay %s workers %s nats %s %s\n",
				e.kind, rate, e2eWriters(), n, wall.Round(time.Millisecond), float64(n)/wall.Seconds(), p50, p99, time.Duration(all[len(all)-1]), setQ, readQ, lagRelay, lagWorkers,
				us(w1-w0), us(r1-r0), us(k1-k0), us(srv.nats), db)
		}
	}
}

// quantiles sorts l (ns) and formats its p50 and p99 ("-" when empty).
func quantiles(l []int64) string {
	if len(l) == 0 {
		return "-"
	}
	slices.Sort(l)
	r := func(v int64) time.Duration { return time.Duration(v).Round(10 * time.Microsecond) }
	return fmt.Sprintf("p50 %v p99 %v", r(l[len(l)/2]), r(l[len(l)*99/100]))
}

// warmUp writes every subject once and waits for the workers.
func (e *e2e) warmUp() error {
	start := e.handled()
	if err := e.write(400, 0); err != nil {
		return err
	}
	return e.wait(start + 400)
}

// write makes n changes over 200 subjects with e2eWriters() goroutines,
// paced to rate changes/s when rate > 0.
func (e *e2e) write(n int64, rate int) error {
	var wg sync.WaitGroup
	var next atomic.Int64
	var firstErr atomic.Value
	t0 := time.Now()
	for range e2eWriters() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for {
				k := next.Add(1)
				if k > n {
					return
				}
				if rate > 0 {
					if d := time.Until(t0.Add(time.Duration(k-1) * time.Second / time.Duration(rate))); d > 0 {
						time.Sleep(d)
					}
				}
				i := e.counter.Add(1)
				s := e.writer.Subject(fmt.Sprintf("e2e-%03d", i%200), krules.NoCache())
				t := time.Now()
				if _, _, err := s.Set(ctx, "v", i, krules.WithExtra(krules.Extra{extraCommitKey: t.UnixNano()})); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				end := time.Now()
				d := int64(end.Sub(t))
				e.setMu.Lock()
				if e.commits != nil {
					e.commits[i] = [2]int64{t.UnixNano(), end.UnixNano()}
				}
				e.setLats = append(e.setLats, d)
				e.setMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// e2ePostgresURL is KRULES_POSTGRES_URL with pool_max_conns set to the
// writer count (e2eWriters) when the URL does not set it: pgxpool's
// default (max(4, GOMAXPROCS)) would leave half of the 8 default writers
// waiting for a connection (1,048-1,426 changes/s on 4 connections against
// 2,518-2,561 on 8, load 8.5-9.6).
func e2ePostgresURL() string {
	raw := os.Getenv("KRULES_POSTGRES_URL")
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return raw
	}
	q := u.Query()
	if q.Has("pool_max_conns") {
		return raw
	}
	q.Set("pool_max_conns", strconv.Itoa(e2eWriters()))
	u.RawQuery = q.Encode()
	return u.String()
}

// e2eWindow is the measured time of the feed/*-e2e-1k rows:
// KRULES_BENCH_FEED_1K_SECONDS, default 3 s (3,000 samples, in which one
// hiccup of a few tens of ms moves p99; 10 s is steadier).
func e2eWindow() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("KRULES_BENCH_FEED_1K_SECONDS")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 3 * time.Second
}

// e2eWriters is the number of writer goroutines: KRULES_BENCH_FEED_WRITERS,
// default 8.
func e2eWriters() int {
	if n, err := strconv.Atoi(os.Getenv("KRULES_BENCH_FEED_WRITERS")); err == nil && n > 0 {
		return n
	}
	return 8
}

// wait returns when the workers handled want changes in all.
func (e *e2e) wait(want int64) error {
	for deadline := time.Now().Add(time.Minute); e.handled() < want; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d changes handled after a minute (relay published %d)", e.handled(), want, e.relay.count.Load())
		}
	}
	return nil
}

// procCPU is the CPU time (user + system) of process pid so far, from
// /proc (zero elsewhere).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	st := string(b)
	i := strings.LastIndexByte(st, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(st[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	sy, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+sy) * (time.Second / 100)
}
