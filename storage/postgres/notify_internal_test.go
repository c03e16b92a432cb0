package postgres

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
)

// TestNotifierBacksOffWhenItCannotConnect: when the notifier's own
// connection cannot be opened (here: every new dial fails, while the pool
// keeps a connection it opened before), the NOTIFYs go through the pool and
// the notifier tries to connect once per notifyConnRetry, not once per
// NOTIFY (up to a thousand attempts a second before; found in review).
func TestNotifierBacksOffWhenItCannotConnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := PoolConfig(testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	var dials atomic.Int64
	var d net.Dialer
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		if fail.Load() {
			return nil, errors.New("dial refused by the test")
		}
		return d.DialContext(ctx, network, addr)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `SELECT 1`); err != nil { // the pool's one connection
		t.Fatal(err)
	}
	fail.Store(true)
	b := &Backend{pool: pool}
	var noConnUntil time.Time
	n0 := dials.Load()
	for range 20 {
		if conn := b.sendNotify(ctx, nil, `SELECT 1`, &noConnUntil); conn != nil {
			t.Fatal("sendNotify returned a connection although every dial fails")
		}
	}
	if got := dials.Load() - n0; got != 1 {
		t.Fatalf("%d connection attempts for 20 NOTIFYs, want 1 (then the pool alone for %v)", got, notifyConnRetry)
	}
	if !time.Now().Before(noConnUntil) {
		t.Fatalf("no back-off recorded after the failed connection")
	}
}
