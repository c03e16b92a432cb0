package storagetest

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// invalidCases are stored texts outside the value model that another
// program can write: Python's json.dumps writes NaN and ±Infinity by
// default, and integers of any size; a NUL reaches a string or key through
// \u0000; nesting has no limit in JSON.
var invalidCases = []struct{ name, raw string }{
	{"NaN", `NaN`},
	{"Infinity", `Infinity`},
	{"-Infinity", `-Infinity`},
	{"NaNInList", `[1, NaN, 2.5]`},
	{"NULInString", `"a\u0000b"`},
	{"NULInKey", `{"k\u0000": 1}`},
	{"TooDeep", strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600)},
	{"BeyondFloat64", `1` + strings.Repeat(`0`, 400)},
}

// invalidSubtests returns the tolerant-load subtests (see Config.RawPut).
func invalidSubtests(cfg Config) []subtest {
	return []subtest{
		{"Invalid/Backend", func(t *testing.T) {
			testInvalidBackend(t, newSuite(t, cfg.New), cfg.RawPut)
		}},
		{"Invalid/ExtProps", func(t *testing.T) {
			testInvalidExt(t, newSuite(t, cfg.New), cfg.RawPut)
		}},
		{"Invalid/Subject", func(t *testing.T) {
			testInvalidSubject(t, newAppSuite(t, cfg.New), cfg.RawPut)
		}},
	}
}

type rawPutFunc = func(t *testing.T, b storage.Backend, subject string, k storage.Key, raw string) bool

// plant writes raw with put; false (logged) when the store cannot hold it.
func (s *suite) plant(put rawPutFunc, subject string, k storage.Key, raw string) bool {
	s.t.Helper()
	if !put(s.t, s.b, subject, k, raw) {
		s.t.Logf("the store cannot hold %.40q (RawPut reported false): nothing to check for this text", raw)
		return false
	}
	return true
}

// invalidIn returns the storage.Invalid the properties hold under name,
// failing t when there is none or it is malformed.
func invalidIn(t *testing.T, what string, ps []storage.Property, name string) storage.Invalid {
	t.Helper()
	v, ok := propMap(ps)[name]
	if !ok {
		t.Fatalf("%s lacks the invalid property %q; it has %q", what, name, propNames(ps))
	}
	inv, ok := v.(storage.Invalid)
	if !ok {
		t.Fatalf("%s[%q] = %s, want a storage.Invalid", what, name, describe(v))
	}
	if inv.Raw == "" || !errors.Is(inv.Err, storage.ErrInvalidValue) {
		t.Fatalf("%s[%q] = %#v, want the stored text and an error wrapping ErrInvalidValue", what, name, inv)
	}
	return inv
}

// expectInvalidErr checks that err wraps ErrInvalidValue and names the
// subject and the property.
func expectInvalidErr(t *testing.T, what string, err error, subject, prop string) {
	t.Helper()
	switch {
	case !errors.Is(err, storage.ErrInvalidValue):
		t.Errorf("%s: err = %v, want an error wrapping ErrInvalidValue", what, err)
	case !strings.Contains(err.Error(), subject) || !strings.Contains(err.Error(), `"`+prop+`"`):
		t.Errorf("%s: error %q does not name subject %q and property %q", what, err, subject, prop)
	}
}

// testInvalidBackend: one property outside the value model leaves the rest
// of the subject usable through every Backend method.
func testInvalidBackend(t *testing.T, s *suite, put rawPutFunc) {
	for _, c := range invalidCases {
		t.Run(c.name, func(t *testing.T) {
			s := s.with(t)
			subj := s.subject("inv-" + c.name)
			bad := pkey("bad")
			s.set(subj, pkey("good"), 1)
			s.set(subj, ekey("meta"), "m")
			if !s.plant(put, subj, bad, c.raw) {
				return
			}
			snap := s.load(subj)
			inv := invalidIn(t, "Load.Props", snap.Props, "bad")
			if g := propMap(snap.Props)["good"]; !sameTypeEqual(g, int64(1)) {
				t.Errorf("Load.Props[good] = %s beside the invalid property, want int64(1)", describe(g))
			}
			compareProps(t, "Load.Ext", snap.Ext, map[string]any{"meta": "m"})

			_, err := s.b.Get(s.ctx, subj, bad)
			expectInvalidErr(t, "Get of the invalid property", err, subj, "bad")
			s.expectValue(subj, pkey("good"), int64(1))

			// An update function or an operation on it fails and writes nothing.
			called := false
			_, _, err = s.b.Set(s.ctx, subj, bad, storage.Mutation{Func: func(any, bool) (any, error) {
				called = true
				return int64(1), nil
			}})
			if !errors.Is(err, storage.ErrInvalidValue) || called {
				t.Errorf("update function on the invalid property: (err %v, called %v), want ErrInvalidValue and not called", err, called)
			}
			inc, _ := storage.NewOp(storage.OpInc, 1)
			app, _ := storage.NewOp(storage.OpAppend, []any{1})
			for _, op := range []*storage.Op{inc, app} {
				if _, _, err := s.b.Set(s.ctx, subj, bad, storage.Mutation{Op: op}); !errors.Is(err, storage.ErrInvalidValue) {
					t.Errorf("%v of the invalid property: err = %v, want ErrInvalidValue", op.Kind, err)
				}
			}
			if after := invalidIn(t, "Load.Props after the refused ops", s.load(subj).Props, "bad"); squeeze(after.Raw) != squeeze(inv.Raw) {
				t.Errorf("a refused op changed the invalid property: %.60q, then %.60q", inv.Raw, after.Raw)
			}

			// A Store that does not name it leaves its stored text alone.
			s.store(subj, storage.Batch{
				Deletes: []storage.Key{pkey("good")},
				Puts:    []storage.Write{{Key: pkey("other"), Value: int64(2)}, {Key: ekey("meta"), Value: "n"}},
			})
			snap = s.load(subj)
			if after := invalidIn(t, "Load.Props after Store", snap.Props, "bad"); squeeze(after.Raw) != squeeze(inv.Raw) {
				t.Errorf("Store of other properties changed the invalid one: %.60q, then %.60q", inv.Raw, after.Raw)
			}
			compareProps(t, "Load.Ext after Store", snap.Ext, map[string]any{"meta": "n"})
			s.expectValue(subj, pkey("other"), int64(2))

			// A plain Set overwrites it and returns it as the old value.
			nv, ov, err := s.b.Set(s.ctx, subj, bad, storage.Mutation{Value: int64(3)})
			if err != nil || !sameTypeEqual(nv, int64(3)) {
				t.Fatalf("Set over the invalid property: (%s, %v), want int64(3)", describe(nv), err)
			}
			if o, ok := ov.(storage.Invalid); !ok || squeeze(o.Raw) != squeeze(inv.Raw) {
				t.Errorf("Set over the invalid property: old = %s, want the storage.Invalid", describe(ov))
			}
			s.expectValue(subj, bad, int64(3))

			// Delete removes it and returns it.
			if _, err := s.b.Delete(s.ctx, subj, bad); err != nil {
				t.Fatal(err)
			}
			s.plant(put, subj, bad, c.raw)
			old, err := s.b.Delete(s.ctx, subj, bad)
			if o, ok := old.(storage.Invalid); err != nil || !ok || squeeze(o.Raw) != squeeze(inv.Raw) {
				t.Errorf("Delete of the invalid property = (%s, %v), want the storage.Invalid", describe(old), err)
			}
			s.expectMissing(subj, bad)

			// Flush removes the subject with it.
			s.plant(put, subj, bad, c.raw)
			if err := s.b.Flush(s.ctx, subj); err != nil {
				t.Fatalf("Flush of a subject with an invalid property: %v", err)
			}
			s.expectSnapshot(subj, nil, nil)
		})
	}
}

// testInvalidExt: the same tolerance for extended properties and ExtProps.
func testInvalidExt(t *testing.T, s *suite, put rawPutFunc) {
	for _, c := range invalidCases {
		subj := s.subject("inv-ext-" + c.name)
		s.set(subj, ekey("good"), "g")
		s.set(subj, pkey("p"), 1)
		if !s.plant(put, subj, ekey("bad"), c.raw) {
			continue
		}
		ext, err := s.b.ExtProps(s.ctx, subj)
		if err != nil {
			t.Fatalf("%s: ExtProps: %v", c.name, err)
		}
		invalidIn(t, c.name+": ExtProps", ext, "bad")
		if g := propMap(ext)["good"]; g != "g" {
			t.Errorf("%s: ExtProps[good] = %s, want \"g\"", c.name, describe(g))
		}
		snap := s.load(subj)
		invalidIn(t, c.name+": Load.Ext", snap.Ext, "bad")
		compareProps(t, c.name+": Load.Props", snap.Props, map[string]any{"p": int64(1)})
		_, err = s.b.Get(s.ctx, subj, ekey("bad"))
		expectInvalidErr(t, c.name+": Get of the invalid extended property", err, subj, "bad")
	}
}

// testInvalidSubject: through a krules Subject, a subject holding one
// invalid property stays usable in cache and NoCache mode.
func testInvalidSubject(t *testing.T, a *appSuite, put rawPutFunc) {
	ctx := a.ctx
	for _, c := range invalidCases {
		t.Run(c.name, func(t *testing.T) {
			s := a.suite.with(t)
			name := s.subject("inv-subj-" + c.name)
			s.set(name, pkey("good"), 1)
			if !s.plant(put, name, pkey("bad"), c.raw) {
				return
			}
			a.take()
			raw := invalidIn(t, "Load.Props", s.load(name).Props, "bad").Raw

			h := a.app.Subject(name)
			subjGet(t, ctx, h, "good", int64(1))
			_, err := h.Get(ctx, "bad")
			expectInvalidErr(t, "cached Get of the invalid property", err, name, "bad")
			_, err = h.Get(ctx, "bad", krules.NoCache())
			expectInvalidErr(t, "NoCache Get of the invalid property", err, name, "bad")
			keys, err := h.Keys(ctx)
			if err != nil || !slices.Contains(keys, "bad") || !slices.Contains(keys, "good") {
				t.Errorf("Keys = (%q, %v), want good and bad", keys, err)
			}
			d, err := h.Dict(ctx)
			if _, ok := d["bad"].(storage.Invalid); err != nil || !ok || d["good"] != int64(1) {
				t.Errorf("Dict = (%v, %v), want good 1 and bad a storage.Invalid", d, err)
			}
			if _, _, err := h.Set(ctx, "bad", krules.Inc(1)); !errors.Is(err, krules.ErrInvalidValue) {
				t.Errorf("cached Inc of the invalid property: err = %v, want ErrInvalidValue", err)
			}
			if _, _, err := h.Set(ctx, "bad", krules.Inc(1), krules.NoCache()); !errors.Is(err, krules.ErrInvalidValue) {
				t.Errorf("NoCache Inc of the invalid property: err = %v, want ErrInvalidValue", err)
			}

			// A cached Set of another property and Store leave it as stored.
			must(t, "Set other", func() error { _, _, err := h.Set(ctx, "other", 2); return err }())
			must(t, "Store", h.Store(ctx))
			if after := invalidIn(t, "Load.Props after Store", s.load(name).Props, "bad").Raw; squeeze(after) != squeeze(raw) {
				t.Errorf("Store rewrote the invalid property: %.60q, then %.60q", raw, after)
			}

			// A cached Set overwrites it; the event's old value is the Invalid.
			a.take()
			_, old, err := h.Set(ctx, "bad", 3)
			if _, ok := old.(storage.Invalid); err != nil || !ok {
				t.Errorf("cached Set over the invalid property: (old %s, %v), want the storage.Invalid", describe(old), err)
			}
			must(t, "Store", h.Store(ctx))
			s.expectValue(name, pkey("bad"), int64(3))
			if ev := a.take(); len(ev) != 1 || ev[0].Property != "bad" || ev[0].New != int64(3) {
				t.Errorf("cached Set over the invalid property emitted %v, want one PropertyChanged", ev)
			}

			// Deleted in cache mode, then Store.
			if _, err := s.b.Delete(ctx, name, pkey("bad")); err != nil {
				t.Fatal(err)
			}
			s.plant(put, name, pkey("bad"), c.raw)
			must(t, "cached Delete of the invalid property", h.Delete(ctx, "bad"))
			must(t, "Store", h.Store(ctx))
			s.expectMissing(name, pkey("bad"))

			// Flush, with the invalid property's PropertyDeleted.
			s.plant(put, name, pkey("bad"), c.raw)
			a.take()
			must(t, "Flush of a subject with an invalid property", a.app.Subject(name).Flush(ctx))
			s.expectSnapshot(name, nil, nil)
			found := false
			for _, ev := range a.take() {
				if ev.Type == krules.PropertyDeleted && ev.Property == "bad" {
					_, found = ev.Old.(storage.Invalid)
				}
			}
			if !found {
				t.Errorf("Flush emitted no PropertyDeleted for the invalid property with its storage.Invalid")
			}
		})
	}
}

// squeeze drops the JSON whitespace outside strings: a store may re-space
// the text it holds (SQLite's JSON functions do), which changes no value.
func squeeze(raw string) string {
	var sb strings.Builder
	in, esc := false, false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case in && esc:
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		case !in && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}
