package storagetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
)

// roundTripValues are values of the model, already in normalised form,
// that every backend must give back with identical Go types.
var roundTripValues = []struct {
	name string
	v    any
}{
	{"null", nil},
	{"true", true},
	{"false", false},
	{"zero", int64(0)},
	{"int", int64(42)},
	{"negative int", int64(-17)},
	{"2^53", int64(1 << 53)},
	{"2^53+1", int64(1<<53 + 1)},
	{"max int64", int64(math.MaxInt64)},
	{"min int64", int64(math.MinInt64)},
	{"float", 3.25},
	{"negative float", -0.5},
	{"tenth", 0.1},
	{"0.1+0.2", 0.1 + 0.2},
	{"pi", math.Pi},
	{"huge float", 1e300},
	{"tiny float", 1e-300},
	{"integral float beyond int64", 1e20},
	{"max float", math.MaxFloat64},
	{"smallest float", math.SmallestNonzeroFloat64},
	{"string", "hello"},
	{"empty string", ""},
	{"unicode", "héllo wörld ñ 日本語 Ελληνικά"},
	{"emoji", "🙂👍🏽 👨‍👩‍👧 🏳️‍🌈"},
	{"quotes and backslashes", `she said "hi" \ C:\path\ \n \u0041 '`},
	{"control characters", "line1\nline2\ttab\r\x01\x1f"},
	{"html", `<a href="x">&amp;</a>`},
	{"line separators", "a\u2028b\u2029c"},
	{"json-looking string", `{"a":1}`},
	{"number-looking string", "42"},
	{"null-looking string", "null"},
	{"empty list", []any{}},
	{"empty map", map[string]any{}},
	{"list", []any{int64(1), "two", 3.5, true, nil, []any{}, map[string]any{}}},
	{"nested", map[string]any{
		"a":            []any{map[string]any{"b": int64(1), "c": []any{"x", 0.5}}, []any{}},
		"empty":        map[string]any{},
		"null":         nil,
		"":             "empty key",
		"ключ 🙂":       "unicode key",
		"with \"quote": `and \ backslash`,
		"big":          int64(math.MaxInt64),
		"float":        -2.5,
	}},
	{"deep", deepValue(24)},
}

// deepValue nests maps and lists n levels deep.
func deepValue(n int) any {
	var v any = "bottom"
	for i := range n {
		if i%2 == 0 {
			v = []any{v, int64(i)}
		} else {
			v = map[string]any{"level": int64(i), "next": v}
		}
	}
	return v
}

func testRoundTrip(t *testing.T, s *suite) {
	viaSet := s.subject("values-set")
	viaStore := s.subject("values-store")
	viaFunc := s.subject("values-func")
	all := map[string]any{}
	for _, c := range roundTripValues {
		all[c.name] = c.v
		t.Run(c.name, func(t *testing.T) {
			s := s.with(t)
			for _, k := range []storage.Key{pkey(c.name), ekey(c.name)} {
				nv, ov := s.set(viaSet, k, c.v)
				if !sameTypeEqual(nv, c.v) || ov != nil {
					t.Errorf("Set(%s, %s) returned (new %s, old %s), want (%s, nil)", keyString(k), describe(c.v), describe(nv), describe(ov), describe(c.v))
				}
				s.expectValue(viaSet, k, c.v)

				nv, _, err := s.b.Set(s.ctx, viaFunc, k, storage.Mutation{Func: func(any, bool) (any, error) { return storage.Clone(c.v), nil }})
				if err != nil {
					t.Errorf("Set(%s) with an update function returning %s: %v", keyString(k), describe(c.v), err)
				} else if !sameTypeEqual(nv, c.v) {
					t.Errorf("Set(%s) with an update function returned new %s, want %s", keyString(k), describe(nv), describe(c.v))
				}
				s.expectValue(viaFunc, k, c.v)
				// Replace it by itself: old must come back identical.
				if _, ov := s.set(viaFunc, k, c.v); !sameTypeEqual(ov, c.v) {
					t.Errorf("Set(%s) over %s returned old %s", keyString(k), describe(c.v), describe(ov))
				}
			}
			s.store(viaStore, storage.Batch{Puts: []storage.Write{
				{Key: pkey(c.name), Value: storage.Clone(c.v)},
				{Key: ekey(c.name), Value: storage.Clone(c.v)},
			}})
			s.expectValue(viaStore, pkey(c.name), c.v)
			s.expectValue(viaStore, ekey(c.name), c.v)
		})
	}
	for _, subj := range []string{viaSet, viaStore, viaFunc} {
		s.expectSnapshot(subj, all, all)
		ext, err := s.b.ExtProps(s.ctx, subj)
		if err != nil {
			t.Fatalf("ExtProps(%q): %v", subj, err)
		}
		compareProps(t, fmt.Sprintf("ExtProps(%q)", subj), ext, all)
	}
}

// testNoAliasing: values handed to the backend or received from it are not
// shared with what it stores.
func testNoAliasing(t *testing.T, s *suite) {
	subj := s.subject("alias")
	in := map[string]any{"n": int64(1), "l": []any{int64(1)}}
	want := storage.Clone(in)
	if _, _, err := s.b.Set(s.ctx, subj, pkey("m"), storage.Mutation{Value: in}); err != nil {
		t.Fatal(err)
	}
	in["n"] = int64(99)
	in["l"].([]any)[0] = int64(99)
	s.expectValue(subj, pkey("m"), want)

	batch := map[string]any{"b": []any{"x"}}
	s.store(subj, storage.Batch{Puts: []storage.Write{{Key: pkey("b"), Value: batch}}})
	batch["b"].([]any)[0] = "changed"
	s.expectValue(subj, pkey("b"), map[string]any{"b": []any{"x"}})

	got := s.get(subj, pkey("m")).(map[string]any)
	got["n"] = int64(100)
	got["l"].([]any)[0] = int64(100)
	s.expectValue(subj, pkey("m"), want)

	snap := s.load(subj)
	for _, p := range snap.Props {
		if m, ok := p.Value.(map[string]any); ok {
			m["added"] = true
		}
	}
	s.expectValue(subj, pkey("m"), want)

	nv, _, err := s.b.Set(s.ctx, subj, pkey("f"), storage.Mutation{Func: func(any, bool) (any, error) {
		return map[string]any{"k": []any{int64(1)}}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	nv.(map[string]any)["k"].([]any)[0] = "mutated"
	s.expectValue(subj, pkey("f"), map[string]any{"k": []any{int64(1)}})
}

// trickyNames must all be taken literally, as distinct subject and property
// names: no glob, LIKE, regexp, printf, path or key-separator meaning.
var trickyNames = []string{
	"plain", "a", ":", "a:b", "s:a", "*", "a*", "ab", "abc", "a?", "?", "[", "]", "[ab]", "a[b]", "[!a]",
	"{}", "{a}", "a{b}c", " ", "a b", "a  b", " lead", "trail ", "'", `"`, "'quoted'", `"quoted"`,
	"%", "%s", "%%", "%_", "_", `\`, `a\b`, `\*`, "é", "e\u0301", "日本語", "🙂", "tab\t", "new\nline",
	"p", "e", "pa", "ea", "pp", "ee", ".", "..", "/", "a/b", "#", "$1", "^a$", "(a|b)", "+", "a.b",
	"null", "true", "0", "-1", "name", "ext",
}

func testSubjectNames(t *testing.T, s *suite) {
	names := make([]string, len(trickyNames))
	for i, n := range trickyNames {
		names[i] = s.subject(n)
		s.set(names[i], pkey("v"), n)
		s.set(names[i], ekey("v"), n)
	}
	for i, subj := range names {
		s.expectSnapshot(subj, map[string]any{"v": trickyNames[i]}, map[string]any{"v": trickyNames[i]})
	}
	// Flushing (and deleting from) glob-like names touches nothing else.
	flushed := map[string]bool{}
	for _, n := range []string{"*", "a*", "a?", "?", "[ab]", "[!a]", "%", "%_", "_", `\*`, ".", "^a$", "(a|b)", "{}"} {
		subj := s.subject(n)
		if _, err := s.b.Delete(s.ctx, subj, pkey("v")); err != nil {
			t.Errorf("Delete(%q, v): %v", subj, err)
		}
		if err := s.b.Flush(s.ctx, subj); err != nil {
			t.Errorf("Flush(%q): %v", subj, err)
		}
		flushed[n] = true
	}
	for i, subj := range names {
		if flushed[trickyNames[i]] {
			s.expectSnapshot(subj, nil, nil)
		} else {
			s.expectSnapshot(subj, map[string]any{"v": trickyNames[i]}, map[string]any{"v": trickyNames[i]})
		}
	}
}

func testPropertyNames(t *testing.T, s *suite) {
	subj := s.subject("prop-names")
	props, ext := map[string]any{}, map[string]any{}
	for _, n := range trickyNames {
		props[n] = "p:" + n
		ext[n] = "e:" + n
		s.set(subj, pkey(n), props[n])
	}
	puts := make([]storage.Write, 0, len(trickyNames))
	for _, n := range trickyNames {
		puts = append(puts, storage.Write{Key: ekey(n), Value: ext[n]})
	}
	s.store(subj, storage.Batch{Puts: puts})
	for _, n := range trickyNames {
		s.expectValue(subj, pkey(n), props[n])
		s.expectValue(subj, ekey(n), ext[n])
	}
	s.expectSnapshot(subj, props, ext)

	for _, n := range []string{"*", "a*", "?", "[ab]", "%", "_", "p", "e"} {
		old, err := s.b.Delete(s.ctx, subj, pkey(n))
		if err != nil || !sameTypeEqual(old, props[n]) {
			t.Errorf("Delete(default %q) = (%s, %v), want (%q, nil)", n, describe(old), err, props[n])
		}
		delete(props, n)
	}
	for _, n := range []string{"a?", "ab", "ea", "pa"} {
		if _, err := s.b.Delete(s.ctx, subj, ekey(n)); err != nil {
			t.Errorf("Delete(extended %q): %v", n, err)
		}
		delete(ext, n)
	}
	s.store(subj, storage.Batch{Deletes: []storage.Key{pkey("%%"), ekey("[")}})
	delete(props, "%%")
	delete(ext, "[")
	s.expectSnapshot(subj, props, ext)
	got, err := s.b.ExtProps(s.ctx, subj)
	if err != nil {
		t.Fatal(err)
	}
	compareProps(t, "ExtProps", got, ext)
}

func testCancelled(t *testing.T, s *suite) {
	subj := s.subject("cancelled")
	s.set(subj, pkey("a"), int64(1))
	s.set(subj, ekey("e"), "ext")
	ctx, cancel := context.WithCancel(s.ctx)
	cancel()
	inc, _ := storage.NewOp(storage.OpInc, 1)
	calls := []struct {
		name string
		call func() error
	}{
		{"Load", func() error { _, err := s.b.Load(ctx, subj); return err }},
		{"Get", func() error { _, err := s.b.Get(ctx, subj, pkey("a")); return err }},
		{"ExtProps", func() error { _, err := s.b.ExtProps(ctx, subj); return err }},
		{"Set value", func() error {
			_, _, err := s.b.Set(ctx, subj, pkey("a"), storage.Mutation{Value: int64(2)})
			return err
		}},
		{"Set new property", func() error {
			_, _, err := s.b.Set(ctx, subj, pkey("b"), storage.Mutation{Value: int64(2)})
			return err
		}},
		{"Set update function", func() error {
			_, _, err := s.b.Set(ctx, subj, pkey("a"), storage.Mutation{Func: incFunc})
			return err
		}},
		{"Set OpInc", func() error { _, _, err := s.b.Set(ctx, subj, pkey("a"), storage.Mutation{Op: inc}); return err }},
		{"Store", func() error {
			return s.b.Store(ctx, subj, storage.Batch{Deletes: []storage.Key{pkey("a"), ekey("e")}, Puts: []storage.Write{{Key: pkey("c"), Value: int64(3)}}})
		}},
		{"Delete", func() error { _, err := s.b.Delete(ctx, subj, pkey("a")); return err }},
		{"Delete extended", func() error { _, err := s.b.Delete(ctx, subj, ekey("e")); return err }},
		{"Flush", func() error { return s.b.Flush(ctx, subj) }},
		{"Load of an unknown subject", func() error { _, err := s.b.Load(ctx, s.subject("cancelled-unknown")); return err }},
		{"Set on an unknown subject", func() error {
			_, _, err := s.b.Set(ctx, s.subject("cancelled-unknown"), pkey("a"), storage.Mutation{Value: int64(1)})
			return err
		}},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: err = %v, want an error wrapping context.Canceled", c.name, err)
		}
	}
	s.expectSnapshot(subj, map[string]any{"a": int64(1)}, map[string]any{"e": "ext"})
	s.expectSnapshot(s.subject("cancelled-unknown"), nil, nil)
}

// concurrency returns the goroutine and update counts of the concurrent
// tests: 32 × 500; 32 × 100 under the race detector, which checks the same
// exact totals and finds data races with any count but makes every update
// an order of magnitude slower; 32 × 50 with -short. Config.ScaleDown
// divides the update count, which stays at least 5 (some tests run a fifth
// of it).
func (s *suite) concurrency() (goroutines, updates int) {
	updates = 500
	switch {
	case testing.Short():
		updates = 50
	case testenv.Race:
		updates = 100
	}
	return 32, max(updates/max(s.scaleDown, 1), 5)
}

// hammer runs goroutines × updates increments-by-one of k with m and
// checks the exact outcome: every Set returned old = new-1, the returned new
// values are exactly 1..N, and the stored value is N.
func hammer(t *testing.T, s *suite, subj string, k storage.Key, m storage.Mutation, what string) {
	t.Helper()
	goroutines, updates := s.concurrency()
	var (
		mu        sync.Mutex
		vals      []int64
		errs      []error
		conflicts int
		start     = make(chan struct{})
		wg        sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			<-start
			mine := make([]int64, 0, updates)
			retried := 0
			var err error
			for range updates {
				var nv, ov any
				if nv, ov, err = setRetrying(s.ctx, s.b, subj, k, m, &retried); err != nil {
					break
				}
				var n int64
				if n, err = checkInc(what, nv, ov); err != nil {
					break
				}
				mine = append(mine, n)
			}
			mu.Lock()
			defer mu.Unlock()
			vals = append(vals, mine...)
			conflicts += retried
			if err != nil {
				errs = append(errs, fmt.Errorf("goroutine %d: %w", g, err))
			}
		})
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if conflicts > 0 {
		t.Logf("%d updates returned ErrConflict and were retried", conflicts)
	}
	n := int64(goroutines * updates)
	checkSequence(t, what, vals, n)
	if v, err := s.b.Get(s.ctx, subj, k); err != nil || !sameTypeEqual(v, n) {
		t.Errorf("%s: after %d goroutines × %d updates the value is (%s, %v), want exactly int64(%d)", what, goroutines, updates, describe(v), err, n)
	}
}

func testConcurrentFunc(t *testing.T, s *suite) {
	subj := s.subject("conc-func")
	hammer(t, s, subj, pkey("n"), storage.Mutation{Func: incFunc}, "update-function increments")
	hammer(t, s, subj, ekey("n"), storage.Mutation{Func: incFunc}, "update-function increments of an extended property")
}

func testConcurrentOpInc(t *testing.T, s *suite) {
	subj := s.subject("conc-op")
	inc, err := storage.NewOp(storage.OpInc, 1)
	if err != nil {
		t.Fatal(err)
	}
	hammer(t, s, subj, pkey("n"), storage.Mutation{Op: inc}, "OpInc increments")
	hammer(t, s, subj, ekey("n"), storage.Mutation{Op: inc}, "OpInc increments of an extended property")
}

// testConcurrentMixed runs the workload of Contention in this process:
// counters updated by function and by OpInc while other properties of the
// same subject are written by plain Sets and Store batches.
func testConcurrentMixed(t *testing.T, s *suite) {
	subj := s.subject("conc-mixed")
	goroutines, updates := s.concurrency()
	updates /= 5
	report, errs := mixedWorkload(s.ctx, s.b, subj, 0, goroutines, updates)
	for _, err := range errs {
		t.Error(err)
	}
	verifyWorkload(t, s.ctx, s.b, subj, ContentionConfig{Procs: 1, Goroutines: goroutines, Updates: updates}, []childReport{report})
}

// testConcurrentSubjects: goroutines working on different subjects do not
// interfere.
func testConcurrentSubjects(t *testing.T, s *suite) {
	goroutines, updates := s.concurrency()
	updates /= 5
	inc, _ := storage.NewOp(storage.OpInc, 1)
	subjects := make([]string, goroutines)
	for g := range subjects {
		subjects[g] = s.subject(fmt.Sprintf("conc-subject-%d", g))
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g, subj := range subjects {
		wg.Go(func() {
			for i := range updates {
				if _, _, err := s.b.Set(s.ctx, subj, pkey("op"), storage.Mutation{Op: inc}); err != nil {
					errs <- fmt.Errorf("subject %q: OpInc: %w", subj, err)
					return
				}
				if _, _, err := s.b.Set(s.ctx, subj, pkey("func"), storage.Mutation{Func: incFunc}); err != nil {
					errs <- fmt.Errorf("subject %q: update function: %w", subj, err)
					return
				}
				err := s.b.Store(s.ctx, subj, storage.Batch{Puts: []storage.Write{
					{Key: pkey("last"), Value: int64(i)},
					{Key: ekey("owner"), Value: int64(g)},
				}})
				if err != nil {
					errs <- fmt.Errorf("subject %q: Store: %w", subj, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for g, subj := range subjects {
		s.expectSnapshot(subj,
			map[string]any{"op": int64(updates), "func": int64(updates), "last": int64(updates - 1)},
			map[string]any{"owner": int64(g)})
	}
}

// testLister checks storage.Lister when the backend implements it: the
// prefix is literal, flushed subjects are gone.
func testLister(t *testing.T, s *suite) {
	l, ok := s.b.(storage.Lister)
	if !ok {
		t.Skipf("%T does not implement storage.Lister", s.b)
	}
	list := func(ctx context.Context, prefix string) []string {
		t.Helper()
		var out []string
		for name, err := range l.List(ctx, prefix) {
			if err != nil {
				t.Fatalf("List(%q): %v", prefix, err)
			}
			out = append(out, name)
		}
		slices.Sort(out)
		return out
	}
	for _, n := range []string{"list/a", "list/a*", "list/ab", "list/a%", "list/b", "list/gone"} {
		s.set(s.subject(n), pkey("v"), 1)
	}
	if err := s.b.Flush(s.ctx, s.subject("list/gone")); err != nil {
		t.Fatal(err)
	}
	sorted := func(names ...string) []string {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = s.subject(n)
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"list/", sorted("list/a", "list/a*", "list/ab", "list/a%", "list/b")},
		{"list/a", sorted("list/a", "list/a*", "list/ab", "list/a%")},
		{"list/a*", sorted("list/a*")},
		{"list/a%", sorted("list/a%")},
		{"list/?", nil},
		{"list/gone", nil},
	} {
		if got := list(s.ctx, s.subject(c.prefix)); !slices.Equal(got, c.want) {
			t.Errorf("List(%q) = %q, want %q", s.subject(c.prefix), got, c.want)
		}
	}
	all := list(s.ctx, "")
	for _, n := range sorted("list/a", "list/b") {
		if !slices.Contains(all, n) {
			t.Errorf("List(\"\") lacks %q", n)
		}
	}
	// Stopping early is fine.
	for range l.List(s.ctx, s.subject("list/")) {
		break
	}
	ctx, cancel := context.WithCancel(s.ctx)
	cancel()
	var gotErr error
	for _, err := range l.List(ctx, s.subject("list/")) {
		if err != nil {
			gotErr = err
			break
		}
	}
	if !errors.Is(gotErr, context.Canceled) {
		t.Errorf("List with a cancelled context yielded error %v, want one wrapping context.Canceled", gotErr)
	}
}
