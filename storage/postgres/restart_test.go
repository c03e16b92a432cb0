package postgres_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// TestRestart restarts a PostgreSQL server (immediate mode, as after a
// crash) while writers are running and checks that calls fail with an error
// (never hang past their ctx deadline), that the pool recovers once the
// server is back, and that every write acknowledged as committed survived.
//
// The server is a private cluster the test creates and removes (see
// startPrivateCluster), never the shared server of KRULES_POSTGRES_URL: it
// needs the PostgreSQL server binaries (initdb, pg_ctl), and is skipped
// without them unless KRULES_REQUIRE_SERVICES=1.
func TestRestart(t *testing.T) {
	cluster := startPrivateCluster(t)
	url := cluster.URL()
	restart := cluster.RestartCommand()
	ctx := t.Context()

	// Open's pool: durable (synchronous_commit as configured on the server).
	b, err := postgres.Open(ctx, url, postgres.Config{Table: testenv.Unique("krules_restart")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := b.Pool().Exec(ctx, `DROP TABLE IF EXISTS `+b.Table()); err != nil {
			t.Errorf("drop table: %v", err)
		}
		b.Close()
	})

	const callTimeout = 2 * time.Second
	// Bound on how long a call may take: its deadline plus pgx's cancel
	// handling (cancel request, 1s connection deadline, 100ms settle).
	const callBound = callTimeout + 3*time.Second
	inc, err := storage.NewOp(storage.OpInc, 1)
	if err != nil {
		t.Fatal(err)
	}

	type stats struct {
		ok, failed int
		maxNew     int64
		lastErr    error
		okAfter    int // successes after the restart command returned
	}
	var (
		mu        sync.Mutex
		st        stats
		restarted = make(chan struct{})
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		firstOK   = make(chan struct{})
		firstOnce sync.Once
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				start := time.Now()
				nv, _, err := b.Set(cctx, "restart", storage.Key{Kind: storage.Default, Name: "n"}, storage.Mutation{Op: inc})
				took := time.Since(start)
				cancel()
				if took > callBound {
					t.Errorf("writer %d: a call took %v, beyond its %v deadline (+ cancel handling): %v", w, took, callTimeout, err)
				}
				mu.Lock()
				if err != nil {
					st.failed++
					st.lastErr = err
				} else {
					st.ok++
					st.maxNew = max(st.maxNew, nv.(int64))
					select {
					case <-restarted:
						st.okAfter++
					default:
					}
				}
				mu.Unlock()
				if err == nil {
					firstOnce.Do(func() { close(firstOK) })
				} else {
					// The server is away: do not spin.
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		}()
	}
	<-firstOK
	out, err := restart.CombinedOutput()
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("%s: %v\n%s", restart, err, out)
	}
	close(restarted)

	// The pool recovers: writers succeed again after the restart.
	deadline := time.After(60 * time.Second)
	for recovered := false; !recovered; {
		mu.Lock()
		recovered = st.okAfter >= 20
		mu.Unlock()
		if !recovered {
			select {
			case <-deadline:
				close(stop)
				wg.Wait()
				t.Fatalf("no recovery within 60s of the restart: %+v", st)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("writes acknowledged: %d, failed: %d (last error: %v)", st.ok, st.failed, st.lastErr)
	if st.lastErr != nil && errors.Is(st.lastErr, storage.ErrConflict) {
		t.Errorf("a restart reported as ErrConflict: %v", st.lastErr)
	}

	// Every acknowledged increment is in the final value; failed calls may
	// or may not have committed (their outcome is unknown to the client).
	final, err := b.Get(ctx, "restart", storage.Key{Kind: storage.Default, Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	n, ok := final.(int64)
	if !ok || n < int64(st.ok) || n < st.maxNew || n > int64(st.ok+st.failed) {
		t.Errorf("final counter %#v; want between %d acknowledged writes (max returned %d) and %d attempts",
			final, st.ok, st.maxNew, st.ok+st.failed)
	}
}
