package main_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage/storageurl"
)

func TestCLIRedis(t *testing.T) {
	t.Parallel()
	u := testenv.WithParam(t, testenv.RedisURL(t), "prefix", testenv.Unique("cli")+":")
	exercise(t, u, "", false) // exercise flushes every subject it created
	// --storage on the command line, the shape of the issue.
	run(t, "", 0, "subject", "set", "--storage", u, "user-1", "name", `"John"`)
	if r := run(t, "", 0, "subject", "get", "--storage", u, "user-1", "name"); r.stdout != "\"John\"\n" {
		t.Fatalf("get = %q", r.stdout)
	}
	run(t, "", 0, "subject", "flush", "--storage", u, "user-1")
}

func TestCLIPostgres(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	table := testenv.Unique("cli")
	u := testenv.WithParam(t, testenv.PostgresURL(t), "table", table)
	t.Cleanup(func() {
		pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer pool.Close()
		if _, err := pool.Exec(ctx, `DROP TABLE IF EXISTS `+pgx.Identifier{table}.Sanitize()); err != nil {
			t.Errorf("drop table: %v", err)
		}
	})
	exercise(t, u, "", false)
	// Data written by the CLI is there for a program.
	run(t, u, 0, "subject", "set", "user-9", "n", "9")
	b, err := storageurl.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	snap, err := b.Load(ctx, "user-9")
	if err != nil || len(snap.Props) != 1 || snap.Props[0].Value != int64(9) {
		t.Fatalf("Load = %+v, %v", snap, err)
	}
}
