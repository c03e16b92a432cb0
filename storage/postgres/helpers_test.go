package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage/postgres"
)

// testPool returns a pool on KRULES_POSTGRES_URL, closed at the end of the
// test (skips or fails as testenv decides when the URL is unset).
//
// Its sessions run with synchronous_commit=off: a commit does not wait for
// the WAL flush. Locking, isolation and atomicity are unchanged (what the
// tests check); only durability against a server crash is relaxed, which
// spares the shared test machine tens of thousands of fsyncs in the
// contention workloads, where each update must commit before the next one
// can take the row lock. TestRestart uses a durable pool of its own.
func testPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := testenv.PostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pcfg, err := postgres.PoolConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		t.Fatalf("ping %s: %v", url, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// dropTable registers the removal of a table at the end of the test.
func dropTable(t testing.TB, pool *pgxpool.Pool, schema, table string) {
	t.Helper()
	t.Cleanup(func() {
		ident := pgx.Identifier{table}
		if schema != "" {
			ident = pgx.Identifier{schema, table}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, `DROP TABLE IF EXISTS `+ident.Sanitize()); err != nil {
			t.Errorf("drop table %s: %v", ident.Sanitize(), err)
		}
	})
}

// newBackend returns a Backend on a table of its own, dropped at the end of
// the test, and the pool it uses.
func newBackend(t testing.TB) (*postgres.Backend, *pgxpool.Pool) {
	t.Helper()
	pool := testPool(t)
	table := testenv.Unique("krules_test")
	dropTable(t, pool, "", table)
	b, err := postgres.New(t.Context(), pool, postgres.Config{Table: table})
	if err != nil {
		t.Fatalf("postgres.New: %v", err)
	}
	t.Cleanup(b.Close)
	return b, pool
}
