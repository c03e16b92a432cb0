package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

// The child processes of the feed/*-e2e rows. The bench re-executes itself
// with these environment variables set (see startFeedChild in feed.go):
//
//	KRULES_BENCH_CHILD          feed-worker or feed-relay
//	KRULES_BENCH_FEED_STORE     redis or postgres
//	KRULES_BENCH_FEED_NAME      the Redis key prefix or PostgreSQL table (feed mode)
//	KRULES_BENCH_FEED_STREAM    the JetStream stream
//	KRULES_BENCH_CPUPROFILE     optional: write a CPU profile to this path
//
// Protocol, one text line each way: the child prints "ready" when it is
// set up (a relay: when it holds the lease), then "s <count> <owned>" when
// either changed (at most every statusEvery; count = changes handled by a
// worker, records published by a relay; owned = partitions a worker owns).
// On the line "lat" from the parent a worker answers "l" followed by the
// latencies (ns, space separated) measured since the previous "lat", and
// forgets them; a relay answers the same with its commit -> read latencies
// (see readProbe). The child exits when its stdin ends (the parent exited or
// closed it) and, on Linux, when the parent dies (Pdeathsig).
const (
	envChild       = "KRULES_BENCH_CHILD"
	envFeedStore   = "KRULES_BENCH_FEED_STORE"
	envFeedName    = "KRULES_BENCH_FEED_NAME"
	envFeedStream  = "KRULES_BENCH_FEED_STREAM"
	envCPUProfile  = "KRULES_BENCH_CPUPROFILE"
	extraCommitKey = "t" // Extra key of the writer's clock (Unix ns) just before the Set
)

// runChild runs the child named by KRULES_BENCH_CHILD and returns the exit
// code, or -1 when this process is not a child.
func runChild() int {
	role := os.Getenv(envChild)
	if role == "" {
		return -1
	}
	if err := feedChild(role); err != nil {
		fmt.Fprintf(os.Stderr, "krules-bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

// childOut serialises the child's stdout lines.
type childOut struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *childOut) line(s string) {
	o.mu.Lock()
	o.w.WriteString(s)
	o.w.WriteByte('\n')
	o.w.Flush()
	o.mu.Unlock()
}

// childStart sets up a child process of the e2e and nats rows: warnings
// only on stderr (level, which the child raises at shutdown), and the CPU
// profile the parent asked for (envCPUProfile); stop ends the profile.
func childStart() (level *slog.LevelVar, stop func(), err error) {
	level = new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	stop = func() {}
	if path := os.Getenv(envCPUProfile); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return nil, nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, nil, err
		}
		stop = func() { pprof.StopCPUProfile(); f.Close() }
	}
	return level, stop, nil
}

func feedChild(role string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Warnings while measuring; at shutdown (stdin EOF) the workers' lease
	// hand-over warnings are expected and silenced.
	level, stopProfile, err := childStart()
	if err != nil {
		return err
	}
	defer stopProfile()
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"), natsgo.RetryOnFailedConnect(false))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream := os.Getenv(envFeedStream)
	var tap *stageTap
	var tjs jetstream.JetStream = js
	if feedStagesOn() {
		tap = newStageTap()
		tjs = tapJS{js, tap}
	}
	out := &childOut{w: bufio.NewWriter(os.Stdout)}
	cmds := make(chan string)
	go func() { // stdin: commands; EOF ends the child
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
		close(cmds)
	}()

	var count, owned func() int64
	var lat func() []int64
	var runErr = make(chan error, 1)
	switch role {
	case "feed-worker":
		var mu sync.Mutex
		var lats []int64
		var handled atomic.Int64
		app := krules.New()
		app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
			now := time.Now().UnixNano()
			if t, ok := extraNanos(ev.Extra[extraCommitKey]); ok {
				mu.Lock()
				lats = append(lats, now-t)
				mu.Unlock()
			}
			if tap != nil {
				seq, _ := ev.Meta(knats.MetaSequence)
				sq, _ := seq.(uint64)
				if i, ok := extraNanos(ev.NewValue); ok {
					tap.handled(sq, i)
				}
			}
			handled.Add(1)
			return nil
		})
		w, err := knats.NewWorker(ctx, tjs, app, knats.WorkerConfig{Stream: stream})
		if err != nil {
			return err
		}
		go func() { runErr <- w.Run(ctx) }()
		count = handled.Load
		owned = func() int64 { return int64(len(w.Owned())) }
		lat = func() []int64 {
			mu.Lock()
			l := lats
			lats = nil
			mu.Unlock()
			return l
		}
		out.line("ready")
	case "feed-relay":
		store, closeStore, err := openFeedStore(ctx)
		if err != nil {
			return err
		}
		defer closeStore()
		probe := &readProbe{feedStore: store, seen: map[string]bool{}, tap: tap}
		var relayStore storage.FeedStore = probe
		if fc, ok := store.(storage.FeedCursor); ok {
			relayStore = &cursorProbe{probe, fc}
		} else if nr, ok := store.(newReader); ok {
			relayStore = &newProbe{probe, nr}
		}
		r, err := feed.NewRelay(ctx, relayStore, tjs, feed.RelayConfig{Stream: stream})
		if err != nil {
			return err
		}
		go func() { runErr <- r.Run(ctx) }()
		for deadline := time.Now().Add(30 * time.Second); !r.Active(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("relay not active after 30 s")
			}
		}
		count = func() int64 { return int64(r.Stats().Published) }
		owned = func() int64 { return 0 }
		lat = probe.take
		out.line("ready")
	default:
		return fmt.Errorf("unknown child role %q", role)
	}

	tick := time.NewTicker(statusEvery)
	defer tick.Stop()
	lastC, lastO := int64(-1), int64(-1)
	for {
		select {
		case cmd, ok := <-cmds:
			if !ok {
				level.Set(slog.LevelError + 1)
				cancel()
				<-runErr
				return nil
			}
			if cmd == "lat" {
				var b strings.Builder
				b.WriteString("l")
				for _, d := range lat() {
					b.WriteByte(' ')
					b.WriteString(strconv.FormatInt(d, 10))
				}
				out.line(b.String())
			}
			if cmd == "stg" {
				if tap == nil {
					out.line("g |")
				} else {
					out.line(tap.take())
				}
			}
		case err := <-runErr:
			return fmt.Errorf("stopped: %v", err)
		case <-tick.C:
			if c, o := count(), owned(); c != lastC || o != lastO {
				lastC, lastO = c, o
				out.line("s " + strconv.FormatInt(c, 10) + " " + strconv.FormatInt(o, 10))
			}
		}
	}
}

// readProbe is the relay child's store: it notes, for each record the
// relay reads for the first time, the time from the writer's clock in its
// Extra until ReadChanges returned it ("commit -> relay read"), so that
// the bench can tell the store's share of the end-to-end latency from
// NATS's and the workers'.
type readProbe struct {
	feedStore
	tap  *stageTap // nil: no per-stage timestamps
	mu   sync.Mutex
	seen map[string]bool // refs read since the last take (a read can return a record again while its removal runs)
	lats []int64
}

func (p *readProbe) ReadChanges(ctx context.Context, n int, wait time.Duration) ([]storage.PendingChange, error) {
	start := time.Now().UnixNano()
	recs, err := p.feedStore.ReadChanges(ctx, n, wait)
	if p.tap != nil {
		p.tap.readDone(start, recs)
	}
	p.note(recs, true)
	return recs, err
}

// cursorProbe is readProbe over a store with a cursor (storage.FeedCursor),
// so that the relay keeps using it.
type cursorProbe struct {
	*readProbe
	fc storage.FeedCursor
}

func (p *cursorProbe) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	start := time.Now().UnixNano()
	recs, err := p.fc.ReadChangesAfter(ctx, after, n, wait)
	if p.tap != nil {
		p.tap.readDone(start, recs)
	}
	p.note(recs, false) // a cursor reads each record once
	return recs, err
}

// newReader is a store whose reads can leave out what they returned
// before (postgres.Backend.ReadNewChanges: the relay's pipeline over it).
type newReader interface {
	ReadNewChanges(ctx context.Context, fresh bool, n int, wait time.Duration) ([]storage.PendingChange, error)
}

// newProbe is readProbe over a newReader, so that the relay keeps using it.
type newProbe struct {
	*readProbe
	nr newReader
}

func (p *newProbe) ReadNewChanges(ctx context.Context, fresh bool, n int, wait time.Duration) ([]storage.PendingChange, error) {
	start := time.Now().UnixNano()
	recs, err := p.nr.ReadNewChanges(ctx, fresh, n, wait)
	if p.tap != nil {
		p.tap.readDone(start, recs)
	}
	p.note(recs, false) // each record once (until a fresh read)
	return recs, err
}

// note records the commit -> read latency of the records read for the
// first time (again: recs may hold records read before).
func (p *readProbe) note(recs []storage.PendingChange, again bool) {
	now := time.Now().UnixNano()
	p.mu.Lock()
	for _, r := range recs {
		if again {
			if p.seen[r.Ref] {
				continue
			}
			p.seen[r.Ref] = true
		}
		if t, ok := extraNanos(r.Change.Extra[extraCommitKey]); ok {
			p.lats = append(p.lats, now-t)
		}
	}
	p.mu.Unlock()
}

func (p *readProbe) take() []int64 {
	p.mu.Lock()
	l := p.lats
	p.lats = nil
	clear(p.seen) // take is called between runs, when nothing is in flight
	p.mu.Unlock()
	return l
}

// statusEvery is how often a child reports a changed count: often enough
// for the parent's end-of-run wait (the wall time of a row of several
// seconds is overstated by at most this), rarely enough that the reports
// cost no visible CPU per change (at 2 ms they were ~7 % of a worker's).
const statusEvery = 10 * time.Millisecond

// extraNanos reads the writer's clock from a decoded Extra value.
func extraNanos(v any) (int64, bool) {
	switch t := v.(type) {
	case int64:
		return t, true
	case float64:
		return int64(t), true
	case json.Number:
		n, err := t.Int64()
		return n, err == nil
	}
	return 0, false
}

// openFeedStore opens the feed-mode backend named by the environment.
func openFeedStore(ctx context.Context) (feedStore, func(), error) {
	name := os.Getenv(envFeedName)
	switch os.Getenv(envFeedStore) {
	case "redis":
		b, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: name, ChangeFeed: true})
		if err != nil {
			return nil, nil, err
		}
		return b, func() { b.Close() }, nil
	case "postgres":
		b, err := postgres.Open(ctx, os.Getenv("KRULES_POSTGRES_URL"), postgres.Config{Table: name, ChangeFeed: true})
		if err != nil {
			return nil, nil, err
		}
		return b, func() { b.Close() }, nil
	}
	return nil, nil, fmt.Errorf("%s: want redis or postgres", envFeedStore)
}
