package nats_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

// Environment of a worker process started by the end-to-end tests.
const (
	envWorker     = "KRULES_NATS_E2E_WORKER" // "1" in a worker process
	envStream     = "KRULES_NATS_E2E_STREAM"
	envPrefix     = "KRULES_NATS_E2E_PREFIX"
	envIdempotent = "KRULES_NATS_E2E_IDEMPOTENT"
	envAckWait    = "KRULES_NATS_E2E_ACKWAIT"
	envStallAfter = "KRULES_NATS_E2E_STALL_AFTER" // stall between commit and ack after this many events
)

func TestMain(m *testing.M) {
	if os.Getenv(envWorker) == "1" {
		if err := workerProcess(); err != nil {
			fmt.Fprintln(os.Stderr, "worker process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// workerProcess is one member of the worker group: a krules App on the
// shared Redis whose handler counts events per subject (atomic Inc) and
// appends the per-subject sequence it saw. It prints "ready" once
// consuming, and its Stats as JSON when stopped by SIGTERM.
func workerProcess() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	backend, err := redis.Open(ctx, os.Getenv("KRULES_REDIS_URL"), redis.Config{Prefix: os.Getenv(envPrefix)})
	if err != nil {
		return err
	}
	defer backend.Close()
	idem := os.Getenv(envIdempotent) == "1"
	app := krules.New(krules.WithStorage(backend))
	app.On("e2e.event").Do(func(ctx context.Context, ev *krules.Event) error {
		seq, ok := ev.Payload()["seq"].(int64)
		if !ok {
			return fmt.Errorf("payload seq %v", ev.Payload()["seq"])
		}
		var opts []krules.SetOption
		if !idem {
			// Straight to Redis, atomically, one round trip each.
			opts = append(opts, krules.NoCache())
		} // else: in the subject's cache, committed by the worker with the idempotency record
		if _, _, err := ev.Subject.Set(ctx, "count", krules.Inc(1), opts...); err != nil {
			return err
		}
		_, _, err := ev.Subject.Set(ctx, "seen", krules.Append(seq), opts...)
		return err
	})
	nc, err := knats.Connect(os.Getenv("KRULES_NATS_URL"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ackWait, _ := time.ParseDuration(os.Getenv(envAckWait))
	w, err := knats.NewWorker(ctx, js, app, knats.WorkerConfig{
		Stream: os.Getenv(envStream), Idempotent: idem, AckWait: ackWait,
		Backoff: []time.Duration{50 * time.Millisecond}, MaxDeliver: 1000,
	})
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(os.Getenv(envStallAfter)); err == nil {
		var mu sync.Mutex
		count, stalled := 0, false
		knats.SetTestHookBeforeAck(func() {
			mu.Lock()
			count++
			if count <= n {
				mu.Unlock()
				return
			}
			if !stalled {
				stalled = true
				fmt.Println("stalled")
			}
			mu.Unlock()
			select {} // committed, never acked: wait for SIGKILL
		})
	}
	go func() {
		// Ready once this worker owns partitions of the group.
		for len(w.Owned()) == 0 && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Println("ready")
	}()
	runErr := w.Run(ctx)
	b, _ := json.Marshal(w.Stats())
	fmt.Println(string(b))
	return runErr
}

type proc struct {
	cmd     *exec.Cmd
	out     *bufio.Scanner
	stats   knats.Stats
	wait    chan error
	stalled chan struct{}
}

func startProcs(t *testing.T, n int, env []string, extra map[int][]string) []*proc {
	t.Helper()
	var ps []*proc
	for i := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(append(os.Environ(), env...), extra[i]...)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &proc{cmd: cmd, out: bufio.NewScanner(stdout), wait: make(chan error, 1), stalled: make(chan struct{})}
		ps = append(ps, p)
		t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	}
	for i, p := range ps {
		if !p.out.Scan() || p.out.Text() != "ready" {
			t.Fatalf("worker %d did not start: %q %v", i, p.out.Text(), p.out.Err())
		}
	}
	for _, p := range ps {
		go func() {
			var last string
			for p.out.Scan() {
				last = p.out.Text()
				if last == "stalled" {
					close(p.stalled)
				}
			}
			if strings.HasPrefix(last, "{") {
				_ = json.Unmarshal([]byte(last), &p.stats)
			}
			p.wait <- p.cmd.Wait()
		}()
	}
	return ps
}

type e2eCase struct {
	kill       bool
	idempotent bool
}

func TestEndToEndThreeWorkerProcesses(t *testing.T) {
	t.Parallel()
	// The cases run in parallel: each has its own stream and key prefix,
	// and most of a case's time is the AckWait before the killed worker's
	// event comes again.
	t.Run("plain", func(t *testing.T) { t.Parallel(); runE2E(t, e2eCase{}) })
	t.Run("kill", func(t *testing.T) { t.Parallel(); runE2E(t, e2eCase{kill: true}) })
	t.Run("kill-idempotent", func(t *testing.T) { t.Parallel(); runE2E(t, e2eCase{kill: true, idempotent: true}) })
}

func runE2E(t *testing.T, c e2eCase) {
	redisURL := testenv.RedisURL(t)
	_, js := connect(t)
	subjects, per := 100, 40 // 4,000 events (krules-bench runs 20,000)
	if testing.Short() {
		subjects, per = 40, 25
	}
	total := subjects * per
	stream := newStream(t, js, 32)
	prefix := testenv.Unique("natse2e") + ":"
	ctx := context.Background()
	backend, err := redis.Open(ctx, redisURL, redis.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for name, err := range backend.List(context.Background(), "") {
			if err != nil {
				t.Errorf("list: %v", err)
				break
			}
			_ = backend.Flush(context.Background(), name)
		}
		backend.Close()
	})

	idem := "0"
	if c.idempotent {
		idem = "1"
	}
	ackWait := 5 * time.Second
	// With kill, worker 1 stalls between commit and ack after a ninth of
	// the events (about a third of its share): the test SIGKILLs it then,
	// so at least one event it committed comes again.
	var extra map[int][]string
	if c.kill {
		extra = map[int][]string{1: {envStallAfter + "=" + strconv.Itoa(total/9)}}
	}
	procs := startProcs(t, 3, []string{
		envWorker + "=1", envStream + "=" + stream, envPrefix + "=" + prefix,
		envIdempotent + "=" + idem, envAckWait + "=" + ackWait.String(),
	}, extra)

	start := time.Now()
	p := publisher(t, js, stream)
	pubDone := make(chan error, 1)
	go func() {
		// Publish in rounds: event i of every subject, for i = 1..per, so
		// every subject's events are spread over the whole run. One
		// connection, in order: the stream order is the publish order.
		for i := 1; i <= per; i++ {
			for s := range subjects {
				e, err := cloudevents.NewEvent(ctx, "e2e.event", fmt.Sprintf("subj-%03d", s), krules.Payload{"seq": i}, cloudevents.EventOptions{Source: "e2e"})
				if err != nil {
					pubDone <- err
					return
				}
				if _, err := p.PublishEventAsync(ctx, stream, e); err != nil {
					pubDone <- err
					return
				}
			}
		}
		select {
		case <-js.PublishAsyncComplete():
			pubDone <- nil
		case <-time.After(time.Minute):
			pubDone <- fmt.Errorf("publish did not complete")
		}
	}()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	pubTime := time.Since(start)

	killed := -1
	if c.kill {
		killed = 1
		select {
		case <-procs[killed].stalled:
		case <-time.After(2 * time.Minute):
			t.Fatal("worker 1 never reached its stall point")
		}
		if err := procs[killed].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Logf("SIGKILLed worker %d (stalled after commit, before ack) with %d events left", killed, mustRemaining(t, js, stream))
	}
	waitIdle(t, js, stream, 3*time.Minute)
	elapsed := time.Since(start)

	var agg knats.Stats
	for i, p := range procs {
		if i != killed {
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
		err := <-p.wait
		if i == killed {
			continue
		}
		if err != nil {
			t.Errorf("worker %d: %v", i, err)
		}
		t.Logf("worker %d: %+v", i, p.stats)
		agg.Handled += p.stats.Handled
		agg.Duplicates += p.stats.Duplicates
		agg.Redelivered += p.stats.Redelivered
		agg.Failed += p.stats.Failed
		agg.DeadLettered += p.stats.DeadLettered
	}

	// Check every subject: nothing lost, order never violated.
	dups := 0
	for s := range subjects {
		name := fmt.Sprintf("subj-%03d", s)
		subj := krules.New(krules.WithStorage(backend)).Subject(name, krules.NoCache())
		count, err := krules.GetAs[int](ctx, subj, "count")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		seen, err := krules.GetAs[[]int](ctx, subj, "seen")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// seen must be 1..per in order, where the events a killed worker
		// had handled but whose acks did not leave it (the one stalled
		// before its ack, and the acks still in its connection's buffer:
		// acks are not confirmed) may run again — in order, all of them
		// up to the last one seen, before anything new (at least once):
		// "1 2 3 2 3 4", never "1 2 3 2 4" or "1 3 2".
		next, replay := 1, 0 // replay: the next value of a replay, 0 outside one
		for i, v := range seen {
			switch {
			case replay > 0 && v == replay:
				dups++
				if replay++; replay == next {
					replay = 0
				}
			case replay == 0 && v == next:
				next++
			case replay == 0 && v < next:
				dups++
				if replay = v + 1; replay == next {
					replay = 0
				}
			default:
				t.Fatalf("%s: order violated at index %d: saw %d, expected %d (or a replay in order up to %d): %v", name, i, v, next, next-1, seen)
			}
		}
		if replay != 0 {
			t.Fatalf("%s: a replay stopped at %d before %d: %v", name, replay-1, next-1, seen)
		}
		if next != per+1 {
			t.Fatalf("%s: lost events: saw up to %d of %d: %v", name, next-1, per, seen)
		}
		if count != len(seen) {
			// Without idempotency the two writes are separate; a kill
			// between them leaves count one ahead of seen.
			if c.idempotent || !c.kill || count < len(seen) || count > len(seen)+1 {
				t.Fatalf("%s: count %d, seen %d entries", name, count, len(seen))
			}
			dups += count - len(seen)
		}
	}
	rate := float64(total) / elapsed.Seconds()
	t.Logf("%d events over %d subjects, 3 worker processes: published in %s, all handled in %s (%.0f events/s); duplicates %d; survivors' stats %+v",
		total, subjects, pubTime.Round(time.Millisecond), elapsed.Round(time.Millisecond), rate, dups, agg)
	switch {
	case c.idempotent && dups != 0:
		t.Fatalf("idempotent run has %d duplicate effects", dups)
	case c.idempotent && agg.Duplicates == 0:
		t.Fatalf("idempotent run: the committed-but-unacked event was not recognised (stats %+v)", agg)
	case c.kill && !c.idempotent && dups == 0:
		t.Fatalf("kill without idempotency: the committed-but-unacked event did not come again")
	case !c.kill && dups != 0:
		t.Fatalf("run without a kill has %d duplicates", dups)
	}
	if !c.kill && agg.Handled != uint64(total) {
		t.Fatalf("handled %d events, want %d", agg.Handled, total)
	}
}

func mustRemaining(t *testing.T, js jetstream.JetStream, stream string) int {
	n, err := remaining(context.Background(), js, stream)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
