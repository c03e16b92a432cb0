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
