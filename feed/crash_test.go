package feed_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

// crashKills is how many writer processes TestCrash kills per store.
const crashKills = 200

// idemWorkerKills is how many times TestCrash kills one of the idempotent
// worker processes (spread over the writer kills).
const idemWorkerKills = 10

// TestCrash: a writer child process (Inc with NoCache, cached Sets with
// Store) is SIGKILLed at a random moment, crashKills times, while a relay
// and two worker groups run:
//
//   - at least once: a worker in this process (never killed); every change
//     the store committed (its per-subject version) reaches its handler,
//     in order, the last value of "n" handled is the stored one, and no
//     event arrives for a write the store does not hold;
//   - exactly once: two worker processes with WorkerConfig.Idempotent,
//     one of which is SIGKILLed and restarted every few writer kills; their
//     handler counts the changes in cache mode, on a store of their own,
//     and every subject's count equals its committed versions, with no
//     version out of order (no duplicate, no loss).
//
// On Redis and PostgreSQL the relay runs in this process. bbolt is one
// process only: the writer child runs the relay itself (killed with it),
// and after the last kill this process opens the file and relays the rest.
// Finally no record is left in the feed. The three stores run in parallel.
// Setting KRULES_FEED_IDEM=0 in the environment turns the idempotency
// option of the worker processes off: the exactly-once check then fails
// (a worker killed after its handler's writes and before its ack applies
// the change twice).
func TestCrash(t *testing.T) {
	t.Parallel()
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		url := testenv.RedisURL(t)
		prefix := testenv.Unique("krcrash") + ":"
		b := openRedis(t, prefix)
		testCrash(t, crashStore{
			env:   []string{"KRULES_REDIS_URL=" + url, "KRULES_FEED_PREFIX=" + prefix},
			relay: b,
			versions: func(ctx context.Context) (map[string]string, error) {
				return b.Client().HGetAll(ctx, "f:"+prefix+"seq").Result()
			},
			pending: func(ctx context.Context) (int64, error) { return b.Client().XLen(ctx, b.FeedKey()).Result() },
		})
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		url := testenv.PostgresURL(t)
		table := testenv.Unique("krcrash")
		b := openPostgres(t, table)
		pool := b.Pool()
		testCrash(t, crashStore{
			// The writers' sessions carry the table's name, for settle.
			env:   []string{"KRULES_POSTGRES_URL=" + testenv.WithParam(t, url, "application_name", table), "KRULES_FEED_TABLE=" + table},
			relay: b,
			// A killed writer's session may still commit a transaction whose
			// COMMIT it had sent: wait until the server has ended them all.
			settle: func(ctx context.Context) error {
				for end := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					var n int
					if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, table).Scan(&n); err != nil {
						return err
					}
					if n == 0 {
						return nil
					}
					if time.Now().After(end) {
						return fmt.Errorf("%d sessions of killed writers still open", n)
					}
				}
			},
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
			pending: func(ctx context.Context) (int64, error) {
				var n int64
				err := pool.QueryRow(ctx, `SELECT count(*) FROM "`+table+`_feed"`).Scan(&n)
				return n, err
			},
		})
	})
	t.Run("bolt", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "crash.db")
		var versions map[string]string // read once: nothing writes after the last kill
		testCrash(t, crashStore{
			env: []string{"KRULES_FEED_BOLT=" + path},
			versions: func(context.Context) (map[string]string, error) {
				var err error
				if versions == nil {
					versions, err = boltVersions(path)
				}
				return versions, err
			},
			open: func(t testing.TB) feedBackend {
				b, err := bolt.Open(path, bolt.Config{ChangeFeed: true, Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				return b
			},
		})
	})
}

// boltVersions reads the per-subject versions of a bolt file in feed mode
// (its bucket "\x00fseq": subject -> 8-byte big-endian version).
func boltVersions(path string) (map[string]string, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	out := map[string]string{}
	err = db.View(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte("\x00fseq"))
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("version of %q: %d bytes", k, len(v))
			}
			out[string(k)] = strconv.FormatUint(binary.BigEndian.Uint64(v), 10)
			return nil
		})
	})
	return out, err
}

// crashStore is what testCrash needs to know of a store.
type crashStore struct {
	env []string // for the writer child
	// relay is the store this process relays from during the kills (nil:
	// the writer child relays, and open opens the store after them).
	relay    feedBackend
	open     func(testing.TB) feedBackend
	versions func(context.Context) (map[string]string, error)
	// settle, when set, waits until the store has finished the work of the
	// killed writers.
	settle func(context.Context) error
	// pending counts the records left in the feed (nil: ReadChanges).
	pending func(context.Context) (int64, error)
}

func testCrash(t *testing.T, cs crashStore) {
	js := connect(t)
	stream := newStream(t, js)
	nurl := testenv.NATSURL(t)
	const subjects = 20

	// At least once: a worker in this process.
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

	// Exactly once: two idempotent worker processes of their own group,
	// writing to a Redis store of their own.
	wprefix := testenv.Unique("krcrash-w") + ":"
	wstore := openPlainRedis(t, wprefix)
	idemEnv := []string{"KRULES_REDIS_URL=" + testenv.RedisURL(t), "KRULES_NATS_URL=" + nurl, "KRULES_FEED_STREAM=" + stream,
		"KRULES_FEED_WPREFIX=" + wprefix, "KRULES_FEED_ACKWAIT=1500"}
	// The group's consumers exist before the first change is published.
	idem := []*exec.Cmd{startChild(t, "idemworker", true, idemEnv...), startChild(t, "idemworker", true, idemEnv...)}
	defer func() {
		for _, w := range idem {
			kill(w)
		}
	}()

	if cs.relay != nil {
		startRelay(t, cs.relay, js, feed.RelayConfig{Stream: stream})
	}
	env := append([]string{"KRULES_FEED_SUBJECTS=" + strconv.Itoa(subjects), "KRULES_NATS_URL=" + nurl, "KRULES_FEED_STREAM=" + stream}, cs.env...)
	workerKills := 0
	t0 := time.Now()
	for round := 0; round < crashKills; round++ {
		cmd := startChild(t, "crash", true, env...)
		// Killed 0-5 ms after "ready" (plus this process's scheduling
		// delay), mid-write: each kill is one crash at a random point of the
		// write loop; a longer life only adds changes for the relay and the
		// workers of this race-instrumented process to handle.
		time.Sleep(time.Duration(rand.IntN(6)) * time.Millisecond)
		if round%(crashKills/idemWorkerKills) == crashKills/idemWorkerKills/2 {
			i := rand.IntN(len(idem))
			kill(idem[i]) // while the writer writes: mid-handling
			idem[i] = startChild(t, "idemworker", true, idemEnv...)
			workerKills++
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child ended by itself: %v", round, err)
		}
	}
	t.Logf("%d writer processes and %d idempotent workers killed in %v", crashKills, workerKills, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()

	ctx := context.Background()
	if cs.settle != nil {
		if err := cs.settle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var b feedBackend
	var want map[string]string
	total := 0
	// Read the versions again once everything read is handled, until they
	// no longer change (a late commit would show).
	for settled := false; !settled; {
		var err error
		if want, err = cs.versions(ctx); err != nil {
			t.Fatal(err)
		}
		if b == nil {
			if b = cs.relay; b == nil {
				b = cs.open(t)
				startRelay(t, b, js, feed.RelayConfig{Stream: stream})
			}
		}
		total = 0
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
		again, err := cs.versions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		settled = maps.Equal(want, again)
	}
	t.Logf("all handled at least once %v after the last kill", time.Since(t0).Round(time.Millisecond))
	mu.Lock()
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
		stored, err := b.Get(ctx, name, storage.Key{Kind: storage.Default, Name: "n"})
		if err != nil || !storage.Equal(l.n, stored) {
			t.Errorf("subject %s: last handled n = %v, stored %v (%v)", name, l.n, stored, err)
		}
	}
	if len(got) != len(want) {
		t.Errorf("handled %d subjects, %d committed", len(got), len(want))
	}
	mu.Unlock()

	// Exactly once at the idempotent workers.
	wapp2 := krules.New(krules.WithStorage(wstore))
	counts := func() (sum int64, per map[string][3]int64) {
		per = map[string][3]int64{}
		for name := range want {
			s := wapp2.Subject(name, krules.NoCache())
			var r [3]int64
			for i, p := range []string{"count", "last", "bad"} {
				v, _ := s.Get(ctx, p)
				r[i], _ = v.(int64)
			}
			per[name] = r
			sum += r[0]
		}
		return sum, per
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		sum, _ := counts()
		if sum >= int64(total) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idempotent workers: %d of %d committed changes applied", sum, total)
		}
	}
	t.Logf("all applied by the idempotent workers %v after the last kill", time.Since(t0).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond) // a duplicate would be applied now
	_, per := counts()
	for name, v := range want {
		n, _ := strconv.ParseInt(v, 10, 64)
		if r := per[name]; r != [3]int64{n, n, 0} {
			t.Errorf("subject %s: %d changes committed; idempotent workers applied %d, last version %d, %d out of order", name, n, r[0], r[1], r[2])
		}
	}

	// The relay removes records just after JetStream's ack.
	pending := cs.pending
	if pending == nil {
		pending = func(ctx context.Context) (int64, error) {
			recs, err := b.ReadChanges(ctx, 1000, 0)
			return int64(len(recs)), err
		}
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, err := pending(ctx)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(end) {
			t.Errorf("%d records left in the feed (%v)", n, err)
			break
		}
	}
}

func kill(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// openPlainRedis opens a Redis backend without the feed on prefix; its
// subject keys are removed at the end.
func openPlainRedis(t testing.TB, prefix string) *redis.Backend {
	t.Helper()
	b, err := redis.Open(context.Background(), testenv.RedisURL(t), redis.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		c := b.Client()
		it := c.Scan(ctx, 0, "s:"+prefix+"*", 1000).Iterator()
		for it.Next(ctx) {
			c.Del(ctx, it.Val())
		}
		b.Close()
	})
	return b
}
