package krules_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/krules-go/krules"
)

func benchApp(n int) (*krules.App, *krules.Subject) {
	app := krules.New()
	h := func(context.Context, *krules.Event) error { return nil }
	for i := 0; i < n-1; i++ {
		if i%2 == 0 {
			app.On(fmt.Sprintf("type%d.created", i)).Do(h)
		} else {
			app.On(fmt.Sprintf("glob%d.*", i), fmt.Sprintf("g%d.[ab]?", i)).Do(h)
		}
	}
	app.On("order.created").Do(h)
	return app, app.Subject("order-1")
}

// BenchmarkEmit measures one emit that matches one handler among n.
func BenchmarkEmit(b *testing.B) {
	for _, n := range []int{1, 10, 1000} {
		b.Run(fmt.Sprintf("1-of-%d", n), func(b *testing.B) {
			app, s := benchApp(n)
			p := krules.Payload{"amount": 1500}
			b.ReportAllocs()
			for b.Loop() {
				app.Emit(context.Background(), "order.created", s, p)
			}
		})
	}
}

func BenchmarkEmitNoMatch(b *testing.B) {
	app, s := benchApp(1000)
	b.ReportAllocs()
	for b.Loop() {
		app.Emit(context.Background(), "nobody.listens", s, nil)
	}
}

func BenchmarkSetCachedEvent(b *testing.B) {
	app := krules.New()
	app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { return nil })
	s := app.Subject("counter")
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		s.Set(ctx, "n", i)
	}
}

func BenchmarkSetNoCache(b *testing.B) {
	s := krules.New().Subject("direct", krules.NoCache())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		s.Set(ctx, "status", "active")
	}
}

func BenchmarkIncNoCacheParallel(b *testing.B) {
	app := krules.New()
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		s := app.Subject("counter", krules.NoCache())
		for pb.Next() {
			s.Set(ctx, "n", krules.Inc(1))
		}
	})
}

func BenchmarkGetCached(b *testing.B) {
	s := krules.New().Subject("reader")
	ctx := context.Background()
	s.Set(ctx, "name", "John")
	b.ReportAllocs()
	for b.Loop() {
		s.Get(ctx, "name")
	}
}

// BenchmarkStore100 measures 100 cached Sets and one Store on a fresh handle.
func BenchmarkStore100(b *testing.B) {
	app := krules.New()
	ctx := context.Background()
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("field%d", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		s := app.Subject("wide")
		for i, n := range names {
			s.Set(ctx, n, i)
		}
		s.Store(ctx)
	}
}
