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

// crashDuration bounds the writer-kill rounds of TestCrash (per backend).
func crashDuration() time.Duration {
	if testenv.Race {
		return 4 * time.Second
	}
	return 10 * time.Second
}

// TestCrash: a writer child process (Inc with NoCache, cached Sets with
// Store) is SIGKILLed at a random moment, round after round, while a relay
// and a worker run in this process. Afterwards every change the store
// committed (its per-subject version) has reached the handler exactly once
// and in order, the handler's last value of "n" is the stored one, and no
// record is left in the feed.
func TestCrash(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		url := testenv.RedisURL(t)
		prefix := testenv.Unique("krcrash") + ":"
		b := openRedis(t, prefix)
		testCrash(t, b, crashStore{
			env: []string{"KRULES_REDIS_URL=" + url, "KRULES_FEED_PREFIX=" + prefix},
			versions: func(ctx context.Context) (map[string]string, error) {
				return b.Client().HGetAll(ctx, "f:"+prefix+"seq").Result()
			},
			stored: func(ctx context.Context, subject string) (string, error) {
				return b.Client().HGet(ctx, "s:"+prefix+subject, "pn").Result()
			},
			pending: func(ctx context.Context) (int64, error) { return b.Client().XLen(ctx, b.FeedKey()).Result() },
		})
	})
	t.Run("postgres", func(t *testing.T) {
		url := testenv.PostgresURL(t)
		table := testenv.Unique("krcrash")
		b := openPostgres(t, table)
		pool := b.Pool()
		testCrash(t, b, crashStore{
			env: []string{"KRULES_POSTGRES_URL=" + url, "KRULES_FEED_TABLE=" + table},
			versions: func(ctx context.Context) (map[string]string, error) {
				rows, err := pool.Query(ctx, `SELECT subject_name, seq::text FROM "`+table+`_feed_seq"`)
				if err != nil {
					return nil, err
				}
				out := map[string]string{}
				for rows.Next() {
					var s, v string
					if err := rows.Scan(&s, &v); err != nil {
						return nil, err
					}
					out[s] = v
				}
				return out, rows.Err()
			},
			stored: func(ctx context.Context, subject string) (string, error) {
				var v string
				err := pool.QueryRow(ctx, `SELECT properties ->> 'n' FROM "`+table+`" WHERE subject_name = $1`, subject).Scan(&v)
				return v, err
			},
			pending: func(ctx context.Context) (int64, error) {
				var n int64
				err := pool.QueryRow(ctx, `SELECT count(*) FROM "`+table+`_feed"`).Scan(&n)
				return n, err
			},
		})
	})
}

// crashStore is what testCrash needs to know of a store.
type crashStore struct {
	env      []string // for the writer child
	versions func(context.Context) (map[string]string, error)
	stored   func(ctx context.Context, subject string) (string, error)
	pending  func(context.Context) (int64, error)
}

func testCrash(t *testing.T, b feedBackend, cs crashStore) {
	js := connect(t)
	stream := newStream(t, js)
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
	for start := time.Now(); time.Since(start) < crashDuration(); rounds++ {
		cmd := exec.Command(exe)
		cmd.Env = append(append(os.Environ(), "KRULES_FEED_CHILD=1", "KRULES_FEED_SUBJECTS="+strconv.Itoa(subjects)), cs.env...)
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
	want, err := cs.versions(ctx)
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
		stored, err := cs.stored(ctx, name)
		if err != nil || fmt.Sprint(l.n) != stored {
			t.Errorf("subject %s: last handled n = %v, stored %q (%v)", name, l.n, stored, err)
		}
	}
	if len(got) != len(want) {
		t.Errorf("handled %d subjects, %d committed", len(got), len(want))
	}
	// The relay removes records just after JetStream's ack.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, err := cs.pending(ctx)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(end) {
			t.Errorf("%d records left in the feed (%v)", n, err)
			break
		}
	}
}
