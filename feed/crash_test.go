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
	"syscall"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

// crashDuration bounds the writer-kill rounds of TestCrash.
const crashDuration = 20 * time.Second

// TestCrash: a writer child process (Inc with NoCache, cached Sets with
// Store) is SIGKILLed at a random moment, round after round, while a relay
// and a worker run in this process. Afterwards every change the store
// committed (its per-subject version) has reached the handler exactly once
// and in order, the handler's last value of "n" is the stored one, and no
// record is left in the feed.
func TestCrash(t *testing.T) {
	url := testenv.RedisURL(t)
	js := connect(t)
	stream := newStream(t, js)
	prefix := testenv.Unique("krcrash") + ":"
	b := openRedis(t, prefix)
	const subjects = 20

	type last struct {
		seqs []int64
		n    any
	}
	var mu sync.Mutex
	got := map[string]*last{}
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		v, _ := ev.Meta(knats.MetaChangeSeq)
		mu.Lock()
		defer mu.Unlock()
		l := got[ev.Subject.Name()]
		if l == nil {
			l = &last{}
			got[ev.Subject.Name()] = l
		}
		l.seqs = append(l.seqs, v.(int64))
		if ev.PropertyName == "n" {
			l.n = ev.NewValue
		}
		return nil
	})
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})
	startRelay(t, b, js, feed.RelayConfig{Stream: stream})

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rounds := 0
	for start := time.Now(); time.Since(start) < crashDuration; rounds++ {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "KRULES_FEED_CHILD=1", "KRULES_REDIS_URL="+url, "KRULES_FEED_PREFIX="+prefix, "KRULES_FEED_SUBJECTS="+strconv.Itoa(subjects))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child did not start: %q", line)
		}
		time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child ended by itself: %v", rounds, err)
		}
	}
	t.Logf("%d writer processes killed", rounds)

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
	if total == 0 {
		t.Fatal("no change committed")
	}
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := 0
		for _, l := range got {
			n += len(l.seqs)
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
	mu.Lock()
	defer mu.Unlock()
	for name, v := range want {
		n, _ := strconv.Atoi(v)
		l := got[name]
		if l == nil || len(l.seqs) != n {
			t.Errorf("subject %s: %d changes committed, handled %v", name, n, l)
			continue
		}
		for i, q := range l.seqs {
			if q != int64(i+1) {
				t.Errorf("subject %s: versions %v, want 1..%d", name, l.seqs, n)
				break
			}
		}
		stored, err := b.Client().HGet(ctx, "s:"+prefix+name, "pn").Result()
		if err != nil || fmt.Sprint(l.n) != stored {
			t.Errorf("subject %s: last handled n = %v, stored %q (%v)", name, l.n, stored, err)
		}
	}
	if len(got) != len(want) {
		t.Errorf("handled %d subjects, %d committed", len(got), len(want))
	}
	// The relay removes records just after JetStream's ack.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, err := b.Client().XLen(ctx, b.FeedKey()).Result()
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(end) {
			t.Errorf("%d records left in the feed (%v)", n, err)
			break
		}
	}
}
