package storagetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

var subjectTests = []struct {
	name string
	fn   func(t *testing.T, a *appSuite)
}{
	{"Subject/CacheStoreReload", testSubjectCacheCycle},
	{"Subject/SecondHandleSeesOnlyStored", testSubjectSecondHandle},
	{"Subject/NoCacheGoesToStore", testSubjectNoCache},
	{"Subject/DeleteThenSetBeforeStore", testSubjectDeleteThenSet},
	{"Subject/FlushEvents", testSubjectFlush},
	{"Subject/ExtendedNeverEmit", testSubjectExtNoEvents},
	{"Subject/ValuesAfterReload", testSubjectValuesAfterReload},
	{"Subject/BadInputWritesNothing", testSubjectBadInput},
	{"Subject/IncOverflow", testSubjectIncOverflow},
	{"Subject/Names", testSubjectNamesApp},
	{"Subject/NameLimit", testSubjectNameLimit},
	{"Subject/NoCacheExactUnderConcurrency", testSubjectConcurrent},
	{"Subject/WriteOnlyNoCacheSet", testSubjectBlindSet},
	{"Subject/WriteOnlyNoCacheIncExact", testBlindConcurrent},
}

// subjectSubtests returns the Subject-level tests: a krules App on the
// backend.
func subjectSubtests(cfg Config) []subtest {
	out := make([]subtest, 0, len(subjectTests))
	for _, tc := range subjectTests {
		out = append(out, subtest{tc.name, func(t *testing.T) {
			a := newAppSuite(t, cfg.New)
			a.scaleDown = cfg.ScaleDown
			tc.fn(t, a)
		}})
	}
	return out
}

// appSuite is a suite with an App on its backend that records every event.
type appSuite struct {
	*suite
	app *krules.App

	mu     sync.Mutex
	events []recorded
	record bool
}

// recorded is an event as a handler saw it (values copied).
type recorded struct {
	Type     string
	Subject  string
	Property string
	Old, New any
	Payload  map[string]any
}

func (r recorded) String() string {
	if r.Property != "" {
		return fmt.Sprintf("%s(%s.%s: %s -> %s)", r.Type, r.Subject, r.Property, describe(r.Old), describe(r.New))
	}
	return fmt.Sprintf("%s(%s)", r.Type, r.Subject)
}

func newAppSuite(t *testing.T, newBackend func(t *testing.T) storage.Backend) *appSuite {
	t.Helper()
	a := &appSuite{suite: newSuite(t, newBackend), record: true}
	a.app = krules.New(
		krules.WithStorage(a.b),
		krules.WithLogger(slog.New(slog.DiscardHandler)),
		krules.WithErrorHandler(func(_ context.Context, ev *krules.Event, handler string, err error) {
			t.Errorf("handler %q failed on %s: %v", handler, ev.Type, err)
		}),
	)
	a.app.On("*").Named("storagetest-recorder").Do(func(_ context.Context, ev *krules.Event) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if !a.record {
			return nil
		}
		r := recorded{Type: ev.Type, Property: ev.PropertyName, Old: storage.Clone(ev.OldValue), New: storage.Clone(ev.NewValue)}
		if ev.Subject != nil {
			r.Subject = ev.Subject.Name()
		}
		p, _ := storage.Normalize(map[string]any(ev.Payload()))
		r.Payload, _ = p.(map[string]any)
		a.events = append(a.events, r)
		return nil
	})
	return a
}

// take returns and forgets the recorded events.
func (a *appSuite) take() []recorded {
	a.mu.Lock()
	defer a.mu.Unlock()
	ev := a.events
	a.events = nil
	return ev
}

func (a *appSuite) expectNoEvents(what string) {
	a.t.Helper()
	if ev := a.take(); len(ev) > 0 {
		a.t.Errorf("%s emitted %v, want no event", what, ev)
	}
}

// must fails the test on err.
func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// subjGet reads prop through s and compares it with want (exact types).
func subjGet(t *testing.T, ctx context.Context, s *krules.Subject, prop string, want any, opts ...krules.GetOption) {
	t.Helper()
	got, err := s.Get(ctx, prop, opts...)
	if err != nil {
		t.Errorf("Subject(%q).Get(%q): %v; want %s", s.Name(), prop, err, describe(want))
		return
	}
	if !sameTypeEqual(got, want) {
		t.Errorf("Subject(%q).Get(%q) = %s, want %s", s.Name(), prop, describe(got), describe(want))
	}
}

func subjMissing(t *testing.T, ctx context.Context, s *krules.Subject, prop string, opts ...krules.GetOption) {
	t.Helper()
	got, err := s.Get(ctx, prop, opts...)
	if !errors.Is(err, krules.ErrNotFound) {
		t.Errorf("Subject(%q).Get(%q) = (%s, %v), want an error wrapping ErrNotFound", s.Name(), prop, describe(got), err)
	}
}

func testSubjectCacheCycle(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("cycle")
	s1 := a.app.Subject(name)
	_, _, err := s1.Set(ctx, "a", 1)
	must(t, "Set a", err)
	_, _, err = s1.Set(ctx, "b", []string{"x"})
	must(t, "Set b", err)
	_, _, err = s1.SetExt(ctx, "e", true)
	must(t, "SetExt e", err)
	subjGet(t, ctx, s1, "a", int64(1))
	a.expectSnapshot(name, nil, nil) // nothing reached the store yet
	must(t, "Store", s1.Store(ctx))
	a.expectSnapshot(name, map[string]any{"a": int64(1), "b": []any{"x"}}, map[string]any{"e": true})

	// Another handle changes a and stores; s1 dropped its cache at Store,
	// so its next read reloads and sees the change.
	s2 := a.app.Subject(name)
	subjGet(t, ctx, s2, "a", int64(1))
	_, _, err = s2.Set(ctx, "a", 2)
	must(t, "Set a on the second handle", err)
	must(t, "Store of the second handle", s2.Store(ctx))
	subjGet(t, ctx, s1, "a", int64(2))
	subjGet(t, ctx, s1, "b", []any{"x"})
	ext, err := s1.ExtProps(ctx)
	must(t, "ExtProps", err)
	if want := map[string]any{"e": true}; !sameTypeEqual(ext, want) {
		t.Errorf("ExtProps after reload = %s, want %s", describe(ext), describe(want))
	}
	keys, err := s1.Keys(ctx)
	must(t, "Keys", err)
	if slices.Sort(keys); !slices.Equal(keys, []string{"a", "b"}) {
		t.Errorf("Keys after reload = %q, want [a b] (any order)", keys)
	}
	// A cached Delete reaches the store at Store.
	must(t, "Delete b", s1.Delete(ctx, "b"))
	a.expectSnapshot(name, map[string]any{"a": int64(2), "b": []any{"x"}}, map[string]any{"e": true})
	must(t, "Store after Delete", s1.Store(ctx))
	a.expectSnapshot(name, map[string]any{"a": int64(2)}, map[string]any{"e": true})
}

func testSubjectSecondHandle(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("handles")
	s1 := a.app.Subject(name)
	_, _, err := s1.Set(ctx, "x", "unsaved")
	must(t, "Set", err)
	s2 := a.app.Subject(name)
	subjMissing(t, ctx, s2, "x")
	if ok, err := a.app.Subject(name).Has(ctx, "x"); ok || err != nil {
		t.Errorf("a fresh handle's Has(x) before Store = (%v, %v), want (false, nil)", ok, err)
	}
	must(t, "Store", s1.Store(ctx))
	subjGet(t, ctx, a.app.Subject(name), "x", "unsaved")
	// s2 loaded (an empty subject) before the Store: its cache is its own.
	subjMissing(t, ctx, s2, "x")
	subjGet(t, ctx, s2, "x", "unsaved", krules.NoCache())
	subjGet(t, ctx, s2, "x", "unsaved") // the NoCache read patched the cache
}

func testSubjectNoCache(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("nocache")
	s := a.app.Subject(name)
	_, _, err := s.Set(ctx, "cached", 1) // loads the cache
	must(t, "Set cached", err)
	nv, old, err := s.Set(ctx, "direct", 5, krules.NoCache())
	must(t, "Set NoCache", err)
	if !sameTypeEqual(nv, int64(5)) || old != nil {
		t.Errorf("Set NoCache returned (%s, %s), want (int64(5), nil)", describe(nv), describe(old))
	}
	a.expectSnapshot(name, map[string]any{"direct": int64(5)}, nil)
	subjGet(t, ctx, s, "direct", int64(5)) // cache patched
	subjGet(t, ctx, a.app.Subject(name), "direct", int64(5))
	subjMissing(t, ctx, a.app.Subject(name), "cached")

	// Written behind the handle's back, read with NoCache, then cached.
	_, _, err = a.b.Set(ctx, name, pkey("behind"), storage.Mutation{Value: "fresh"})
	must(t, "backend Set", err)
	subjMissing(t, ctx, s, "behind")
	subjGet(t, ctx, s, "behind", "fresh", krules.NoCache())
	subjGet(t, ctx, s, "behind", "fresh")

	// NoCache op and delete patch the cache too.
	nv, old, err = s.Set(ctx, "direct", krules.Inc(2), krules.NoCache())
	must(t, "Inc NoCache", err)
	if !sameTypeEqual(nv, int64(7)) || !sameTypeEqual(old, int64(5)) {
		t.Errorf("Inc(2) NoCache on 5 returned (%s, %s), want (int64(7), int64(5))", describe(nv), describe(old))
	}
	subjGet(t, ctx, s, "direct", int64(7))
	must(t, "Delete NoCache", s.Delete(ctx, "behind", krules.NoCache()))
	a.expectMissing(name, pkey("behind"))
	if ok, _ := s.Has(ctx, "behind"); ok {
		t.Error("Has(behind) after a NoCache Delete = true, want false")
	}
	must(t, "Store", s.Store(ctx))
	a.expectSnapshot(name, map[string]any{"direct": int64(7), "cached": int64(1)}, nil)

	// A NoCache handle writes through on every call.
	d := a.app.Subject(name, krules.NoCache())
	_, _, err = d.SetExt(ctx, "meta", map[string]any{"k": 1})
	must(t, "SetExt on a NoCache handle", err)
	_, _, err = d.Set(ctx, "list", krules.Append("a", 1))
	must(t, "Append on a NoCache handle", err)
	a.expectSnapshot(name,
		map[string]any{"direct": int64(7), "cached": int64(1), "list": []any{"a", int64(1)}},
		map[string]any{"meta": map[string]any{"k": int64(1)}})
	a.take()
}

// testSubjectDeleteThenSet: a property deleted and set again before Store
// survives the Store (the original lost it).
func testSubjectDeleteThenSet(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("del-set")
	s := a.app.Subject(name)
	_, _, err := s.Set(ctx, "x", 1)
	must(t, "Set", err)
	_, _, err = s.SetExt(ctx, "e", 1)
	must(t, "SetExt", err)
	must(t, "Store", s.Store(ctx))

	s = a.app.Subject(name)
	must(t, "Delete x", s.Delete(ctx, "x"))
	_, _, err = s.Set(ctx, "x", 2)
	must(t, "Set x again", err)
	must(t, "DeleteExt e", s.DeleteExt(ctx, "e"))
	_, _, err = s.SetExt(ctx, "e", 2)
	must(t, "SetExt e again", err)
	must(t, "Store", s.Store(ctx))
	a.expectSnapshot(name, map[string]any{"x": int64(2)}, map[string]any{"e": int64(2)})

	// The same with a NoCache write after a cached delete.
	s = a.app.Subject(name)
	must(t, "Delete x", s.Delete(ctx, "x"))
	_, _, err = s.Set(ctx, "x", 3, krules.NoCache())
	must(t, "Set x NoCache", err)
	must(t, "Store", s.Store(ctx))
	a.expectSnapshot(name, map[string]any{"x": int64(3)}, map[string]any{"e": int64(2)})
	a.take()
}

func testSubjectFlush(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("flush")
	other := a.subject("flush-other")
	s := a.app.Subject(name)
	props := map[string]any{"a": int64(1), "b": "two", "c": []any{3.5}}
	ext := map[string]any{"e1": true, "e2": nil}
	for k, v := range props {
		_, _, err := s.Set(ctx, k, v)
		must(t, "Set", err)
	}
	for k, v := range ext {
		_, _, err := s.SetExt(ctx, k, v)
		must(t, "SetExt", err)
	}
	must(t, "Store", s.Store(ctx))
	_, _, err := a.app.Subject(other).Set(ctx, "keep", 1, krules.NoCache())
	must(t, "Set other", err)
	a.take()

	must(t, "Flush", a.app.Subject(name).Flush(ctx))
	evs := a.take()
	if len(evs) != len(props)+len(ext)+1 {
		t.Fatalf("Flush emitted %d events %v, want one %s per property (%d) then one %s", len(evs), evs, krules.PropertyDeleted, len(props)+len(ext), krules.SubjectDeleted)
	}
	check := func(group []recorded, want map[string]any, what string) {
		seen := map[string]bool{}
		for _, ev := range group {
			w, ok := want[ev.Property]
			switch {
			case ev.Type != krules.PropertyDeleted || ev.Subject != name:
				t.Errorf("Flush emitted %v where a %s of a %s was expected", ev, krules.PropertyDeleted, what)
			case !ok || seen[ev.Property]:
				t.Errorf("Flush emitted %v: not a %s of the subject, or twice (default properties come first, then extended)", ev, what)
			case !sameTypeEqual(ev.Old, w):
				t.Errorf("Flush's %v carries old value %s, want %s", ev, describe(ev.Old), describe(w))
			}
			seen[ev.Property] = true
		}
	}
	check(evs[:len(props)], props, "default property")
	check(evs[len(props):len(props)+len(ext)], ext, "extended property")
	last := evs[len(evs)-1]
	if last.Type != krules.SubjectDeleted || last.Subject != name {
		t.Errorf("Flush's last event = %v, want %s of %q", last, krules.SubjectDeleted, name)
	} else if want := map[string]any{"props": props, "ext_props": ext}; !sameTypeEqual(last.Payload, want) {
		t.Errorf("%s payload = %s, want %s", krules.SubjectDeleted, describe(last.Payload), describe(want))
	}
	a.expectSnapshot(name, nil, nil)
	a.expectSnapshot(other, map[string]any{"keep": int64(1)}, nil)
	subjMissing(t, ctx, a.app.Subject(name), "a")
}

func testSubjectExtNoEvents(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("ext-events")
	s := a.app.Subject(name)
	steps := []struct {
		what string
		do   func() error
	}{
		{"SetExt", func() error { _, _, err := s.SetExt(ctx, "e", 1); return err }},
		{"SetExt change", func() error { _, _, err := s.SetExt(ctx, "e", 2); return err }},
		{"SetExt Inc", func() error { _, _, err := s.SetExt(ctx, "e", krules.Inc(1)); return err }},
		{"SetExt NoCache", func() error { _, _, err := s.SetExt(ctx, "n", "x", krules.NoCache()); return err }},
		{"Store", func() error { return s.Store(ctx) }},
		{"DeleteExt", func() error { return s.DeleteExt(ctx, "e") }},
		{"DeleteExt NoCache", func() error { return s.DeleteExt(ctx, "n", krules.NoCache()) }},
		{"Store", func() error { return s.Store(ctx) }},
		{"Set muted", func() error { _, _, err := s.Set(ctx, "p", 1, krules.Muted()); return err }},
		{"Set of an unchanged value", func() error { _, _, err := s.Set(ctx, "p", 1.0); return err }},
		{"Store", func() error { return s.Store(ctx) }},
	}
	for _, st := range steps {
		must(t, st.what, st.do())
		a.expectNoEvents(st.what)
	}
	a.expectSnapshot(name, map[string]any{"p": int64(1)}, nil)

	// Default properties do emit, once per effective change.
	_, _, err := s.Set(ctx, "p", 2, krules.NoCache())
	must(t, "Set NoCache", err)
	evs := a.take()
	if len(evs) != 1 || evs[0].Type != krules.PropertyChanged || evs[0].Property != "p" ||
		!sameTypeEqual(evs[0].Old, int64(1)) || !sameTypeEqual(evs[0].New, int64(2)) {
		t.Errorf("Set(p, 2) NoCache over 1 emitted %v, want one %s p: 1 -> 2", evs, krules.PropertyChanged)
	}
}

// goTypedValues are Go values a handler may set, with their normalised form.
var goTypedValues = []struct {
	name string
	in   any
	want any
}{
	{"go int", 7, int64(7)},
	{"go uint16", uint16(9), int64(9)},
	{"go float32", float32(0.5), 0.5},
	{"go integral float", 2.0, int64(2)},
	{"go string slice", []string{"a", "b"}, []any{"a", "b"}},
	{"go int slice", []int{1, 2}, []any{int64(1), int64(2)}},
	{"go typed map", map[string]float64{"x": 1.5, "y": 2}, map[string]any{"x": 1.5, "y": int64(2)}},
	{"go struct", point{X: 3, Y: 4.25}, map[string]any{"x": int64(3), "y": 4.25}},
	{"go pointer", &point{X: 1}, map[string]any{"x": int64(1), "y": int64(0)}},
	{"go nil slice", []int(nil), nil},
}

// testSubjectValuesAfterReload: what a handler sees in the change event
// equals (same Go types) what any handle reads after a reload from the store.
func testSubjectValuesAfterReload(t *testing.T, a *appSuite) {
	ctx := a.ctx
	type tc struct {
		name    string
		in, out any
	}
	var cases []tc
	for _, c := range roundTripValues {
		cases = append(cases, tc{c.name, storage.Clone(c.v), c.v})
	}
	for _, c := range goTypedValues {
		cases = append(cases, tc{c.name, c.in, c.want})
	}
	for _, mode := range []string{"cached", "NoCache"} {
		name := a.subject("reload-" + mode)
		var opts []krules.SetOption
		if mode == "NoCache" {
			opts = append(opts, krules.NoCache())
		}
		s := a.app.Subject(name)
		seen := map[string]any{}
		for _, c := range cases {
			nv, _, err := s.Set(ctx, c.name, c.in, opts...)
			must(t, fmt.Sprintf("%s Set(%s)", mode, c.name), err)
			if !sameTypeEqual(nv, c.out) {
				t.Errorf("%s Set(%q, %#v) returned %s, want %s", mode, c.name, c.in, describe(nv), describe(c.out))
			}
			evs := a.take()
			switch {
			case c.out == nil && len(evs) == 0: // nil over missing is no change
				seen[c.name] = nil
			case len(evs) != 1 || evs[0].Property != c.name:
				t.Errorf("%s Set(%q) emitted %v, want one %s", mode, c.name, evs, krules.PropertyChanged)
			default:
				seen[c.name] = evs[0].New
				if !sameTypeEqual(evs[0].New, c.out) {
					t.Errorf("%s Set(%q): the handler saw %s, want %s", mode, c.name, describe(evs[0].New), describe(c.out))
				}
			}
		}
		must(t, "Store", s.Store(ctx))
		fresh := a.app.Subject(name)
		for _, c := range cases {
			got, err := fresh.Get(ctx, c.name)
			if err != nil {
				t.Errorf("%s: Get(%q) after reload: %v", mode, c.name, err)
			} else if !sameTypeEqual(got, seen[c.name]) {
				t.Errorf("%s: after a reload Get(%q) = %s, but the handler saw %s before the Store", mode, c.name, describe(got), describe(seen[c.name]))
			}
		}
		d, err := fresh.Dict(ctx)
		must(t, "Dict", err)
		for _, c := range cases {
			if !sameTypeEqual(d[c.name], seen[c.name]) {
				t.Errorf("%s: Dict()[%q] = %s, want %s", mode, c.name, describe(d[c.name]), describe(seen[c.name]))
			}
		}
	}
}

func testSubjectBadInput(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("bad")
	s := a.app.Subject(name)
	_, _, err := s.Set(ctx, "v", "before", krules.NoCache())
	must(t, "Set", err)
	a.take()
	errBoom := errors.New("storagetest: refused")
	for _, mode := range []string{"cached", "NoCache"} {
		var opts []krules.SetOption
		if mode == "NoCache" {
			opts = append(opts, krules.NoCache())
		}
		for _, c := range []struct {
			what      string
			value     any
			is        error
			onMissing bool // also refused on a missing property
		}{
			{"a channel", make(chan int), krules.ErrInvalidValue, true},
			{"a func inside a map", map[string]any{"f": func() {}}, krules.ErrInvalidValue, true},
			{"NaN", math.NaN(), krules.ErrInvalidValue, true},
			{"an update function error", krules.UpdateAny(func(any, bool) (any, error) { return nil, errBoom }), errBoom, true},
			{"an update function panic", krules.Update(func(any) any { panic("storagetest: boom") }), nil, true},
			{"Inc on a string", krules.Inc(1), krules.ErrInvalidValue, false},
			{"Append on a string", krules.Append(1), krules.ErrInvalidValue, false},
		} {
			props := []string{"v"}
			if c.onMissing {
				props = append(props, "new")
			}
			for _, prop := range props {
				_, _, err := s.Set(ctx, prop, c.value, opts...)
				if c.is == nil && err == nil || c.is != nil && !errors.Is(err, c.is) {
					want := "an error"
					if c.is != nil {
						want = fmt.Sprintf("an error wrapping %v", c.is)
					}
					t.Errorf("%s Set(%q) of %s = %v, want %s", mode, prop, c.what, err, want)
				}
			}
		}
		must(t, "Store", s.Store(ctx))
		a.expectSnapshot(name, map[string]any{"v": "before"}, nil)
		a.expectNoEvents(mode + " refused Sets")
	}
	_, _, err = s.Set(ctx, "", 1)
	if !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("Set of an empty property name = %v, want ErrInvalidName", err)
	}
	a.expectSnapshot(name, map[string]any{"v": "before"}, nil)
}

func testSubjectNamesApp(t *testing.T, a *appSuite) {
	ctx := a.ctx
	a.record = false
	for _, n := range trickyNames {
		s := a.app.Subject(a.subject(n))
		_, _, err := s.Set(ctx, n, n)
		must(t, fmt.Sprintf("Set on subject %q", s.Name()), err)
		must(t, "Store", s.Store(ctx))
	}
	must(t, "Flush *", a.app.Subject(a.subject("*")).Flush(ctx))
	must(t, "Flush a?", a.app.Subject(a.subject("a?")).Flush(ctx))
	for _, n := range trickyNames {
		s := a.app.Subject(a.subject(n))
		keys, err := s.Keys(ctx)
		must(t, "Keys", err)
		if n == "*" || n == "a?" {
			if len(keys) != 0 {
				t.Errorf("flushed subject %q still has %q", s.Name(), keys)
			}
			continue
		}
		if !slices.Equal(keys, []string{n}) {
			t.Errorf("subject %q has properties %q, want only %q", s.Name(), keys, n)
		}
		subjGet(t, ctx, s, n, n)
	}
}

// testSubjectConcurrent: NoCache Inc and Update from many goroutines (each
// with its own handle) give exact totals, and every change event saw a
// distinct step.
func testSubjectConcurrent(t *testing.T, a *appSuite) {
	ctx, name := a.ctx, a.subject("concurrent")
	a.record = false
	goroutines, updates := a.concurrency()
	var (
		mu        sync.Mutex
		incSteps  []int64
		conflicts int
	)
	a.app.On(krules.PropertyChanged).When(func(_ context.Context, ev *krules.Event) bool {
		return ev.Subject.Name() == name && ev.PropertyName == "inc"
	}).Do(func(_ context.Context, ev *krules.Event) error {
		n, ok := ev.NewValue.(int64)
		if !ok {
			return fmt.Errorf("change event carries %s, want int64", describe(ev.NewValue))
		}
		mu.Lock()
		incSteps = append(incSteps, n)
		mu.Unlock()
		return nil
	})
	retry := func(f func() error) error {
		for range 1000 {
			err := f()
			if !errors.Is(err, krules.ErrConflict) {
				return err
			}
			mu.Lock()
			conflicts++
			mu.Unlock()
		}
		return errors.New("1000 consecutive ErrConflict")
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			s := a.app.Subject(name, krules.NoCache())
			for range updates {
				err := retry(func() error { _, _, err := s.Set(ctx, "inc", krules.Inc(1)); return err })
				if err == nil {
					err = retry(func() error {
						_, _, err := s.Set(ctx, "upd", krules.Update(func(c int) int { return c + 1 }))
						return err
					})
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d: %w", g, err)
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
	if conflicts > 0 {
		t.Logf("%d updates returned ErrConflict and were retried", conflicts)
	}
	n := int64(goroutines * updates)
	checkSequence(t, "values seen by Inc change events", incSteps, n)
	fresh := a.app.Subject(name)
	subjGet(t, ctx, fresh, "inc", n)
	subjGet(t, ctx, fresh, "upd", n)
}
