package storageurl_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/storage/storageurl"
)

func TestOpenRedisWithPrefix(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.Unique("su") + ":"
	b, err := storageurl.Open(ctx, testenv.WithParam(t, testenv.RedisURL(t), "prefix", prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t.Cleanup(func() { b.Flush(ctx, "user-1") })
	if _, _, err := b.Set(ctx, "user-1", storage.Key{Kind: storage.Default, Name: "name"}, storage.Mutation{Value: "John"}); err != nil {
		t.Fatal(err)
	}
	rb, ok := b.(*redis.Backend)
	if !ok {
		t.Fatalf("redis URL opened %T", b)
	}
	// The prefix reached the backend (and not go-redis): the Python key layout.
	if n, err := rb.Client().Exists(ctx, "s:"+prefix+"user-1").Result(); err != nil || n != 1 {
		t.Fatalf("key s:%suser-1 exists = %d, %v", prefix, n, err)
	}
	var names []string
	for name, err := range b.(storage.Lister).List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	if len(names) != 1 || names[0] != "user-1" {
		t.Fatalf("List = %v", names)
	}
}

func TestOpenRedisBadParameters(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{"redis://127.0.0.1:6379/notadb", "redis://127.0.0.1:6379/0?bogus_option=1"} {
		if _, err := storageurl.Open(ctx, u); !errors.Is(err, storageurl.ErrBadURL) {
			t.Errorf("Open(%q) = %v, want ErrBadURL", u, err)
		}
	}
}

func TestOpenPostgresWithTableAndSchema(t *testing.T) {
	ctx := context.Background()
	schema, table := testenv.Unique("su_schema"), testenv.Unique("su")
	u := testenv.WithParam(t, testenv.WithParam(t, testenv.PostgresURL(t), "table", table), "schema", schema)
	b, err := storageurl.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // after the schema is dropped (cleanups run last first)
	pg, ok := b.(interface {
		Pool() *pgxpool.Pool
		Table() string
	})
	if !ok {
		t.Fatalf("postgres URL opened %T", b)
	}
	t.Cleanup(func() {
		if _, err := pg.Pool().Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	if want := (pgx.Identifier{schema, table}).Sanitize(); pg.Table() != want {
		t.Fatalf("table %s, want %s", pg.Table(), want)
	}
	k := storage.Key{Kind: storage.Default, Name: "name"}
	if _, _, err := b.Set(ctx, "user-1", k, storage.Mutation{Value: "John"}); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, "user-1", k); err != nil || v != "John" {
		t.Fatalf("Get = %v, %v", v, err)
	}
	var n int
	if err := pg.Pool().QueryRow(ctx, `SELECT count(*) FROM `+pg.Table()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in %s: %d, %v", pg.Table(), n, err)
	}
	if _, ok := b.(storage.Lister); !ok {
		t.Fatal("postgres backend lost List")
	}
}

func TestOpenPostgresBadParameters(t *testing.T) {
	ctx := context.Background()
	if _, err := storageurl.Open(ctx, "postgres://u@127.0.0.1:5432/db?pool_max_conns=many"); !errors.Is(err, storageurl.ErrBadURL) {
		t.Errorf("bad pool_max_conns: %v, want ErrBadURL", err)
	}
}
