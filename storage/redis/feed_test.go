package redis_test

import (
	"context"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed/feedtest"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/storage/storagetest"
)

// openFeed opens a Backend in feed mode with a unique prefix and removes
// its subject and feed keys at the end.
func openFeed(t testing.TB) *redis.Backend {
	t.Helper()
	b := open(t, redis.Config{ChangeFeed: true})
	t.Cleanup(func() {
		c := b.Client()
		ctx := context.Background()
		c.Del(ctx, b.FeedKey(), "f:"+b.Key("")[2:]+"seq", "f:"+b.Key("")[2:]+"lease")
	})
	return b
}

func TestFeedRecords(t *testing.T) {
	feedtest.Records(t, openFeed(t), true)
}

// The data behaviour is the same with the feed on. Under the race detector
// the concurrent subtests make a quarter of their rounds (raceScaleDown; 32
// goroutines still contend on one subject): TestConformance runs the full
// counts.
func TestFeedConformance(t *testing.T) {
	testenv.RedisURL(t)
	storagetest.RunConfig(t, storagetest.Config{
		Parallel:  conformanceParallel,
		ScaleDown: raceScaleDown(),
		New:       func(t *testing.T) storage.Backend { return openFeed(t) },
	})
}

func TestFeedBatchAndOps(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t)
	// A batch: delete-then-put of one property is one change; an unchanged
	// put none; extended properties none.
	mustSet(t, b, "s", P("a"), int64(1))
	mustSet(t, b, "s", P("same"), "x")
	feedtest.Drain(t, b)
	err := b.Store(ctx, "s", storage.Batch{
		Deletes: []storage.Key{P("a"), P("gone")},
		Puts:    []storage.Write{{Key: P("a"), Value: int64(2)}, {Key: P("same"), Value: "x"}, {Key: E("e"), Value: true}, {Key: P("new"), Value: []any{int64(1)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := feedtest.Drain(t, b)
	if len(got) != 2 || got[0].Property != "a" || got[0].Old != int64(1) || got[0].New != int64(2) ||
		got[1].Property != "new" || got[1].Old != nil || got[1].Seq != got[0].Seq+1 {
		t.Fatalf("batch records %+v", got)
	}
	// Built-in ops and update functions record old and new values.
	if _, _, err := b.Set(ctx, "s", P("a"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(5)}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", P("new"), storage.Mutation{Op: &storage.Op{Kind: storage.OpAppend, Arg: []any{int64(2)}}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", P("a"), storage.Mutation{Func: func(old any, _ bool) (any, error) { return old.(int64) * 2, nil }}); err != nil {
		t.Fatal(err)
	}
	// A failing op writes neither data nor record.
	if _, _, err := b.Set(ctx, "s", P("same"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(1)}}); err == nil {
		t.Fatal("inc of a string succeeded")
	}
	got = feedtest.Drain(t, b)
	if len(got) != 3 || got[0].New != int64(7) || got[2].Old != int64(7) || got[2].New != int64(14) {
		t.Fatalf("op records %+v", got)
	}
	if l, ok := got[1].New.([]any); !ok || len(l) != 2 {
		t.Fatalf("append record %+v", got[1])
	}
	// Muted through the context: nothing recorded.
	mctx := storage.WithChange(ctx, &storage.ChangeMeta{Muted: true})
	if _, _, err := b.Set(mctx, "s", P("a"), storage.Mutation{Value: int64(0)}); err != nil {
		t.Fatal(err)
	}
	if got := feedtest.Drain(t, b); len(got) != 0 {
		t.Fatalf("muted write recorded: %+v", got)
	}
}

func TestFeedReadBlocksAndLease(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t)
	app := krules.New(krules.WithStorage(b))
	done := make(chan int)
	go func() {
		r, err := b.ReadChanges(ctx, 10, time.Minute)
		if err != nil {
			t.Error(err)
		}
		done <- len(r)
	}()
	time.Sleep(50 * time.Millisecond)
	if _, _, err := app.Subject("w", krules.NoCache()).Set(ctx, "x", 1); err != nil {
		t.Fatal(err)
	}
	if n := <-done; n != 1 {
		t.Fatalf("blocked read returned %d records", n)
	}

	ok, err := b.FeedLease(ctx, "a", time.Minute)
	if err != nil || !ok {
		t.Fatalf("lease a: %v %v", ok, err)
	}
	if ok, _ := b.FeedLease(ctx, "b", time.Minute); ok {
		t.Fatal("b got the lease held by a")
	}
	if ok, _ := b.FeedLease(ctx, "a", 50*time.Millisecond); !ok {
		t.Fatal("a could not renew")
	}
	time.Sleep(100 * time.Millisecond)
	if ok, _ := b.FeedLease(ctx, "b", time.Minute); !ok {
		t.Fatal("b did not get the expired lease")
	}
	if err := b.ReleaseFeedLease(ctx, "a"); err != nil { // not the owner: no effect
		t.Fatal(err)
	}
	if ok, _ := b.FeedLease(ctx, "a", time.Minute); ok {
		t.Fatal("release by a non-owner freed the lease")
	}
	if err := b.ReleaseFeedLease(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.FeedLease(ctx, "a", time.Minute); !ok {
		t.Fatal("released lease not free")
	}
}

// BenchmarkFeedSet: a NoCache-style backend Set of a changing value with the
// feed off and on (the record written in the same script).
func BenchmarkFeedSet(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			be := open(b, redis.Config{ChangeFeed: on})
			if on {
				b.Cleanup(func() { be.Client().Del(context.Background(), be.FeedKey(), "f:"+be.Key("")[2:]+"seq") })
			}
			ctx := context.Background()
			k := storage.Key{Kind: storage.Default, Name: "n"}
			for i := 0; b.Loop(); i++ {
				if _, _, err := be.Set(ctx, "s", k, storage.Mutation{Value: int64(i)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestFeedIdempotent(t *testing.T) { feedtest.Idempotent(t, openFeed(t)) }

func TestFeedCursor(t *testing.T) {
	feedtest.Cursor(t, openFeed(t))
}
