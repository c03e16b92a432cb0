package storagetest

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// blindCases are the stored values (JSON text; "" for a missing property,
// "-" for a missing subject) and operations on which a blind operation
// (storage.BlindOps, and the NoCache Ops of a WriteOnly handle) must give
// exactly the results and errors of Set. raw marks a text outside what
// Marshal writes, planted only with Config.RawPut.
var blindCases = []struct {
	stored string
	raw    bool
	kind   storage.OpKind
	arg    any
}{
	{"-", false, storage.OpInc, int64(3)},
	{"", false, storage.OpInc, int64(3)},
	{"5", false, storage.OpInc, int64(1)},
	{"5", false, storage.OpInc, int64(-7)},
	{"5", false, storage.OpInc, 0.5},
	{"2.5", false, storage.OpInc, int64(1)},
	{"1.5", false, storage.OpInc, int64(math.MaxInt64)},
	{"9223372036854775806", false, storage.OpInc, int64(1)},
	{"9223372036854775807", false, storage.OpInc, int64(1)},
	{"-9223372036854775808", false, storage.OpInc, int64(-1)},
	{"1", false, storage.OpInc, int64(math.MaxInt64)},
	{"9223372036854775807", false, storage.OpInc, int64(math.MinInt64)},
	{"-1e308", false, storage.OpInc, -1e308},
	{"null", false, storage.OpInc, int64(-7)},
	{`"7"`, false, storage.OpInc, int64(1)},
	{"true", false, storage.OpInc, int64(1)},
	{"[1]", false, storage.OpInc, int64(1)},
	{`{"a":1}`, false, storage.OpInc, int64(1)},
	{"5.0", true, storage.OpInc, int64(1)},
	{"5.0", true, storage.OpInc, int64(math.MaxInt64)},
	{"-0", true, storage.OpInc, int64(1)},
	{"1e19", true, storage.OpInc, int64(1)},
	{"1e400", true, storage.OpInc, int64(1)},
	{"NaN", true, storage.OpInc, int64(1)},
	{" 5", true, storage.OpInc, int64(1)},
	{"-", false, storage.OpMax, int64(2)},
	{"5", false, storage.OpMax, int64(3)},
	{"5", false, storage.OpMax, int64(7)},
	{"5", false, storage.OpMin, int64(3)},
	{"null", false, storage.OpMin, 4.5},
	{`"x"`, false, storage.OpMax, int64(1)},
	{"1e400", true, storage.OpMax, int64(1)},
	{"", false, storage.OpAppend, []any{int64(1), "a"}},
	{"[1]", false, storage.OpAppend, []any{int64(2)}},
	{"[]", false, storage.OpAppend, []any{}},
	{"null", false, storage.OpAppend, []any{"a"}},
	{"5", false, storage.OpAppend, []any{int64(1)}},
	{"[" + strings.Repeat("[],", 300) + "[]]", false, storage.OpAppend, []any{true}},
}

// krulesOp is the krules.Op of a storage operation.
func krulesOp(kind storage.OpKind, arg any) krules.Op {
	switch kind {
	case storage.OpInc:
		return krules.Inc(arg)
	case storage.OpMax:
		return krules.Max(arg)
	case storage.OpMin:
		return krules.Min(arg)
	}
	return krules.Append(arg.([]any)...)
}

// short is describe cut to 200 bytes.
func short(v any) string {
	d := describe(v)
	if len(d) > 200 {
		return d[:200] + "…"
	}
	return d
}

// errKind names the sentinel an error of an operation wraps.
func errKind(err error) string {
	switch {
	case err == nil:
		return "no error"
	case errors.Is(err, storage.ErrOverflow):
		return "ErrOverflow"
	case errors.Is(err, storage.ErrInvalidValue):
		return "ErrInvalidValue"
	case errors.Is(err, storage.ErrNotFound):
		return "ErrNotFound"
	}
	return "another error"
}

// testBlindOps: on every stored value of blindCases, the backend's SetBlind
// (when it implements storage.BlindOps) and the NoCache Set of the Op
// through a WriteOnly handle return the new value and the error of Set,
// and leave the same stored value; the WriteOnly handle returns old value
// nil and emits PropertyChanged with OldValue nil after every write.
func testBlindOps(t *testing.T, a *appSuite, put rawPutFunc) {
	ctx := a.ctx
	bo, hasBlind := a.b.(storage.BlindOps)
	feed := a.app.ChangeFeed()
	k := pkey("n")
	for i, c := range blindCases {
		name := fmt.Sprintf("%d %v(%.40s) on %.40q", i, c.kind, fmt.Sprint(c.arg), c.stored)
		subjN, subjB, subjA := a.subject(fmt.Sprintf("bn-%d", i)), a.subject(fmt.Sprintf("bb-%d", i)), a.subject(fmt.Sprintf("ba-%d", i))
		a.record = false
		planted := true
		for _, subj := range []string{subjN, subjB, subjA} {
			switch {
			case c.stored == "-":
			case c.stored == "":
				a.set(subj, pkey("other"), int64(1))
			case c.raw:
				if put == nil {
					planted = false
				} else if planted = a.plant(put, subj, k, c.stored); planted {
					a.set(subj, pkey("other"), int64(1)) // the row exists on every backend
				}
			default:
				v := storage.UnmarshalProperty([]byte(c.stored))
				if _, bad := v.(storage.Invalid); bad {
					t.Fatalf("%s: case text is outside the value model", name)
				}
				a.set(subj, k, v)
			}
		}
		if !planted {
			a.record = true
			continue
		}
		op, err := storage.NewOp(c.kind, c.arg)
		if err != nil {
			t.Fatal(err)
		}
		nvN, oldN, errN := a.b.Set(ctx, subjN, k, storage.Mutation{Op: op})
		check := func(what, subj string, nv any, err error) {
			t.Helper()
			if errKind(err) != errKind(errN) {
				t.Errorf("%s: %s: err = %v (%s), Set: %v (%s)", name, what, err, errKind(err), errN, errKind(errN))
			} else if errN == nil && !sameTypeEqual(nv, nvN) {
				t.Errorf("%s: %s = %s, Set: %s", name, what, short(nv), short(nvN))
			}
			wantV, wantErr := a.b.Get(ctx, subjN, k)
			gotV, gotErr := a.b.Get(ctx, subj, k)
			if errKind(gotErr) != errKind(wantErr) || !sameTypeEqual(gotV, wantV) {
				t.Errorf("%s: after %s stored (%s, %v), after Set (%s, %v)", name, what, short(gotV), gotErr, short(wantV), wantErr)
			}
		}
		if hasBlind {
			nv, err := bo.SetBlind(ctx, subjB, k, op)
			check("SetBlind", subjB, nv, err)
		}
		a.take()
		a.record = true
		h := a.app.Subject(subjA, krules.WriteOnly(), krules.NoCache())
		nv, old, err := h.Set(ctx, "n", krulesOp(c.kind, c.arg))
		check("WriteOnly NoCache Set", subjA, nv, err)
		// With a change feed the write is not blind: it returns the old
		// value and emits as on any handle.
		var wantOld any
		wantEvent := err == nil
		if feed {
			wantOld = oldN
			wantEvent = err == nil && !storage.Equal(nvN, oldN)
		}
		if err == nil && !sameTypeEqual(old, wantOld) {
			t.Errorf("%s: WriteOnly NoCache Set returned old value %s, want %s", name, short(old), short(wantOld))
		}
		evs := a.take()
		switch {
		case !wantEvent && len(evs) != 0:
			t.Errorf("%s: WriteOnly NoCache Set (error %v) emitted %d events, want none", name, err, len(evs))
		case wantEvent && (len(evs) != 1 || evs[0].Type != krules.PropertyChanged || !sameTypeEqual(evs[0].Old, wantOld) || !sameTypeEqual(evs[0].New, nv)):
			t.Errorf("%s: WriteOnly NoCache Set emitted %.300v, want one PropertyChanged with OldValue %s and NewValue %s", name, evs, short(wantOld), short(nv))
		}
	}
}

// testBlindConcurrent: blind increments of one property from 8 goroutines
// (SetBlind, and the NoCache Inc of WriteOnly handles) lose none: the total
// is exact, and every result is a value no other call returned.
func testBlindConcurrent(t *testing.T, a *appSuite) {
	const goroutines, each = 8, 25
	subj := a.subject("blind-concurrent")
	a.set(subj, pkey("n"), int64(0))
	bo, hasBlind := a.b.(storage.BlindOps)
	inc, _ := storage.NewOp(storage.OpInc, 1)
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := a.app.Subject(subj, krules.WriteOnly(), krules.NoCache(), krules.Muted())
			for i := range each {
				var nv any
				var err error
				if hasBlind && (g+i)%2 == 0 {
					nv, err = bo.SetBlind(a.ctx, subj, pkey("n"), inc)
				} else {
					nv, _, err = h.Set(a.ctx, "n", krules.Inc(1))
				}
				if err != nil {
					t.Errorf("blind Inc: %v", err)
					return
				}
				n, _ := nv.(int64)
				mu.Lock()
				if seen[n] {
					t.Errorf("blind Inc returned %d twice", n)
				}
				seen[n] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	a.expectValue(subj, pkey("n"), int64(goroutines*each))
}

// testSubjectBlindSet: a NoCache Set of a plain value on a WriteOnly handle
// (NoCache given to App.Subject or to the call) writes the value, returns
// old value nil and emits with OldValue nil, also when the value did not
// change; Muted stays silent; an update function keeps the normal path and
// its old value; a WriteOnly cached handle's cache is patched by the blind
// write.
func testSubjectBlindSet(t *testing.T, a *appSuite) {
	ctx := a.ctx
	// With a change feed NoCache writes are not blind: they return the old
	// value and emit as on any handle.
	feed := a.app.ChangeFeed()
	oldOf := func(stored any) any {
		if feed {
			return stored
		}
		return nil
	}
	name := a.subject("blindset")
	a.set(name, pkey("n"), int64(5))
	a.set(name, ekey("e"), "x")
	a.take()
	h := a.app.Subject(name, krules.WriteOnly(), krules.NoCache())
	for i, prev := range []any{int64(5), int64(7)} {
		nv, old, err := h.Set(ctx, "n", 7)
		if err != nil || nv != int64(7) || old != oldOf(prev) {
			t.Fatalf("WriteOnly NoCache Set = (%s, %s, %v), want (7, %s, nil)", describe(nv), describe(old), err, describe(oldOf(prev)))
		}
		evs := a.take()
		if feed && i == 1 {
			if len(evs) != 0 {
				t.Fatalf("unchanged Set with a change feed emitted %v", evs)
			}
			continue
		}
		if len(evs) != 1 || evs[0].Type != krules.PropertyChanged || evs[0].Old != oldOf(prev) || evs[0].New != int64(7) {
			t.Fatalf("WriteOnly NoCache Set emitted %v, want PropertyChanged(%s -> 7)", evs, describe(oldOf(prev)))
		}
	}
	a.expectValue(name, pkey("n"), int64(7))
	if nv, old, err := h.SetExt(ctx, "e", []any{"y"}); err != nil || !sameTypeEqual(nv, []any{"y"}) || !sameTypeEqual(old, oldOf("x")) {
		t.Fatalf("WriteOnly NoCache SetExt = (%s, %s, %v), want ([y], %s, nil)", describe(nv), describe(old), err, describe(oldOf("x")))
	}
	a.expectValue(name, ekey("e"), []any{"y"})
	a.expectNoEvents("SetExt")
	if _, _, err := h.Set(ctx, "n", 8, krules.Muted()); err != nil {
		t.Fatal(err)
	}
	a.expectNoEvents("Muted Set")
	nv, old, err := h.Set(ctx, "n", krules.Update(func(n int64) int64 { return n + 1 }))
	if err != nil || nv != int64(9) || old != int64(8) {
		t.Fatalf("WriteOnly NoCache update function = (%s, %s, %v), want (9, 8, nil): the normal path", describe(nv), describe(old), err)
	}
	a.take()
	// Per call, on a WriteOnly cached handle: blind too, and the cache it
	// already holds follows.
	c := a.app.Subject(name, krules.WriteOnly())
	subjGet(t, ctx, c, "n", int64(9))
	if nv, old, err := c.Set(ctx, "n", krules.Inc(1), krules.NoCache()); err != nil || nv != int64(10) || old != oldOf(int64(9)) {
		t.Fatalf("NoCache Inc on a WriteOnly handle = (%s, %s, %v), want (10, %s, nil)", describe(nv), describe(old), err, describe(oldOf(int64(9))))
	}
	subjGet(t, ctx, c, "n", int64(10))
	a.expectValue(name, pkey("n"), int64(10))
	// Bad input writes nothing.
	if _, _, err := h.Set(ctx, "n", math.NaN()); !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("WriteOnly NoCache Set(NaN): err = %v, want ErrInvalidValue", err)
	}
	a.expectValue(name, pkey("n"), int64(10))
}
