package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

// The worker processes of the nats/* rows. The bench re-executes itself
// with these environment variables set (see spawnNats):
//
//	KRULES_BENCH_CHILD          nats-worker (a transport/nats Worker) or
//	                            nats-raw (a raw pull consumer reader)
//	KRULES_BENCH_NATS_STREAM    the JetStream stream (nats-raw: its consumer "raw")
//	KRULES_BENCH_NATS_PREFIX    the Redis key prefix of the handlers' writes
//	KRULES_BENCH_CPUPROFILE     optional: write a CPU profile to this path
//
// Protocol, one text line each way: the child prints "ready" when it is
// set up, "o <owned>" when the number of partitions it owns changed
// (nats-worker, polled every 10 ms) and, at most every 2 ms, "h" followed
// by "<i> <unix ns>" pairs: the events (by index i of the run) its handler
// finished since the previous line, with the time each one finished. The
// parent checks the order per subject and the latencies from these. The
// child exits when its stdin ends (the parent exited or closed it: a
// graceful shutdown) and, on Linux, when the parent dies (Pdeathsig).
const (
	envNatsStream = "KRULES_BENCH_NATS_STREAM"
	envNatsPrefix = "KRULES_BENCH_NATS_PREFIX"
)

// runNatsChild runs the nats child named by KRULES_BENCH_CHILD and returns
// the exit code, or -1 when this process is not a nats child.
func runNatsChild() int {
	role := os.Getenv(envChild)
	if role != "nats-worker" && role != "nats-raw" {
		return -1
	}
	if err := natsChild(role); err != nil {
		fmt.Fprintf(os.Stderr, "krules-bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

// handledLog batches the "h" lines of a child.
type handledLog struct {
	mu  sync.Mutex
	buf []byte
}

func (h *handledLog) add(i int64, t int64) {
	h.mu.Lock()
	if len(h.buf) == 0 {
		h.buf = append(h.buf, 'h')
	}
	h.buf = append(h.buf, ' ')
	h.buf = strconv.AppendInt(h.buf, i, 10)
	h.buf = append(h.buf, ' ')
	h.buf = strconv.AppendInt(h.buf, t, 10)
	h.mu.Unlock()
}

// take returns the pending line (nil when none) and starts a new one in
// spare, a line already written (never the one returned).
func (h *handledLog) take(spare []byte) []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := h.buf
	if len(b) == 0 {
		return nil // keep h.buf: spare must not become it while it is spare
	}
	h.buf = spare[:0]
	return b
}

func natsChild(role string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	level, stopProfile, err := childStart()
	if err != nil {
		return err
	}
	defer stopProfile()
	stream := os.Getenv(envNatsStream)
	backend, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv(envNatsPrefix)})
	if err != nil {
		return err
	}
	defer backend.Close()
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"), natsgo.RetryOnFailedConnect(false))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	out := &childOut{w: bufio.NewWriterSize(os.Stdout, 1<<16)} // feedchild.go's line writer
	line := func(b []byte) { out.line(string(b)) }
	eof := make(chan struct{})
	go func() { // stdin EOF ends the child
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	log := &handledLog{}
	runErr := make(chan error, 1)
	owned := func() int { return 0 }
	var stop func()
	switch role {
	case "nats-worker":
		app := krules.New(krules.WithStorage(backend))
		app.On("bench.event").Do(func(ctx context.Context, ev *krules.Event) error {
			if _, _, err := ev.Subject.Set(ctx, "n", krules.Inc(1), krules.NoCache()); err != nil {
				return err
			}
			i, _ := ev.Payload()["i"].(int64)
			log.add(i, time.Now().UnixNano())
			return nil
		})
		w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{Stream: stream})
		if err != nil {
			return err
		}
		go func() { runErr <- w.Run(ctx) }()
		owned = func() int { return len(w.Owned()) }
		stop = func() { cancel(); <-runErr }
	case "nats-raw":
		c, err := js.Consumer(ctx, stream, "raw")
		if err != nil {
			return err
		}
		it, err := c.Messages()
		if err != nil {
			return err
		}
		rc := backend.Client()
		go func() {
			for {
				m, err := it.Next()
				if err != nil {
					runErr <- nil
					return
				}
				var e event.Event
				if err := e.UnmarshalJSON(m.Data()); err != nil {
					continue
				}
				var pl struct{ I, Seq int64 }
				_ = e.DataAs(&pl)
				rc.HIncrBy(ctx, backend.Key(e.Subject()), "pn", 1)
				_ = m.Ack()
				log.add(pl.I, time.Now().UnixNano())
			}
		}()
		stop = func() { it.Stop(); <-runErr }
	}
	line([]byte("ready"))
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	lastOwned, polls := -1, 0
	var spare []byte
	flush := func() {
		if b := log.take(spare); b != nil {
			line(b)
			spare = b
		}
	}
	for {
		select {
		case <-eof:
			level.Set(slog.LevelError + 1) // lease hand-over warnings at shutdown are expected
			stop()
			flush()
			return nil
		case err := <-runErr:
			return fmt.Errorf("stopped: %v", err)
		case <-tick.C:
			flush()
			if polls++; polls%5 == 0 {
				if o := owned(); o != lastOwned {
					lastOwned = o
					line([]byte("o " + strconv.Itoa(o)))
				}
			}
		}
	}
}

// natsProc is a nats child process seen from the bench.
type natsProc struct {
	role  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan struct{}
	exit  chan struct{}
	owned atomic.Int64
	cpu0  time.Duration // CPU used when the run's first event was published
	cpu   time.Duration // and when its last was handled
	sys0  int64         // read+write system calls then (procSyscalls)
	sys   int64
}

// spawnNats starts n children of the role on the stream, each reporting
// handled events to r, and waits for their "ready". With -nats-cpuprofile
// child k (counting from first) writes a profile to <prefix><row>.w<k>.prof.
func spawnNats(r *natsRun, role, stream, redisPrefix string, first, n int) ([]*natsProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var ps []*natsProc
	for k := first; k < first+n; k++ {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), envChild+"="+role, envNatsStream+"="+stream, envNatsPrefix+"="+redisPrefix)
		if *natsProfile != "" {
			cmd.Env = append(cmd.Env, envCPUProfile+"="+*natsProfile+strings.ReplaceAll(r.name, "/", "_")+".w"+strconv.Itoa(k)+".prof")
		}
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = childAttr()
		stdin, err := cmd.StdinPipe()
		if err != nil {
			stopNats(ps)
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			stopNats(ps)
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			stopNats(ps)
			return nil, err
		}
		p := &natsProc{role: role, cmd: cmd, stdin: stdin, ready: make(chan struct{}), exit: make(chan struct{})}
		ps = append(ps, p)
		go p.read(stdout, r)
	}
	for _, p := range ps {
		select {
		case <-p.ready:
		case <-p.exit:
			stopNats(ps)
			return nil, fmt.Errorf("%s child exited before ready", role)
		case <-time.After(time.Minute):
			stopNats(ps)
			return nil, fmt.Errorf("%s child not ready after a minute", role)
		}
	}
	return ps, nil
}

func (p *natsProc) read(rd io.Reader, r *natsRun) {
	defer close(p.exit)
	br := bufio.NewReaderSize(rd, 1<<16)
	for {
		// Not ReadSlice: an "h" line outgrows any buffer when the child's
		// reporting goroutine was starved for a while.
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		line = line[:len(line)-1]
		switch {
		case string(line) == "ready":
			close(p.ready)
		case len(line) > 2 && line[0] == 'o' && line[1] == ' ':
			o, _ := strconv.ParseInt(string(line[2:]), 10, 64)
			p.owned.Store(o)
		case len(line) > 2 && line[0] == 'h' && line[1] == ' ':
			f := strings.Fields(string(line[2:]))
			for j := 0; j+1 < len(f); j += 2 {
				i, err1 := strconv.Atoi(f[j])
				t, err2 := strconv.ParseInt(f[j+1], 10, 64)
				if err1 == nil && err2 == nil && i >= 0 && i < r.n {
					r.handledAt(i, t)
				}
			}
		}
	}
}

// stopNats ends the children: stdin EOF (a graceful shutdown, which also
// writes their CPU profiles), SIGKILL after 30 s; all at once.
func stopNats(ps []*natsProc) {
	for _, p := range ps {
		_ = p.stdin.Close()
	}
	for _, p := range ps {
		select {
		case <-p.exit:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
		}
		_ = p.cmd.Wait()
	}
}
