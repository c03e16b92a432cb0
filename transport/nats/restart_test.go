package nats_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	knats "github.com/krules-go/krules/transport/nats"
)

// privateServer runs a nats-server with JetStream of its own (never the
// shared one) on a free port, with its store in dir.
type privateServer struct {
	bin, dir string
	port     int
	cmd      *exec.Cmd
}

func (s *privateServer) start(t *testing.T) {
	t.Helper()
	s.cmd = exec.Command(s.bin, "-js", "-a", "127.0.0.1", "-p", fmt.Sprint(s.port), "-sd", s.dir)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("private nats-server did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down (SIGTERM: it writes its state, as in a
// restart for maintenance).
func (s *privateServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = s.cmd.Process.Kill()
			<-done
		}
		s.cmd = nil
	}
}

// A restart of the NATS server (here a private one: the worker and the
// producer reconnect by themselves) loses nothing and breaks no order.
// (A server killed with SIGKILL may lose the acks of its last moments and
// deliver handled events again: at least once; Idempotent recognises them.)
func TestNATSServerRestart(t *testing.T) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nats-server"); serr != nil {
			t.Skip("no nats-server binary to run a private server")
		}
		bin = "/usr/sbin/nats-server"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	srv := &privateServer{bin: bin, dir: t.TempDir(), port: port}
	srv.start(t)
	t.Cleanup(srv.stop)

	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	nc, err := knats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: "restart", Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]int64{}
	app := krules.New()
	app.On("tick").Do(func(ctx context.Context, ev *krules.Event) error {
		time.Sleep(5 * time.Millisecond) // so that events are in flight at the restart
		mu.Lock()
		seen[ev.Subject.Name()] = append(seen[ev.Subject.Name()], seqOf(ev))
		mu.Unlock()
		return nil
	})
	wnc, err := knats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wnc.Close) // after the worker stopped
	wjs, _ := jetstream.New(wnc)
	w := newWorker(t, wjs, app, knats.WorkerConfig{Stream: "restart", AckWait: 2 * time.Second})
	startWorker(t, w)
	waitOwnedAll(t, 4, w)
	p := publisher(t, js, "restart")
	const subjects, per = 8, 20
	publish := func(from, to int) {
		t.Helper()
		for i := from; i <= to; i++ {
			for s := range subjects {
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := p.Publish(pctx, "tick", fmt.Sprintf("s%d", s), krules.Payload{"seq": i})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, v := range seen {
			n += len(v)
		}
		return n
	}
	publish(1, per/2)
	t.Logf("%d of %d events handled when the server stops", count(), subjects*per/2)
	srv.stop() // events in flight, unacked
	srv.start(t)
	publish(per/2+1, per)
	deadline := time.Now().Add(45 * time.Second)
	for count() < subjects*per {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events handled after the restart", count(), subjects*per)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for s := range subjects {
		got := seen[fmt.Sprintf("s%d", s)]
		next := int64(1)
		for i, v := range got {
			switch {
			case v == next:
				next++
			case i > 0 && v == got[i-1]: // redelivered after the restart
			default:
				t.Fatalf("s%d: order violated at %d: %v", s, i, got)
			}
		}
		if next != per+1 {
			t.Fatalf("s%d: lost events: %v", s, got)
		}
	}
}
