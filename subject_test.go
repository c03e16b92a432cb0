package krules_test

import (
	"context"
	"errors"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

var ctx = context.Background()

func TestSetReturnsNewAndOld(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("user-1")
	nv, old, err := s.Set(ctx, "name", "John")
	if err != nil || nv != "John" || old != nil {
		t.Fatalf("first Set = (%v, %v, %v), want (John, <nil>, nil)", nv, old, err)
	}
	nv, old, err = s.Set(ctx, "name", "Jane")
	if err != nil || nv != "Jane" || old != "John" {
		t.Fatalf("second Set = (%v, %v, %v), want (Jane, John, nil)", nv, old, err)
	}
}

func TestUpdateFunctionForms(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("c")
	var seen []any
	s.Set(ctx, "n", krules.Update(func(old any) any { seen = append(seen, old); return int64(1) }))
	s.Set(ctx, "n", krules.UpdateAny(func(old any, _ bool) (any, error) { seen = append(seen, old); return old.(int64) + 1, nil }))
	s.Set(ctx, "n", krules.Update(func(any) any { return 10 }))
	s.Set(ctx, "n", krules.Update(func(c int) int { return max(c, 150) }))
	s.Set(ctx, "n", krules.Update(func(c int) int { return max(c, 120) }))
	s.Set(ctx, "n", krules.UpdateAny(func(old any, exists bool) (any, error) {
		seen = append(seen, exists)
		return old, nil
	}))
	v, _ := s.Get(ctx, "n")
	if v != int64(150) {
		t.Fatalf("n = %#v, want 150", v)
	}
	if want := []any{nil, int64(1), true}; !reflect.DeepEqual(seen, want) {
		t.Fatalf("update functions saw %#v, want %#v", seen, want)
	}
	// A lambda on a missing property receives nil (as the original's None).
	var got any = "unset"
	var exists = true
	s.Set(ctx, "missing", krules.UpdateAny(func(old any, ok bool) (any, error) { got, exists = old, ok; return 1, nil }))
	if got != nil || exists {
		t.Fatalf("missing property: update function got (%v, %v), want (nil, false)", got, exists)
	}
}

func TestChangeEventOnlyWhenChanged(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	app.On(krules.PropertyChanged).Do(rec.handler)
	s := app.Subject("s")
	s.Set(ctx, "x", 1)
	s.Set(ctx, "x", 1.0)               // numerically equal: no event
	s.Set(ctx, "x", 2, krules.Muted()) // muted: no event
	s.Set(ctx, "y", nil)               // nil over missing: created, no event
	s.Set(ctx, "m", map[string]any{"a": []any{1, "b"}})
	s.Set(ctx, "m", map[string]any{"a": []any{1.0, "b"}}) // deep equal: no event
	s.Set(ctx, "x", 3)
	evs := rec.snapshot()
	if len(evs) != 3 {
		t.Fatalf("got %d change events, want 3", len(evs))
	}
	want := []struct {
		name     string
		old, new any
	}{{"x", nil, int64(1)}, {"m", nil, map[string]any{"a": []any{int64(1), "b"}}}, {"x", int64(2), int64(3)}}
	for i, w := range want {
		ev := evs[i]
		if ev.PropertyName != w.name || !storage.Equal(ev.OldValue, w.old) || !storage.Equal(ev.NewValue, w.new) {
			t.Errorf("event %d = %s %v->%v, want %s %v->%v", i, ev.PropertyName, ev.OldValue, ev.NewValue, w.name, w.old, w.new)
		}
		if ev.Payload()[krules.KeyPropertyName] != w.name {
			t.Errorf("event %d payload = %v", i, ev.Payload())
		}
	}
	if ok, _ := s.Has(ctx, "y"); !ok {
		t.Fatal("Set(nil) on a missing property must create it")
	}
}

func TestExtraReachesHandlersAsGiven(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	app.On("*").Do(rec.handler)
	s := app.Subject("s")
	s.Set(ctx, "a", 1)
	s.Set(ctx, "a", 2, krules.WithExtra(krules.Extra{}))
	s.Set(ctx, "a", 3, krules.WithExtra(krules.Extra{"reason": "x"}))
	s.Delete(ctx, "a", krules.WithExtra(krules.Extra{"reason": "expired"}))
	evs := rec.snapshot()
	if len(evs) != 4 {
		t.Fatalf("got %d events", len(evs))
	}
	if evs[0].Extra != nil {
		t.Errorf("no WithExtra: Extra = %#v, want nil", evs[0].Extra)
	}
	if evs[1].Extra == nil || len(evs[1].Extra) != 0 {
		t.Errorf("empty Extra: got %#v, want empty non-nil", evs[1].Extra)
	}
	if evs[2].Extra["reason"] != "x" || evs[3].Extra["reason"] != "expired" || evs[3].Type != krules.PropertyDeleted {
		t.Errorf("extras = %v, %v (%s)", evs[2].Extra, evs[3].Extra, evs[3].Type)
	}
	if evs[3].OldValue != int64(3) || evs[3].NewValue != nil {
		t.Errorf("delete event old/new = %v/%v", evs[3].OldValue, evs[3].NewValue)
	}
}

func TestGetMissingAndDefault(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("s")
	for _, nc := range []bool{false, true} {
		var opts []krules.GetOption
		if nc {
			opts = append(opts, krules.NoCache())
		}
		_, err := s.Get(ctx, "nope", opts...)
		if !errors.Is(err, krules.ErrNotFound) {
			t.Fatalf("noCache=%v: Get missing err = %v, want ErrNotFound", nc, err)
		}
		v, err := s.Get(ctx, "status", append(opts, krules.Default("inactive"))...)
		if err != nil || v != "inactive" {
			t.Fatalf("noCache=%v: Default = (%v, %v)", nc, v, err)
		}
		v, err = s.Get(ctx, "status", append(opts, krules.Default(nil))...)
		if err != nil || v != nil {
			t.Fatalf("noCache=%v: Default(nil) = (%v, %v)", nc, v, err)
		}
		if _, err := s.GetExt(ctx, "nope", opts...); !errors.Is(err, krules.ErrNotFound) {
			t.Fatalf("GetExt missing err = %v", err)
		}
	}
}

func TestCacheStoreAndSecondHandle(t *testing.T) {
	app, _ := newApp(t)
	s1 := app.Subject("u")
	s1.Set(ctx, "name", "Alice")
	s1.SetExt(ctx, "ip", "10.0.0.1")
	s2 := app.Subject("u")
	if ok, _ := s2.Has(ctx, "name"); ok {
		t.Fatal("a second handle must not see unsaved changes")
	}
	if err := s1.Store(ctx); err != nil {
		t.Fatal(err)
	}
	s3 := app.Subject("u")
	if v, _ := s3.Get(ctx, "name"); v != "Alice" {
		t.Fatalf("after Store, new handle reads %v", v)
	}
	if v, _ := s3.GetExt(ctx, "ip"); v != "10.0.0.1" {
		t.Fatalf("ext after Store = %v", v)
	}
	// s2 loaded its cache before the Store: it keeps its stale view until
	// its own Store drops the cache.
	if ok, _ := s2.Has(ctx, "name"); ok {
		t.Fatal("s2's cache was loaded before the Store; it must be stale")
	}
	s3.Set(ctx, "name", "Bob")
	s3.Store(ctx)
	s1.Get(ctx, "name") // s1's cache was dropped by its Store: reload
	if v, _ := s1.Get(ctx, "name"); v != "Bob" {
		t.Fatalf("s1 after its own Store reads %v, want Bob", v)
	}
}

func TestNoCacheGoesToStoreAndPatchesCache(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("c")
	s.Set(ctx, "count", 0)
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	cached := app.Subject("c")
	if v, _ := cached.Get(ctx, "count"); v != int64(0) { // loads the cache
		t.Fatal(v)
	}
	other := app.Subject("c")
	other.Set(ctx, "count", krules.Inc(5), krules.NoCache())
	if v, _ := cached.Get(ctx, "count"); v != int64(0) {
		t.Fatalf("cached handle must keep its cached value, got %v", v)
	}
	if v, _ := cached.Get(ctx, "count", krules.NoCache()); v != int64(5) {
		t.Fatalf("NoCache Get = %v, want 5", v)
	}
	if v, _ := cached.Get(ctx, "count"); v != int64(5) {
		t.Fatalf("NoCache Get must patch the cache, cached read = %v", v)
	}
	nv, old, err := cached.Set(ctx, "count", krules.Inc(1), krules.NoCache())
	if err != nil || nv != int64(6) || old != int64(5) {
		t.Fatalf("NoCache Inc = (%v, %v, %v)", nv, old, err)
	}
	if v, _ := cached.Get(ctx, "count"); v != int64(6) {
		t.Fatalf("NoCache Set must patch the cache, cached read = %v", v)
	}
	// A handle created with NoCache never caches.
	direct := app.Subject("c", krules.NoCache())
	direct.Set(ctx, "count", krules.Inc(1))
	if v, _ := app.Subject("c").Get(ctx, "count"); v != int64(7) {
		t.Fatalf("NoCache handle wrote %v, want 7", v)
	}
	// Store after direct writes must not overwrite them with stale values.
	if err := cached.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := app.Subject("c").Get(ctx, "count"); v != int64(7) {
		t.Fatalf("Store rewrote a clean property: %v", v)
	}
}

func TestDeleteThenSetBeforeStoreKeepsProperty(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("d")
	s.Set(ctx, "x", 1)
	s.Store(ctx)
	s.Delete(ctx, "x")
	s.Set(ctx, "x", 2)
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := app.Subject("d").Get(ctx, "x")
	if err != nil || v != int64(2) {
		t.Fatalf("after delete+set+Store: (%v, %v), want 2", v, err)
	}
	// And the reverse: set then delete before Store removes it.
	s.Set(ctx, "y", 1)
	s.Store(ctx)
	s.Set(ctx, "y", 2)
	s.Delete(ctx, "y")
	s.Store(ctx)
	if ok, _ := app.Subject("d").Has(ctx, "y"); ok {
		t.Fatal("set+delete+Store must remove the property")
	}
}

func TestDelete(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	app.On("*").Do(rec.handler)
	s := app.Subject("d")
	if err := s.Delete(ctx, "nope"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if err := s.Delete(ctx, "nope", krules.NoCache()); !errors.Is(err, krules.ErrNotFound) {
		t.Fatalf("NoCache delete missing: %v", err)
	}
	s.Set(ctx, "a", 1, krules.Muted())
	s.Set(ctx, "b", 2, krules.Muted())
	s.Store(ctx)
	if err := s.Delete(ctx, "a", krules.Muted()); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "b", krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	s.SetExt(ctx, "e", 1)
	if err := s.DeleteExt(ctx, "e"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteExt(ctx, "e"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatalf("DeleteExt missing: %v", err)
	}
	evs := rec.snapshot()
	if len(evs) != 1 || evs[0].Type != krules.PropertyDeleted || evs[0].PropertyName != "b" || evs[0].OldValue != int64(2) {
		t.Fatalf("events = %v", evs)
	}
	if _, err := app.Subject("d").Get(ctx, "b"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatal("NoCache delete must reach the store")
	}
}

func TestExtendedPropertiesNeverEmit(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	app.On("*").Do(rec.handler)
	s := app.Subject("u")
	s.Set(ctx, "name", "John")
	s.SetExt(ctx, "last_ip", "192.168.1.1")
	s.SetExt(ctx, "user_agent", "Mozilla/5.0")
	s.SetExt(ctx, "n", krules.Inc(2)) // ops and functions are evaluated for ext too
	s.SetExt(ctx, "n", krules.Update(func(old int64) int64 { return old * 10 }))
	if len(rec.snapshot()) != 1 {
		t.Fatalf("extended sets emitted: %d events", len(rec.snapshot()))
	}
	ext, _ := s.ExtProps(ctx)
	want := map[string]any{"last_ip": "192.168.1.1", "user_agent": "Mozilla/5.0", "n": int64(20)}
	if !reflect.DeepEqual(ext, want) {
		t.Fatalf("ExtProps = %v", ext)
	}
	d, _ := s.Dict(ctx)
	wantDict := map[string]any{"name": "John", "ext": want}
	if !reflect.DeepEqual(d, wantDict) {
		t.Fatalf("Dict = %v, want %v", d, wantDict)
	}
	if ok, _ := s.HasExt(ctx, "last_ip"); !ok {
		t.Fatal("HasExt")
	}
	if ok, _ := s.Has(ctx, "last_ip"); ok {
		t.Fatal("default and extended namespaces must be separate")
	}
}

func TestDictNameCollision(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("dict-test")
	d, _ := s.Dict(ctx)
	if d["name"] != "dict-test" {
		t.Fatalf("Dict name = %v", d["name"])
	}
	s.Set(ctx, "name", "Charlie")
	d, _ = s.Dict(ctx)
	if d["name"] != "Charlie" {
		t.Fatalf("a property called name must win, got %v", d["name"])
	}
}

func TestKeysInsertionOrder(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("u")
	for _, k := range []string{"name", "email", "age", "address", "tags"} {
		s.Set(ctx, k, 1)
	}
	s.Delete(ctx, "age")
	s.Set(ctx, "age", 2)
	keys, _ := s.Keys(ctx)
	want := []string{"name", "email", "address", "tags", "age"}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("Keys = %v, want %v", keys, want)
	}
	s.Store(ctx)
	keys, _ = app.Subject("u").Keys(ctx)
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("Keys after reload = %v, want %v", keys, want)
	}
}

func TestFlush(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	var sawInCache []any
	app.On("*").Do(func(ctx context.Context, ev *krules.Event) error {
		if ev.Type == krules.PropertyDeleted {
			v, err := ev.Subject.Get(ctx, "a", krules.Default("gone"))
			if err != nil {
				return err
			}
			sawInCache = append(sawInCache, v)
		}
		return rec.handler(ctx, ev)
	})
	s := app.Subject("f")
	s.Set(ctx, "a", 1, krules.Muted())
	s.Set(ctx, "b", 2, krules.Muted())
	s.SetExt(ctx, "e", 3)
	s.Store(ctx)
	s.Set(ctx, "c", 4, krules.Muted()) // unsaved change is part of the snapshot
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	evs := rec.snapshot()
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Type+":"+ev.PropertyName)
	}
	want := []string{
		"subject-property-deleted:a", "subject-property-deleted:b", "subject-property-deleted:c",
		"subject-property-deleted:e", "subject-deleted:",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("flush events = %v, want %v", got, want)
	}
	if !reflect.DeepEqual(sawInCache, []any{int64(1), int64(1), int64(1), int64(1)}) {
		t.Fatalf("handlers must still see the data during flush: %v", sawInCache)
	}
	last := evs[len(evs)-1].Payload()
	if !reflect.DeepEqual(last["props"], map[string]any{"a": int64(1), "b": int64(2), "c": int64(4)}) ||
		!reflect.DeepEqual(last["ext_props"], map[string]any{"e": int64(3)}) {
		t.Fatalf("subject-deleted payload = %v", last)
	}
	if keys, _ := app.Subject("f").Keys(ctx); len(keys) != 0 {
		t.Fatalf("store still has %v", keys)
	}
	if keys, _ := s.Keys(ctx); len(keys) != 0 {
		t.Fatalf("flushed handle still caches %v", keys)
	}
	// An empty subject still emits subject-deleted with empty maps.
	rec = recorder{}
	app.Subject("empty").Flush(ctx)
	evs = rec.snapshot()
	if len(evs) != 1 || evs[0].Type != krules.SubjectDeleted ||
		len(evs[0].Payload()["props"].(map[string]any)) != 0 || len(evs[0].Payload()["ext_props"].(map[string]any)) != 0 {
		t.Fatalf("empty flush events = %v", evs)
	}
}

func TestUpdateFunctionFailureChangesNothing(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	app.On("*").Do(rec.handler)
	for _, nc := range []bool{false, true} {
		s := app.Subject("u")
		s.Set(ctx, "x", 1, krules.Muted(), krules.NoCache())
		var opts []krules.SetOption
		if nc {
			opts = append(opts, krules.NoCache())
		}
		boom := errors.New("boom")
		if _, _, err := s.Set(ctx, "x", krules.UpdateAny(func(any, bool) (any, error) { return nil, boom }), opts...); !errors.Is(err, boom) {
			t.Fatalf("noCache=%v: err = %v, want boom", nc, err)
		}
		if _, _, err := s.Set(ctx, "x", krules.Update(func(any) any { panic("kaput") }), opts...); err == nil {
			t.Fatalf("noCache=%v: a panicking update function must return an error", nc)
		}
		if _, _, err := s.Set(ctx, "x", krules.Update(func(any) any { return math.NaN() }), opts...); !errors.Is(err, krules.ErrInvalidValue) {
			t.Fatalf("noCache=%v: NaN result: %v", nc, err)
		}
		if _, _, err := s.Set(ctx, "x", krules.Append("a"), opts...); !errors.Is(err, krules.ErrInvalidValue) {
			t.Fatalf("noCache=%v: Append on a number: %v", nc, err)
		}
		if v, _ := s.Get(ctx, "x", krules.NoCache()); v != int64(1) {
			t.Fatalf("noCache=%v: value changed to %v", nc, v)
		}
		if v, _ := s.Get(ctx, "x"); v != int64(1) {
			t.Fatalf("noCache=%v: cached value changed to %v", nc, v)
		}
	}
	if n := len(rec.snapshot()); n != 0 {
		t.Fatalf("failed updates emitted %d events", n)
	}
}

func TestInvalidInputRefused(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("u")
	s.Set(ctx, "keep", "me")
	s.Store(ctx)
	cyc := map[string]any{}
	cyc["self"] = cyc
	bad := []any{make(chan int), map[string]any{"f": func() {}}, math.NaN(), math.Inf(1), cyc, complex(1, 2), "a\x00b", string([]byte{0xff})}
	for _, v := range bad {
		for _, nc := range []bool{false, true} {
			var opts []krules.SetOption
			if nc {
				opts = append(opts, krules.NoCache())
			}
			if _, _, err := s.Set(ctx, "keep", v, opts...); !errors.Is(err, krules.ErrInvalidValue) {
				t.Errorf("Set(%T) err = %v, want ErrInvalidValue", v, err)
			}
		}
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := app.Subject("u").Get(ctx, "keep"); v != "me" {
		t.Fatalf("stored value damaged: %v", v)
	}
	if _, _, err := s.Set(ctx, "", 1); !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("empty property: %v", err)
	}
	if _, _, err := app.Subject("").Set(ctx, "x", 1); !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("empty subject: %v", err)
	}
	if _, err := app.Subject("").Get(ctx, "x"); !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("empty subject Get: %v", err)
	}
	if err := app.Emit(ctx, "", s, nil); !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("empty event type: %v", err)
	}
	if err := app.Emit(ctx, "x", nil, nil); !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("nil subject: %v", err)
	}
	if _, _, err := s.Set(ctx, "x", krules.Inc("one")); !errors.Is(err, krules.ErrInvalidValue) {
		t.Errorf("Inc(string): %v", err)
	}
	if _, _, err := s.Set(ctx, "x", krules.Op{}); !errors.Is(err, krules.ErrInvalidValue) {
		t.Errorf("zero Op: %v", err)
	}
}

func TestValuesAreCopied(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("u")
	m := map[string]any{"a": 1}
	s.Set(ctx, "m", m)
	m["a"] = 2 // the caller's map is not the stored one
	got, _ := s.Get(ctx, "m")
	got.(map[string]any)["a"] = 3 // nor is the returned one
	again, _ := s.Get(ctx, "m")
	if !reflect.DeepEqual(again, map[string]any{"a": int64(1)}) {
		t.Fatalf("stored value aliased: %v", again)
	}
	type point struct {
		X int `json:"x"`
	}
	s.Set(ctx, "p", point{X: 3})
	p, err := krules.GetAs[point](ctx, s, "p")
	if err != nil || p.X != 3 {
		t.Fatalf("struct round trip: %v %v", p, err)
	}
	raw, _ := s.Get(ctx, "p")
	if !reflect.DeepEqual(raw, map[string]any{"x": int64(3)}) {
		t.Fatalf("struct normalised to %#v", raw)
	}
}

func TestBuiltInOps(t *testing.T) {
	for _, nc := range []bool{false, true} {
		app, _ := newApp(t)
		var opts []krules.SubjectOption
		if nc {
			opts = append(opts, krules.NoCache())
		}
		s := app.Subject("ops", opts...)
		steps := []struct {
			prop string
			v    any
			want any
		}{
			{"n", krules.Inc(1), int64(1)},
			{"n", krules.Inc(-3), int64(-2)},
			{"n", krules.Inc(0.5), -1.5},
			{"big", int64(9007199254740990), int64(9007199254740990)},
			{"big", krules.Inc(1), int64(9007199254740991)},
			{"hist", krules.Append("a"), []any{"a"}},
			{"hist", krules.Append("b", 2), []any{"a", "b", int64(2)}},
			{"hi", krules.Max(100), int64(100)},
			{"hi", krules.Max(150), int64(150)},
			{"hi", krules.Max(120), int64(150)},
			{"lo", krules.Min(5), int64(5)},
			{"lo", krules.Min(7), int64(5)},
			{"lo", krules.Min(-1.5), -1.5},
		}
		for _, st := range steps {
			nv, _, err := s.Set(ctx, st.prop, st.v)
			if err != nil || !reflect.DeepEqual(nv, st.want) {
				t.Fatalf("noCache=%v: %s -> (%#v, %v), want %#v", nc, st.prop, nv, err, st.want)
			}
		}
	}
}

func TestGetAs(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("u")
	s.Set(ctx, "age", 30)
	s.Set(ctx, "ratio", 0.5)
	s.Set(ctx, "tags", []string{"a", "b"})
	if n, err := krules.GetAs[int](ctx, s, "age"); err != nil || n != 30 {
		t.Fatal(n, err)
	}
	if f, err := krules.GetAs[float64](ctx, s, "age"); err != nil || f != 30 {
		t.Fatal(f, err)
	}
	if _, err := krules.GetAs[int](ctx, s, "ratio"); !errors.Is(err, krules.ErrInvalidValue) {
		t.Fatalf("0.5 as int: %v", err)
	}
	if _, err := krules.GetAs[int8](ctx, s, "age"); err != nil {
		t.Fatal(err)
	}
	s.Set(ctx, "huge", 1000)
	if _, err := krules.GetAs[int8](ctx, s, "huge"); !errors.Is(err, krules.ErrInvalidValue) {
		t.Fatalf("overflow: %v", err)
	}
	if tags, err := krules.GetAs[[]string](ctx, s, "tags"); err != nil || !reflect.DeepEqual(tags, []string{"a", "b"}) {
		t.Fatal(tags, err)
	}
	if _, err := krules.GetAs[string](ctx, s, "age"); !errors.Is(err, krules.ErrInvalidValue) {
		t.Fatalf("number as string: %v", err)
	}
	if _, err := krules.GetAs[int](ctx, s, "missing"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if n, err := krules.GetAs[int](ctx, s, "missing", krules.Default(7)); err != nil || n != 7 {
		t.Fatalf("default: %v %v", n, err)
	}
}

func TestHandlerSeesUnsavedChangesOfSameHandle(t *testing.T) {
	app, _ := newApp(t)
	app.On(krules.PropertyChanged).When(func(_ context.Context, ev *krules.Event) bool {
		return ev.PropertyName == "cpu" || ev.PropertyName == "mem"
	}).Do(func(ctx context.Context, ev *krules.Event) error {
		cpu, _ := krules.GetAs[int](ctx, ev.Subject, "cpu", krules.Default(0))
		mem, _ := krules.GetAs[int](ctx, ev.Subject, "mem", krules.Default(0))
		health := "ok"
		if cpu > 90 || mem > 90 {
			health = "critical"
		}
		_, _, err := ev.Subject.Set(ctx, "health", health)
		return err
	})
	s := app.Subject("server")
	s.Set(ctx, "cpu", 50)
	s.Set(ctx, "mem", 95)
	if v, _ := s.Get(ctx, "health"); v != "critical" {
		t.Fatalf("health = %v", v)
	}
}

type failingStore struct {
	storage.Backend
	fail bool
}

func (f *failingStore) Store(ctx context.Context, name string, b storage.Batch) error {
	if f.fail {
		return errors.New("disk full")
	}
	return f.Backend.Store(ctx, name, b)
}

func TestStoreFailureKeepsCache(t *testing.T) {
	fs := &failingStore{Backend: memory.New(), fail: true}
	app, _ := newApp(t, krules.WithStorage(fs))
	s := app.Subject("u")
	s.Set(ctx, "a", 1)
	if err := s.Store(ctx); err == nil {
		t.Fatal("Store must report the backend error")
	}
	fs.fail = false
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := app.Subject("u").Get(ctx, "a"); v != int64(1) {
		t.Fatalf("cache lost on failed Store: %v", v)
	}
}

func TestConcurrentAtomicUpdates(t *testing.T) {
	app, _ := newApp(t)
	const g, n = 32, 200
	var wg sync.WaitGroup
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n; j++ {
				s := app.Subject("counter", krules.NoCache())
				if _, _, err := s.Set(ctx, "inc", krules.Inc(1)); err != nil {
					t.Error(err)
					return
				}
				if _, _, err := s.Set(ctx, "fn", krules.Update(func(c int) int { return c + 1 })); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// One shared cached handle used concurrently must be race-free too.
	shared := app.Subject("shared")
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n; j++ {
				shared.Set(ctx, "n", krules.Inc(1))
				shared.Get(ctx, "n")
				shared.Keys(ctx)
			}
		}()
	}
	wg.Wait()
	s := app.Subject("counter")
	for _, p := range []string{"inc", "fn"} {
		if v, _ := s.Get(ctx, p); v != int64(g*n) {
			t.Errorf("%s = %v, want %d", p, v, g*n)
		}
	}
	if v, _ := shared.Get(ctx, "n"); v != int64(4*n) {
		t.Errorf("shared cached handle n = %v, want %d", v, 4*n)
	}
}

// slowStore adds latency to every direct call, like a network store.
type slowStore struct {
	storage.Backend
	n atomic.Int64
}

func (s *slowStore) delay() { time.Sleep(time.Duration(s.n.Add(7919)%200) * time.Microsecond) }

func (s *slowStore) Set(ctx context.Context, name string, k storage.Key, m storage.Mutation) (any, any, error) {
	nv, old, err := s.Backend.Set(ctx, name, k, m)
	s.delay()
	return nv, old, err
}

func (s *slowStore) Get(ctx context.Context, name string, k storage.Key) (any, error) {
	v, err := s.Backend.Get(ctx, name, k)
	s.delay()
	return v, err
}

func TestConcurrentNoCacheCallsKeepCacheTrue(t *testing.T) {
	for round := 0; round < 20; round++ {
		app, _ := newApp(t, krules.WithStorage(&slowStore{Backend: memory.New()}))
		h := app.Subject("s")
		h.Has(ctx, "x") // load a (clean) cache
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				h.Set(ctx, "x", g, krules.NoCache())
				h.Get(ctx, "x", krules.NoCache())
			}(g)
		}
		wg.Wait()
		cached, _ := h.Get(ctx, "x")
		stored, _ := app.Subject("s").Get(ctx, "x")
		if cached != stored {
			t.Fatalf("round %d: cache says %v, store %v", round, cached, stored)
		}
	}
}

func TestNoCacheGetKeepsUnsavedWrites(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("s")
	s.Set(ctx, "x", 0)
	s.Set(ctx, "gone", 1)
	s.Store(ctx)
	s.Set(ctx, "x", 1)    // unsaved
	s.Delete(ctx, "gone") // unsaved
	if v, _ := s.Get(ctx, "x", krules.NoCache()); v != int64(0) {
		t.Fatalf("NoCache Get = %v, want the stored 0", v)
	}
	s.Get(ctx, "gone", krules.NoCache())
	if v, _ := s.Get(ctx, "x"); v != int64(1) {
		t.Fatalf("cached x = %v: the NoCache read dropped an unsaved write", v)
	}
	if ok, _ := s.Has(ctx, "gone"); ok {
		t.Fatal("the NoCache read resurrected a pending delete")
	}
	s.Store(ctx)
	fresh := app.Subject("s")
	if v, _ := fresh.Get(ctx, "x"); v != int64(1) {
		t.Fatalf("stored x = %v, want 1", v)
	}
	if ok, _ := fresh.Has(ctx, "gone"); ok {
		t.Fatal("pending delete lost")
	}
}

func TestNoCacheHandleWholeSubjectReadsAreFresh(t *testing.T) {
	app, _ := newApp(t)
	d := app.Subject("s", krules.NoCache())
	if ok, _ := d.Has(ctx, "b"); ok {
		t.Fatal("b exists early")
	}
	w := app.Subject("s")
	w.Set(ctx, "b", 1)
	w.SetExt(ctx, "e", 2)
	w.Store(ctx)
	if ok, _ := d.Has(ctx, "b"); !ok {
		t.Fatal("NoCache handle's Has is stale")
	}
	if keys, _ := d.Keys(ctx); len(keys) != 1 {
		t.Fatalf("Keys = %v", keys)
	}
	if ext, _ := d.ExtProps(ctx); ext["e"] != int64(2) {
		t.Fatalf("ExtProps = %v", ext)
	}
	if m, _ := d.Dict(ctx); m["b"] != int64(1) {
		t.Fatalf("Dict = %v", m)
	}
}

func TestFlushCancelledMidwayFinishes(t *testing.T) {
	app, _ := newApp(t)
	c, cancel := context.WithCancel(ctx)
	deleted := 0
	app.On(krules.PropertyDeleted).Do(func(context.Context, *krules.Event) error { deleted++; cancel(); return nil })
	s := app.Subject("f")
	s.Set(ctx, "a", 1)
	s.Set(ctx, "b", 2)
	s.Store(ctx)
	if err := s.Flush(c); err != nil {
		t.Fatal(err)
	}
	if deleted != 2 {
		t.Fatalf("%d deleted events, want 2", deleted)
	}
	if keys, _ := app.Subject("f").Keys(ctx); len(keys) != 0 {
		t.Fatalf("store still has %v after the handlers were told it was deleted", keys)
	}
}

func TestNilOpAndFloatOverflow(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("s")
	s.Set(ctx, "n", 5)
	if _, _, err := s.Set(ctx, "n", (*krules.Op)(nil)); !errors.Is(err, krules.ErrInvalidValue) {
		t.Fatalf("nil *Op: %v", err)
	}
	if v, _ := s.Get(ctx, "n"); v != int64(5) {
		t.Fatalf("n = %v", v)
	}
	s.Set(ctx, "big", 1e300)
	if _, err := krules.GetAs[float32](ctx, s, "big"); !errors.Is(err, krules.ErrInvalidValue) {
		t.Fatalf("1e300 as float32: %v", err)
	}
}
