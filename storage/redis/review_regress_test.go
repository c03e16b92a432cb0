package redis_test

import (
	"context"
	"errors"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
)

func TestHandBuiltOpArgumentRefused(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.Unique("rop") + ":"
	b, err := redis.Open(ctx, testenv.RedisURL(t), redis.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Flush(ctx, "s"); b.Close() })
	k := storage.Key{Kind: storage.Default, Name: "n"}
	for _, op := range []*storage.Op{{Kind: storage.OpInc, Arg: "x"}, {Kind: storage.OpAppend, Arg: int64(1)}} {
		if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Op: op}); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("%v with arg %#v: err = %v, want ErrInvalidValue", op.Kind, op.Arg, err)
		}
	}
	if _, err := b.Get(ctx, "s", k); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a refused op wrote: %v", err)
	}
}

func TestFieldWithEmptyNameIgnored(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.Unique("rempty") + ":"
	b, err := redis.Open(ctx, testenv.RedisURL(t), redis.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Flush(ctx, "s"); b.Close() })
	opt, _ := goredis.ParseURL(testenv.RedisURL(t))
	raw := goredis.NewClient(opt)
	defer raw.Close()
	if err := raw.HSet(ctx, b.Key("s"), "p", "3", "pok", "1").Err(); err != nil {
		t.Fatal(err)
	}
	snap, err := b.Load(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Props) != 1 || snap.Props[0].Name != "ok" {
		t.Fatalf("Load = %+v, want only property ok", snap.Props)
	}
}
