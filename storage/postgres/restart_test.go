package postgres_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// TestRestart restarts the PostgreSQL server while writers are running and
// checks that calls fail with an error (never hang past their ctx deadline),
// that the pool recovers once the server is back, and that every write
// acknowledged as committed survived.
//
// It is OPT-IN: set KRULES_PG_RESTART_TEST=1. It restarts the local cluster
// with `pg_ctlcluster --skip-systemctl-redirect <version> main restart`
// (or KRULES_PG_RESTART_CMD, run with sh -c, e.g. to restart a private
// cluster that KRULES_POSTGRES_URL points to), which breaks every
// other test using the same server at that moment, so it must not run
// while other packages' tests run in parallel. It needs the right to run
// pg_ctlcluster (root or the postgres user). A safe way to run it is
// against a private cluster:
//
//	su postgres -c "/usr/lib/postgresql/15/bin/initdb -D /tmp/pgr/data -A trust"
//	PGCTL="/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgr/data -o '-p 5499 -k /tmp/pgr' -l /tmp/pgr/log -w"
//	su postgres -c "$PGCTL start" && createdb -h 127.0.0.1 -p 5499 -U postgres test
//	KRULES_PG_RESTART_TEST=1 KRULES_PG_RESTART_CMD="su postgres -c \"$PGCTL -m immediate restart\"" \
//	KRULES_POSTGRES_URL=postgres://postgres@127.0.0.1:5499/test go test -run TestRestart ./storage/postgres/
func TestRestart(t *testing.T) {
	if os.Getenv("KRULES_PG_RESTART_TEST") != "1" {
		t.Skip("set KRULES_PG_RESTART_TEST=1 to restart the local PostgreSQL server (disturbs other tests using it)")
	}
	url := testenv.PostgresURL(t)
	restart := restartCommand(t)
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

// restartCommand returns KRULES_PG_RESTART_CMD (run by sh -c), or
// pg_ctlcluster for the only cluster version in /etc/postgresql.
func restartCommand(t *testing.T) *exec.Cmd {
	t.Helper()
	if c := os.Getenv("KRULES_PG_RESTART_CMD"); c != "" {
		return exec.CommandContext(t.Context(), "sh", "-c", c)
	}
	versions, err := filepath.Glob("/etc/postgresql/*")
	if err != nil || len(versions) != 1 {
		t.Fatalf("cannot pick the cluster to restart from /etc/postgresql (%v, %v); set KRULES_PG_RESTART_CMD", versions, err)
	}
	return exec.CommandContext(t.Context(), "pg_ctlcluster", "--skip-systemctl-redirect", filepath.Base(versions[0]), "main", "restart")
}
