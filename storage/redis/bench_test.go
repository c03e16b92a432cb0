package redis_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
)

// concurrently runs b.N calls of fn spread over c goroutines.
func concurrently(b *testing.B, c int, fn func() error) {
	var wg sync.WaitGroup
	for g := range c {
		n := b.N / c
		if g < b.N%c {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if err := fn(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkUpdateFunc compares the two designs for update functions on one
// hot property: read + compare-and-set script (the one Set uses) and
// WATCH/MULTI/EXEC (Python KRules' design).
//
//	go test -run '^$' -bench UpdateFunc -benchtime 2000x ./storage/redis/
func BenchmarkUpdateFunc(b *testing.B) {
	incr := storage.Mutation{Func: func(old any, _ bool) (any, error) {
		n, _ := old.(int64)
		return n + 1, nil
	}}
	for _, design := range []string{"cas", "watch"} {
		for _, c := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/c%d", design, c), func(b *testing.B) {
				be := open(b, redis.Config{})
				if design == "watch" {
					redis.UseWatch(be)
				}
				ctx := context.Background()
				b.ResetTimer()
				concurrently(b, c, func() error {
					_, _, err := be.Set(ctx, "hot", P("n"), incr)
					return err
				})
			})
		}
	}
}

// BenchmarkStore100 measures Store of 100 properties against one raw HSET
// of the same 100 fields.
func BenchmarkStore100(b *testing.B) {
	be := open(b, redis.Config{})
	ctx := context.Background()
	batch := storage.Batch{}
	raw := make([]any, 0, 200)
	for i := range 100 {
		var v any = int64(i)
		switch i % 3 {
		case 1:
			v = fmt.Sprintf("value-%d", i)
		case 2:
			v = map[string]any{"n": int64(i), "ok": true}
		}
		name := fmt.Sprintf("prop-%d", i)
		batch.Puts = append(batch.Puts, storage.Write{Key: P(name), Value: v})
		text, _ := storage.Marshal(v)
		raw = append(raw, "p"+name, text)
	}
	b.Run("backend", func(b *testing.B) {
		for b.Loop() {
			if err := be.Store(ctx, "store", batch); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-hset", func(b *testing.B) {
		for b.Loop() {
			if err := be.Client().HSet(ctx, be.Key("raw"), raw...).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSet measures the plain-value Set (one script call returning the
// old text) and the feed-mode Set against a raw HSET of the same field.
//
//	go test -run '^$' -bench 'Set$' -benchmem ./storage/redis/
func BenchmarkSet(b *testing.B) {
	ctx := context.Background()
	for _, feed := range []bool{false, true} {
		name := "backend"
		if feed {
			name = "backend-feed"
		}
		b.Run(name, func(b *testing.B) {
			be := open(b, redis.Config{ChangeFeed: feed})
			for i := 0; b.Loop(); i++ {
				if _, _, err := be.Set(ctx, "set", P("n"), storage.Mutation{Value: int64(i)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("raw-hset", func(b *testing.B) {
		be := open(b, redis.Config{})
		k := be.Key("raw")
		for i := 0; b.Loop(); i++ {
			text, _ := storage.Marshal(int64(i))
			if err := be.Client().HSet(ctx, k, "pn", text).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkInc measures Inc(1) as Set runs it (the op script, returning
// the old value) and as SetBlind runs it (one HINCRBY) against a raw
// HINCRBY of the same field.
//
//	go test -run '^$' -bench 'Inc$' -benchmem ./storage/redis/
func BenchmarkInc(b *testing.B) {
	ctx := context.Background()
	inc, _ := storage.NewOp(storage.OpInc, 1)
	b.Run("backend", func(b *testing.B) {
		be := open(b, redis.Config{})
		for b.Loop() {
			if _, _, err := be.Set(ctx, "inc", P("n"), storage.Mutation{Op: inc}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("blind", func(b *testing.B) {
		be := open(b, redis.Config{})
		for b.Loop() {
			if _, err := be.SetBlind(ctx, "inc", P("n"), inc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-hincrby", func(b *testing.B) {
		be := open(b, redis.Config{})
		k := be.Key("raw")
		for b.Loop() {
			if err := be.Client().HIncrBy(ctx, k, "pn", 1).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
