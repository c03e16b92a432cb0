package feed_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

// relayKillDuration bounds the relay-kill rounds of TestRelayKilled.
func relayKillDuration() time.Duration {
	if testenv.Race {
		return 4 * time.Second
	}
	return 8 * time.Second
}

// TestRelayKilled: two relay child processes (one active, one standby)
// while this process writes continuously; a relay is SIGKILLed at a random
// moment and replaced, round after round. Every committed change reaches
// the handler once (JetStream drops the re-published copies) and in order.
func TestRelayKilled(t *testing.T) {
	url, nurl := testenv.RedisURL(t), testenv.NATSURL(t)
	js := connect(t)
	stream := newStream(t, js)
	prefix := testenv.Unique("krrelay") + ":"
	b := openRedis(t, prefix)
	const subjects = 20

	var mu sync.Mutex
	got := map[string][]int64{}
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		v, _ := ev.Meta(knats.MetaChangeSeq)
		mu.Lock()
		got[ev.Subject.Name()] = append(got[ev.Subject.Name()], v.(int64))
		mu.Unlock()
		return nil
	})
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "KRULES_FEED_CHILD=relay", "KRULES_REDIS_URL="+url, "KRULES_NATS_URL="+nurl,
			"KRULES_FEED_PREFIX="+prefix, "KRULES_FEED_STREAM="+stream)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("relay child did not start: %q", line)
		}
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	relays := []*exec.Cmd{start(), start()}
	defer func() {
		for _, r := range relays {
			kill(r)
		}
	}()

	// The writer: NoCache increments until told to stop.
	writer := krules.New(krules.WithStorage(b))
	var stop atomic.Bool
	wdone := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for i := 0; !stop.Load(); i++ {
			if _, _, err := writer.Subject(fmt.Sprintf("r-%02d", i%subjects), krules.NoCache()).Set(ctx, "n", krules.Inc(1)); err != nil {
				wdone <- err
				return
			}
			if i%10 == 9 {
				time.Sleep(5 * time.Millisecond) // a steady flow, not a flood
			}
		}
		wdone <- nil
	}()
	kills := 0
	for begin := time.Now(); time.Since(begin) < relayKillDuration(); kills++ {
		time.Sleep(time.Duration(100+rand.IntN(150)) * time.Millisecond)
		i := rand.IntN(2)
		kill(relays[i])
		relays[i] = start()
	}
	stop.Store(true)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d relay processes killed", kills)

	ctx := context.Background()
	want, err := b.Client().HGetAll(ctx, "f:"+prefix+"seq").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, v := range want {
		n, _ := strconv.Atoi(v)
		total += n
	}
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := 0
		for _, q := range got {
			n += len(q)
		}
		mu.Unlock()
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d committed changes handled", n, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would show up now
	mu.Lock()
	defer mu.Unlock()
	for name, v := range want {
		n, _ := strconv.Atoi(v)
		q := got[name]
		ok := len(q) == n
		for i := 0; ok && i < n; i++ {
			ok = q[i] == int64(i+1)
		}
		if !ok {
			t.Errorf("subject %s: %d changes committed, handled versions %v", name, n, q)
		}
	}
}
