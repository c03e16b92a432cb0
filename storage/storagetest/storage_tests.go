package storagetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
)

func testLoadUnknown(t *testing.T, s *suite) {
	subj := s.subject("unknown")
	snap := s.load(subj)
	if len(snap.Props) != 0 || len(snap.Ext) != 0 {
		t.Errorf("Load of an unknown subject = %+v, want an empty snapshot", snap)
	}
	ext, err := s.b.ExtProps(s.ctx, subj)
	if err != nil || len(ext) != 0 {
		t.Errorf("ExtProps of an unknown subject = (%+v, %v), want (empty, nil)", ext, err)
	}
	s.expectMissing(subj, pkey("x"))
	s.expectMissing(subj, ekey("x"))
	// Reading must not create it.
	if snap := s.load(subj); len(snap.Props)+len(snap.Ext) != 0 {
		t.Errorf("reads created properties: %+v", snap)
	}
}

func testLoadAll(t *testing.T, s *suite) {
	subj := s.subject("load-all")
	props := map[string]any{
		"name": "John", "age": int64(30), "score": 9.5, "active": true, "none": nil,
		"tags": []any{"a", "b"}, "addr": map[string]any{"city": "Rome", "zip": "00100"},
	}
	ext := map[string]any{"source": "import", "version": int64(3)}
	for name, v := range props {
		s.set(subj, pkey(name), v)
	}
	for name, v := range ext {
		s.set(subj, ekey(name), v)
	}
	s.expectSnapshot(subj, props, ext)
	// Other subjects are unaffected.
	s.expectSnapshot(s.subject("load-all-other"), nil, nil)
}

func testSetNewOld(t *testing.T, s *suite) {
	subj := s.subject("set")
	for _, k := range []storage.Key{pkey("v"), ekey("v")} {
		nv, ov := s.set(subj, k, "first")
		if !sameTypeEqual(nv, "first") || ov != nil {
			t.Errorf("Set of missing %s returned (new %s, old %s), want (\"first\", nil)", keyString(k), describe(nv), describe(ov))
		}
		nv, ov = s.set(subj, k, 2)
		if !sameTypeEqual(nv, int64(2)) || !sameTypeEqual(ov, "first") {
			t.Errorf("second Set of %s returned (new %s, old %s), want (int64(2), \"first\")", keyString(k), describe(nv), describe(ov))
		}
		nv, ov = s.set(subj, k, 2)
		if !sameTypeEqual(nv, int64(2)) || !sameTypeEqual(ov, int64(2)) {
			t.Errorf("Set of the same value on %s returned (new %s, old %s), want (int64(2), int64(2))", keyString(k), describe(nv), describe(ov))
		}
		s.expectValue(subj, k, int64(2))
	}
}

func testSetNull(t *testing.T, s *suite) {
	subj := s.subject("null")
	nv, ov := s.set(subj, pkey("n"), nil)
	if nv != nil || ov != nil {
		t.Errorf("Set(nil) on a missing property returned (%s, %s), want (nil, nil)", describe(nv), describe(ov))
	}
	v, err := s.b.Get(s.ctx, subj, pkey("n"))
	if err != nil || v != nil {
		t.Errorf("Get of a property set to null = (%s, %v), want (nil, nil): null is a value, not a missing property", describe(v), err)
	}
	s.expectSnapshot(subj, map[string]any{"n": nil}, nil)
	old, err := s.b.Delete(s.ctx, subj, pkey("n"))
	if err != nil || old != nil {
		t.Errorf("Delete of a null property = (%s, %v), want (nil, nil)", describe(old), err)
	}
	s.expectMissing(subj, pkey("n"))
}

func testGetMissing(t *testing.T, s *suite) {
	subj := s.subject("get-missing")
	s.set(subj, pkey("present"), 1)
	s.set(subj, ekey("present-ext"), 1)
	for _, k := range []storage.Key{pkey("absent"), ekey("absent"), ekey("present"), pkey("present-ext")} {
		s.expectMissing(subj, k)
	}
	s.expectMissing(s.subject("get-missing-unknown"), pkey("present"))
}

func testDelete(t *testing.T, s *suite) {
	subj := s.subject("delete")
	s.set(subj, pkey("a"), map[string]any{"x": 1})
	s.set(subj, pkey("b"), "keep")
	s.set(subj, ekey("a"), "ext keep")
	old, err := s.b.Delete(s.ctx, subj, pkey("a"))
	if err != nil {
		t.Fatalf("Delete of a present property: %v", err)
	}
	if want := map[string]any{"x": int64(1)}; !sameTypeEqual(old, want) {
		t.Errorf("Delete returned old %s, want %s", describe(old), describe(want))
	}
	s.expectMissing(subj, pkey("a"))
	s.expectSnapshot(subj, map[string]any{"b": "keep"}, map[string]any{"a": "ext keep"})

	for _, c := range []struct {
		subject string
		k       storage.Key
	}{
		{subj, pkey("a")}, // deleted already
		{subj, pkey("never")},
		{subj, ekey("b")}, // exists only as default
		{s.subject("delete-unknown"), pkey("a")},
	} {
		old, err := s.b.Delete(s.ctx, c.subject, c.k)
		if !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Delete(%q, %s) of a missing property = (%s, %v), want an error wrapping storage.ErrNotFound", c.subject, keyString(c.k), describe(old), err)
		}
	}
	s.expectSnapshot(subj, map[string]any{"b": "keep"}, map[string]any{"a": "ext keep"})

	// Deleting the last property, then setting again, starts afresh.
	for _, k := range []storage.Key{pkey("b"), ekey("a")} {
		if _, err := s.b.Delete(s.ctx, subj, k); err != nil {
			t.Fatalf("Delete(%s): %v", keyString(k), err)
		}
	}
	s.expectSnapshot(subj, nil, nil)
	if _, ov := s.set(subj, pkey("b"), 1); ov != nil {
		t.Errorf("Set after deleting every property returned old %s, want nil", describe(ov))
	}
}

func testStoreDeletesThenPuts(t *testing.T, s *suite) {
	subj := s.subject("store")
	s.store(subj, storage.Batch{Puts: []storage.Write{
		{Key: pkey("a"), Value: int64(1)},
		{Key: pkey("b"), Value: int64(2)},
		{Key: pkey("c"), Value: int64(3)},
		{Key: ekey("a"), Value: "ext a"},
		{Key: ekey("z"), Value: "ext z"},
	}})
	s.expectSnapshot(subj,
		map[string]any{"a": int64(1), "b": int64(2), "c": int64(3)},
		map[string]any{"a": "ext a", "z": "ext z"})

	s.store(subj, storage.Batch{
		Deletes: []storage.Key{pkey("a"), pkey("b"), pkey("missing"), ekey("z"), ekey("missing")},
		Puts: []storage.Write{
			{Key: pkey("b"), Value: "b again"}, // deleted and put in one batch: the put wins
			{Key: pkey("d"), Value: []any{int64(4)}},
			{Key: ekey("y"), Value: nil},
		},
	})
	s.expectSnapshot(subj,
		map[string]any{"b": "b again", "c": int64(3), "d": []any{int64(4)}},
		map[string]any{"a": "ext a", "y": nil})
	s.expectMissing(subj, pkey("a"))
	s.expectMissing(subj, ekey("z"))

	// A batch of only deletes on an unknown subject is fine and creates nothing.
	unknown := s.subject("store-unknown")
	s.store(unknown, storage.Batch{Deletes: []storage.Key{pkey("x"), ekey("x")}})
	s.expectSnapshot(unknown, nil, nil)
	s.expectNotListed(unknown)
}

func testStoreEmpty(t *testing.T, s *suite) {
	subj := s.subject("store-empty")
	s.store(subj, storage.Batch{})
	s.expectSnapshot(subj, nil, nil)
	s.set(subj, pkey("a"), 1)
	s.store(subj, storage.Batch{})
	s.expectSnapshot(subj, map[string]any{"a": int64(1)}, nil)
}

// testStoreAtomic checks that a reader never sees half of a batch: every
// batch writes the same number to x (default), y (default) and z (extended).
func testStoreAtomic(t *testing.T, s *suite) {
	subj := s.subject("store-atomic")
	rounds := 300
	switch {
	case testing.Short():
		rounds = 50
	case testenv.Race:
		rounds = 100
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Go(func() {
		defer close(done)
		for i := range rounds {
			n := int64(i)
			err := s.b.Store(s.ctx, subj, storage.Batch{
				Deletes: []storage.Key{pkey("gone")},
				Puts:    []storage.Write{{Key: pkey("x"), Value: n}, {Key: pkey("y"), Value: n}, {Key: ekey("z"), Value: n}, {Key: pkey("gone"), Value: n}},
			})
			if err != nil {
				writeErr = err
				return
			}
		}
	})
	reads := 0
	readErr := func() error {
		for stop := false; !stop; reads++ {
			select {
			case <-done:
				stop = true // one last read after the writer finished
			default:
			}
			snap, err := s.b.Load(s.ctx, subj)
			if err != nil {
				return fmt.Errorf("load during concurrent Stores: %w", err)
			}
			p, e := propMap(snap.Props), propMap(snap.Ext)
			if len(p)+len(e) == 0 {
				continue // before the first batch
			}
			if !sameTypeEqual(p["x"], p["y"]) || !sameTypeEqual(p["x"], e["z"]) || !sameTypeEqual(p["x"], p["gone"]) {
				return fmt.Errorf("load saw a half-applied batch: x=%s y=%s gone=%s ext z=%s; each batch writes the same number to all four",
					describe(p["x"]), describe(p["y"]), describe(p["gone"]), describe(e["z"]))
			}
		}
		return nil
	}()
	wg.Wait() // the writer finishes before the subtest ends and flushes
	if readErr != nil {
		t.Fatal(readErr)
	}
	if writeErr != nil {
		t.Fatalf("Store: %v", writeErr)
	}
	last := int64(rounds - 1)
	s.expectSnapshot(subj, map[string]any{"x": last, "y": last, "gone": last}, map[string]any{"z": last})
	t.Logf("%d batches, %d concurrent loads", rounds, reads)
}

func testKinds(t *testing.T, s *suite) {
	subj := s.subject("kinds")
	s.set(subj, pkey("x"), "default")
	s.set(subj, ekey("x"), "extended")
	s.expectValue(subj, pkey("x"), "default")
	s.expectValue(subj, ekey("x"), "extended")
	s.expectSnapshot(subj, map[string]any{"x": "default"}, map[string]any{"x": "extended"})

	nv, ov := s.set(subj, ekey("x"), "extended 2")
	if !sameTypeEqual(ov, "extended") || !sameTypeEqual(nv, "extended 2") {
		t.Errorf("Set of extended x returned (%s, %s), want (\"extended 2\", \"extended\")", describe(nv), describe(ov))
	}
	s.expectValue(subj, pkey("x"), "default")

	if _, err := s.b.Delete(s.ctx, subj, pkey("x")); err != nil {
		t.Fatalf("Delete default x: %v", err)
	}
	s.expectMissing(subj, pkey("x"))
	s.expectValue(subj, ekey("x"), "extended 2")

	s.set(subj, pkey("x"), "default again")
	if _, err := s.b.Delete(s.ctx, subj, ekey("x")); err != nil {
		t.Fatalf("Delete extended x: %v", err)
	}
	s.expectSnapshot(subj, map[string]any{"x": "default again"}, nil)
}

func testExtProps(t *testing.T, s *suite) {
	subj := s.subject("ext")
	s.set(subj, pkey("a"), 1)
	s.set(subj, pkey("b"), 2)
	s.set(subj, ekey("b"), "ext b")
	s.set(subj, ekey("c"), map[string]any{"k": []any{}})
	ext, err := s.b.ExtProps(s.ctx, subj)
	if err != nil {
		t.Fatalf("ExtProps: %v", err)
	}
	checkNoDuplicates(t, "ExtProps", ext)
	compareProps(t, "ExtProps", ext, map[string]any{"b": "ext b", "c": map[string]any{"k": []any{}}})

	only := s.subject("ext-none")
	s.set(only, pkey("a"), 1)
	if ext, err := s.b.ExtProps(s.ctx, only); err != nil || len(ext) != 0 {
		t.Errorf("ExtProps of a subject with only default properties = (%+v, %v), want (empty, nil)", ext, err)
	}
}

func testFlush(t *testing.T, s *suite) {
	subj := s.subject("flush")
	other := s.subject("flush-other")
	prefixed := s.subject("flush-more") // shares a prefix with subj
	for _, n := range []string{subj, other, prefixed} {
		s.set(n, pkey("a"), n)
		s.set(n, ekey("e"), n)
	}
	if err := s.b.Flush(s.ctx, subj); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	s.expectSnapshot(subj, nil, nil)
	s.expectMissing(subj, pkey("a"))
	s.expectMissing(subj, ekey("e"))
	if ext, err := s.b.ExtProps(s.ctx, subj); err != nil || len(ext) != 0 {
		t.Errorf("ExtProps after Flush = (%+v, %v), want (empty, nil)", ext, err)
	}
	for _, n := range []string{other, prefixed} {
		s.expectSnapshot(n, map[string]any{"a": n}, map[string]any{"e": n})
	}
	// The subject can be used again and starts empty.
	if _, ov := s.set(subj, pkey("a"), "again"); ov != nil {
		t.Errorf("Set after Flush returned old %s, want nil", describe(ov))
	}
	s.expectSnapshot(subj, map[string]any{"a": "again"}, nil)

	if err := s.b.Flush(s.ctx, s.subject("flush-unknown")); err != nil {
		t.Errorf("Flush of an unknown subject: %v, want nil", err)
	}
	if err := s.b.Flush(s.ctx, subj); err != nil {
		t.Fatalf("second Flush: %v", err)
	}
	if err := s.b.Flush(s.ctx, subj); err != nil {
		t.Errorf("Flush of an already flushed subject: %v, want nil", err)
	}
}

var errUpdate = errors.New("storagetest: update refused")

func testFuncOldExists(t *testing.T, s *suite) {
	subj := s.subject("func-old")
	s.set(subj, pkey("null"), nil)
	s.set(subj, pkey("int"), 7)
	s.set(subj, pkey("float"), 2.5)
	s.set(subj, pkey("list"), []any{"a", 1})
	s.set(subj, ekey("ext"), map[string]any{"k": true})
	s.set(subj, pkey("ext"), "default ext") // same name, other kind
	cases := []struct {
		k       storage.Key
		old     any
		exists  bool
		comment string
	}{
		{pkey("missing"), nil, false, "missing property"},
		{ekey("missing"), nil, false, "missing extended property"},
		{pkey("null"), nil, true, "stored null"},
		{pkey("int"), int64(7), true, "stored int"},
		{pkey("float"), 2.5, true, "stored float"},
		{pkey("list"), []any{"a", int64(1)}, true, "stored list"},
		{ekey("ext"), map[string]any{"k": true}, true, "stored extended object"},
	}
	for _, c := range cases {
		var gotOld any
		var gotExists, called bool
		nv, ov, err := s.b.Set(s.ctx, subj, c.k, storage.Mutation{Func: func(old any, exists bool) (any, error) {
			called = true
			gotOld, gotExists = old, exists
			return "new", nil
		}})
		if err != nil {
			t.Errorf("%s: Set with an update function: %v", c.comment, err)
			continue
		}
		if !called {
			t.Errorf("%s: update function not called", c.comment)
			continue
		}
		if !sameTypeEqual(gotOld, c.old) || gotExists != c.exists {
			t.Errorf("%s (%s): update function got (old %s, exists %v), want (%s, %v)", c.comment, keyString(c.k), describe(gotOld), gotExists, describe(c.old), c.exists)
		}
		if !sameTypeEqual(nv, "new") || !sameTypeEqual(ov, c.old) {
			t.Errorf("%s (%s): Set returned (new %s, old %s), want (\"new\", %s)", c.comment, keyString(c.k), describe(nv), describe(ov), describe(c.old))
		}
		s.expectValue(subj, c.k, "new")
	}
	s.expectValue(subj, pkey("ext"), "default ext")
}

type point struct {
	X int     `json:"x"`
	Y float64 `json:"y"`
}

func testFuncNormalised(t *testing.T, s *suite) {
	subj := s.subject("func-norm")
	cases := []struct {
		name string
		ret  any
		want any
	}{
		{"int", 5, int64(5)},
		{"uint8", uint8(7), int64(7)},
		{"float32", float32(1.5), 1.5},
		{"integral float", 4.0, int64(4)},
		{"struct", point{X: 1, Y: 0.5}, map[string]any{"x": int64(1), "y": 0.5}},
		{"typed slice", []string{"a", "b"}, []any{"a", "b"}},
		{"typed map", map[string]int{"a": 1}, map[string]any{"a": int64(1)}},
		{"nil", nil, nil},
	}
	for _, c := range cases {
		k := pkey(c.name)
		nv, _, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Func: func(any, bool) (any, error) { return c.ret, nil }})
		if err != nil {
			t.Errorf("%s: Set with an update function returning %#v: %v", c.name, c.ret, err)
			continue
		}
		if !sameTypeEqual(nv, c.want) {
			t.Errorf("%s: update function returned %#v; Set returned %s, want the normalised %s", c.name, c.ret, describe(nv), describe(c.want))
		}
		s.expectValue(subj, k, c.want)
	}

	// A result outside the value model is refused and writes nothing.
	s.set(subj, pkey("kept"), "before")
	for _, bad := range []any{make(chan int), func() {}, map[string]any{"f": func() {}}, []any{complex(1, 2)}} {
		nv, ov, err := s.b.Set(s.ctx, subj, pkey("kept"), storage.Mutation{Func: func(any, bool) (any, error) { return bad, nil }})
		if !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("update function returning %T: Set = (%s, %s, %v), want an error wrapping storage.ErrInvalidValue", bad, describe(nv), describe(ov), err)
		}
		nv, ov, err = s.b.Set(s.ctx, subj, pkey("fresh"), storage.Mutation{Func: func(any, bool) (any, error) { return bad, nil }})
		if !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("update function returning %T on a missing property: Set = (%s, %s, %v), want an error wrapping storage.ErrInvalidValue", bad, describe(nv), describe(ov), err)
		}
	}
	s.expectValue(subj, pkey("kept"), "before")
	s.expectMissing(subj, pkey("fresh"))
}

// testFuncMutatesArg: an update function may modify the value it is given
// in place and return it; the old value Set returns and what other readers
// see must not change because of it.
func testFuncMutatesArg(t *testing.T, s *suite) {
	subj := s.subject("func-mutate")
	s.set(subj, pkey("m"), map[string]any{"n": 1, "list": []any{1}})
	nv, ov, err := s.b.Set(s.ctx, subj, pkey("m"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
		m := old.(map[string]any)
		m["n"] = int64(2)
		m["list"] = append(m["list"].([]any), int64(2))
		return m, nil
	}})
	if err != nil {
		t.Fatalf("Set: %v", err)
	}
	wantOld := map[string]any{"n": int64(1), "list": []any{int64(1)}}
	wantNew := map[string]any{"n": int64(2), "list": []any{int64(1), int64(2)}}
	if !sameTypeEqual(ov, wantOld) {
		t.Errorf("Set returned old %s, want %s: the update function's in-place change leaked into the old value", describe(ov), describe(wantOld))
	}
	if !sameTypeEqual(nv, wantNew) {
		t.Errorf("Set returned new %s, want %s", describe(nv), describe(wantNew))
	}
	s.expectValue(subj, pkey("m"), wantNew)
}

func testFuncError(t *testing.T, s *suite) {
	subj := s.subject("func-error")
	s.set(subj, pkey("v"), "before")
	fail := storage.Mutation{Func: func(any, bool) (any, error) { return "after", errUpdate }}
	for _, k := range []storage.Key{pkey("v"), pkey("missing"), ekey("missing")} {
		nv, ov, err := s.b.Set(s.ctx, subj, k, fail)
		if !errors.Is(err, errUpdate) {
			t.Errorf("Set(%s) with a failing update function = (%s, %s, %v), want an error wrapping the function's error", keyString(k), describe(nv), describe(ov), err)
		}
	}
	s.expectSnapshot(subj, map[string]any{"v": "before"}, nil)
	unknown := s.subject("func-error-unknown")
	if _, _, err := s.b.Set(s.ctx, unknown, pkey("v"), fail); !errors.Is(err, errUpdate) {
		t.Errorf("Set on an unknown subject with a failing update function: %v, want an error wrapping the function's error", err)
	}
	s.expectSnapshot(unknown, nil, nil)
	s.expectNotListed(unknown)
}

func testFuncPanic(t *testing.T, s *suite) {
	subj := s.subject("func-panic")
	s.set(subj, pkey("v"), "before")
	boom := storage.Mutation{Func: func(any, bool) (any, error) { panic("storagetest: boom") }}
	for _, k := range []storage.Key{pkey("v"), pkey("missing")} {
		var (
			nv, ov any
			err    error
		)
		func() {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic escaped Set: %v", r)
					t.Errorf("Set(%s) with a panicking update function panicked instead of returning an error: %v", keyString(k), r)
				}
			}()
			nv, ov, err = s.b.Set(s.ctx, subj, k, boom)
		}()
		if err == nil {
			t.Errorf("Set(%s) with a panicking update function = (%s, %s, nil), want an error", keyString(k), describe(nv), describe(ov))
		}
	}
	s.expectSnapshot(subj, map[string]any{"v": "before"}, nil)
}

// opCase is one built-in operation applied to one stored state.
type opCase struct {
	name   string
	stored any  // value stored before (ignored when missing)
	absent bool // the property does not exist
	kind   storage.OpKind
	arg    any
	want   any  // result, with exact type
	bad    bool // the stored value has the wrong type: ErrInvalidValue
}

var opCases = []opCase{
	{name: "Inc/missing", absent: true, kind: storage.OpInc, arg: 5, want: int64(5)},
	{name: "Inc/null", stored: nil, kind: storage.OpInc, arg: 5, want: int64(5)},
	{name: "Inc/int", stored: 10, kind: storage.OpInc, arg: 5, want: int64(15)},
	{name: "Inc/negative", stored: 10, kind: storage.OpInc, arg: -15, want: int64(-5)},
	{name: "Inc/int by float", stored: 1, kind: storage.OpInc, arg: 0.5, want: 1.5},
	{name: "Inc/float to integral", stored: 1.5, kind: storage.OpInc, arg: 1.5, want: int64(3)},
	{name: "Inc/float missing", absent: true, kind: storage.OpInc, arg: 0.25, want: 0.25},
	{name: "Inc/string", stored: "10", kind: storage.OpInc, arg: 1, bad: true},
	{name: "Inc/bool", stored: true, kind: storage.OpInc, arg: 1, bad: true},
	{name: "Inc/list", stored: []any{1}, kind: storage.OpInc, arg: 1, bad: true},
	{name: "Inc/object", stored: map[string]any{"n": 1}, kind: storage.OpInc, arg: 1, bad: true},

	{name: "Append/missing", absent: true, kind: storage.OpAppend, arg: []any{1, "a"}, want: []any{int64(1), "a"}},
	{name: "Append/null", stored: nil, kind: storage.OpAppend, arg: []any{1}, want: []any{int64(1)}},
	{name: "Append/list", stored: []any{0}, kind: storage.OpAppend, arg: []any{1, map[string]any{"k": nil}}, want: []any{int64(0), int64(1), map[string]any{"k": nil}}},
	{name: "Append/empty list", stored: []any{}, kind: storage.OpAppend, arg: []any{"x"}, want: []any{"x"}},
	{name: "Append/nothing", stored: []any{"x"}, kind: storage.OpAppend, arg: []any{}, want: []any{"x"}},
	{name: "Append/nested list element", stored: []any{"x"}, kind: storage.OpAppend, arg: []any{[]any{1, 2}}, want: []any{"x", []any{int64(1), int64(2)}}},
	{name: "Append/string", stored: "abc", kind: storage.OpAppend, arg: []any{"d"}, bad: true},
	{name: "Append/number", stored: 1, kind: storage.OpAppend, arg: []any{2}, bad: true},
	{name: "Append/object", stored: map[string]any{}, kind: storage.OpAppend, arg: []any{2}, bad: true},

	{name: "Max/missing", absent: true, kind: storage.OpMax, arg: 7, want: int64(7)},
	{name: "Max/null", stored: nil, kind: storage.OpMax, arg: 7, want: int64(7)},
	{name: "Max/smaller stored", stored: 3, kind: storage.OpMax, arg: 7, want: int64(7)},
	{name: "Max/greater stored", stored: 9, kind: storage.OpMax, arg: 7, want: int64(9)},
	{name: "Max/float stored", stored: 7.5, kind: storage.OpMax, arg: 7, want: 7.5},
	{name: "Max/float arg", stored: 7, kind: storage.OpMax, arg: 7.25, want: 7.25},
	{name: "Max/negative", stored: -3, kind: storage.OpMax, arg: -7, want: int64(-3)},
	{name: "Max/string", stored: "9", kind: storage.OpMax, arg: 7, bad: true},
	{name: "Max/list", stored: []any{}, kind: storage.OpMax, arg: 7, bad: true},

	{name: "Min/missing", absent: true, kind: storage.OpMin, arg: 7, want: int64(7)},
	{name: "Min/null", stored: nil, kind: storage.OpMin, arg: 7, want: int64(7)},
	{name: "Min/smaller stored", stored: 3, kind: storage.OpMin, arg: 7, want: int64(3)},
	{name: "Min/greater stored", stored: 9, kind: storage.OpMin, arg: 7, want: int64(7)},
	{name: "Min/negative float", stored: 1, kind: storage.OpMin, arg: -1.5, want: -1.5},
	{name: "Min/bool", stored: false, kind: storage.OpMin, arg: 7, bad: true},
	{name: "Min/object", stored: map[string]any{"a": 1}, kind: storage.OpMin, arg: 7, bad: true},
}

func testOps(t *testing.T, s *suite) {
	subj := s.subject("ops")
	for _, c := range opCases {
		t.Run(c.name, func(t *testing.T) {
			s := s.with(t)
			op, err := storage.NewOp(c.kind, c.arg)
			if err != nil {
				t.Fatalf("NewOp(%v, %#v): %v", c.kind, c.arg, err)
			}
			for _, k := range []storage.Key{pkey(c.name), ekey(c.name)} {
				var stored any
				if !c.absent {
					stored, _ = s.set(subj, k, c.stored)
				}
				nv, ov, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Op: op})
				if c.bad {
					if !errors.Is(err, storage.ErrInvalidValue) {
						t.Errorf("%v %s on stored %s (%s) = (%s, %s, %v), want an error wrapping storage.ErrInvalidValue",
							c.kind, describe(op.Arg), describe(stored), keyString(k), describe(nv), describe(ov), err)
					}
					s.expectValue(subj, k, stored) // unchanged
					continue
				}
				if err != nil {
					t.Errorf("%v %s on %s (%s): %v", c.kind, describe(op.Arg), c.state(stored), keyString(k), err)
					continue
				}
				if !sameTypeEqual(nv, c.want) || !sameTypeEqual(ov, stored) {
					t.Errorf("%v %s on %s (%s) returned (new %s, old %s), want (%s, %s)",
						c.kind, describe(op.Arg), c.state(stored), keyString(k), describe(nv), describe(ov), describe(c.want), describe(stored))
				}
				s.expectValue(subj, k, c.want)
			}
		})
	}
}

func (c opCase) state(stored any) string {
	if c.absent {
		return "a missing property"
	}
	return "stored " + describe(stored)
}

// testIncExact: integers stay exact up to ±2^53 on every backend, even
// where the store computes in floating point.
func testIncExact(t *testing.T, s *suite) {
	subj := s.subject("inc-exact")
	const limit = int64(1) << 53
	for _, c := range []struct {
		name  string
		start int64
		step  int64
	}{
		{"up to 2^53", limit - 3, 1},
		{"down to -2^53", -(limit - 3), -1},
	} {
		k := pkey(c.name)
		s.set(subj, k, c.start)
		op, err := storage.NewOp(storage.OpInc, c.step)
		if err != nil {
			t.Fatal(err)
		}
		want := c.start
		for range 3 {
			prev := want
			want += c.step
			nv, ov, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Op: op})
			if err != nil {
				t.Fatalf("%s: Inc(%d) on %d: %v", c.name, c.step, prev, err)
			}
			if !sameTypeEqual(nv, want) || !sameTypeEqual(ov, prev) {
				t.Errorf("%s: Inc(%d) on %d returned (new %s, old %s), want (int64(%d), int64(%d))", c.name, c.step, prev, describe(nv), describe(ov), want, prev)
			}
			s.expectValue(subj, k, want)
		}
	}
	// Adding a large step at once is exact too.
	k := pkey("big step")
	s.set(subj, k, 1)
	op, _ := storage.NewOp(storage.OpInc, limit-1)
	if nv, _, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Op: op}); err != nil || !sameTypeEqual(nv, limit) {
		t.Errorf("Inc(2^53-1) on 1 = (%s, %v), want int64(%d)", describe(nv), err, limit)
	}
	s.expectValue(subj, k, limit)
}

func testIncFloats(t *testing.T, s *suite) {
	subj := s.subject("inc-float")
	inc := func(k storage.Key, by any) any {
		t.Helper()
		op, err := storage.NewOp(storage.OpInc, by)
		if err != nil {
			t.Fatal(err)
		}
		nv, _, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Op: op})
		if err != nil {
			t.Fatalf("Inc(%v) on %s: %v", by, keyString(k), err)
		}
		return nv
	}
	k := pkey("tenths")
	s.set(subj, k, 0.1)
	nv := inc(k, 0.2)
	f, ok := nv.(float64)
	if !ok || f < 0.3-1e-9 || f > 0.3+1e-9 {
		t.Errorf("0.1 + Inc(0.2) = %s, want a float64 within 1e-9 of 0.3", describe(nv))
	}
	if got := s.get(subj, k); !sameTypeEqual(got, nv) {
		t.Errorf("Get after 0.1 + Inc(0.2) = %s, but Set returned %s", describe(got), describe(nv))
	}

	k = pkey("halves")
	s.set(subj, k, 1.5)
	if nv := inc(k, 1.5); !sameTypeEqual(nv, int64(3)) {
		t.Errorf("1.5 + Inc(1.5) = %s, want int64(3): integral results are int64", describe(nv))
	}
	s.expectValue(subj, k, int64(3))
	if nv := inc(k, -0.25); !sameTypeEqual(nv, 2.75) {
		t.Errorf("3 + Inc(-0.25) = %s, want float64(2.75)", describe(nv))
	}
	s.expectValue(subj, k, 2.75)

	// A sum beyond float64 is refused and nothing is written (the value
	// model has no ±Inf; a backend computing in arbitrary precision must
	// not store what no reader can decode).
	k = pkey("huge")
	s.set(subj, k, 1e308)
	op, err := storage.NewOp(storage.OpInc, 1e308)
	if err != nil {
		t.Fatal(err)
	}
	if nv, _, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Op: op}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Errorf("1e308 + Inc(1e308) = (%s, %v), want an error wrapping ErrInvalidValue", describe(nv), err)
	}
	s.expectValue(subj, k, 1e308)
	s.load(subj) // the subject still loads
}
