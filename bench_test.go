package krules_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/krules-go/krules"
)

// Instructions per op, as in the README's hot-path table (two runs with the
// same fixed cost, the difference divided by the extra iterations):
//
//	go test -c -o /tmp/k.test .
//	cg() { GOGC=off GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind \
//	  --callgrind-out-file=/tmp/cg.$2 /tmp/k.test -test.run '^$' -test.bench "$1" \
//	  -test.benchtime ${2}x >/dev/null 2>&1; grep '^totals:' /tmp/cg.$2 | cut -d' ' -f2; }
//	B='^BenchmarkEmit$/^1-of-1000$'; echo $(( ($(cg "$B" 300000) - $(cg "$B" 100000)) / 200000 ))
//
// (asyncpreemptoff: callgrind aborts on Go's preemption signals; anchor
// every level of the pattern, "^BenchmarkEmit" alone also runs
// BenchmarkEmit10000Types.)
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

// BenchmarkEmit10000Types emits 10,000 distinct event types in turn, each
// matched by one glob handler among 1000 handlers: the match cache must
// evict and keep admitting.
func BenchmarkEmit10000Types(b *testing.B) {
	app, s := benchApp(1000)
	app.On("evt.*").Do(func(context.Context, *krules.Event) error { return nil })
	types := make([]string, 10000)
	for i := range types {
		types[i] = fmt.Sprintf("evt.%d", i)
	}
	p := krules.Payload{"amount": 1500}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		app.Emit(ctx, types[i%len(types)], s, p)
		i++
	}
}

// BenchmarkSetMuted measures a muted cached Set (a PropertyChanged handler
// is registered, so muting is what keeps the event away).
func BenchmarkSetMuted(b *testing.B) {
	app := krules.New()
	app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { return nil })
	s := app.Subject("counter")
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		s.Set(ctx, "n", i, krules.Muted())
	}
}

// bigValue returns a map of about 100 KB (1000 entries of ~100 bytes).
func bigValue(tag int) map[string]any {
	m := make(map[string]any, 1000)
	for i := range 1000 {
		m[fmt.Sprintf("key%04d", i)] = fmt.Sprintf("%d-%090d", tag, i)
	}
	return m
}

// BenchmarkSetCached100KB sets a 100 KB map value (alternating two) on a
// cached handle with one PropertyChanged handler.
func BenchmarkSetCached100KB(b *testing.B) {
	app := krules.New()
	app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { return nil })
	s := app.Subject("big")
	ctx := context.Background()
	vals := []map[string]any{bigValue(1), bigValue(2)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Set(ctx, "doc", vals[i&1])
		i++
	}
}

// Raw baselines of the benchmarks above, measured in the same run: the
// hand-written code a user would otherwise write.

type rawLockedMap struct {
	mu sync.Mutex
	m  map[string]any
}

func (l *rawLockedMap) set(k string, v any) (old any) {
	l.mu.Lock()
	old = l.m[k]
	l.m[k] = v
	l.mu.Unlock()
	return old
}

func (l *rawLockedMap) get(k string) any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[k]
}

type rawEvent struct {
	typ     string
	payload map[string]any
}

// BenchmarkEmitRaw: a map lookup and a slice of funcs (1000 types).
func BenchmarkEmitRaw(b *testing.B) {
	bus := map[string][]func(context.Context, *rawEvent) error{}
	h := func(context.Context, *rawEvent) error { return nil }
	for i := range 1000 {
		t := fmt.Sprintf("type%d.created", i)
		bus[t] = append(bus[t], h)
	}
	bus["order.created"] = append(bus["order.created"], h)
	p := map[string]any{"amount": 1500}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		for _, f := range bus["order.created"] {
			f(ctx, &rawEvent{typ: "order.created", payload: p})
		}
	}
}

// BenchmarkSetCachedEventRaw: a locked map set and a change callback.
func BenchmarkSetCachedEventRaw(b *testing.B) {
	l := &rawLockedMap{m: map[string]any{}}
	h := func(context.Context, *rawEvent) error { return nil }
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		v := int64(i)
		if old := l.set("n", v); old != v {
			h(ctx, &rawEvent{typ: "changed", payload: map[string]any{"property_name": "n", "old_value": old, "value": v}})
		}
	}
}

// BenchmarkSetMutedRaw: a locked map set.
func BenchmarkSetMutedRaw(b *testing.B) {
	l := &rawLockedMap{m: map[string]any{}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		l.set("n", int64(i))
	}
}

// BenchmarkSetNoCacheRaw: a locked map set of a constant.
func BenchmarkSetNoCacheRaw(b *testing.B) {
	l := &rawLockedMap{m: map[string]any{}}
	b.ReportAllocs()
	for b.Loop() {
		l.set("status", "active")
	}
}

// BenchmarkGetCachedRaw: a locked map get.
func BenchmarkGetCachedRaw(b *testing.B) {
	l := &rawLockedMap{m: map[string]any{"name": "John"}}
	b.ReportAllocs()
	for b.Loop() {
		_ = l.get("name")
	}
}
