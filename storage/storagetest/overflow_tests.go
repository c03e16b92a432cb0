package storagetest

import (
	"errors"
	"math"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// testIncOverflow: an integer Inc whose sum leaves the int64 range fails
// with ErrOverflow (and ErrInvalidValue) and writes nothing; with a float
// on either side the sum is a float64.
func testIncOverflow(t *testing.T, s *suite) {
	subj := s.subject("overflow")
	for _, c := range []struct {
		name        string
		stored, arg int64
	}{
		{"max+1", math.MaxInt64, 1},
		{"min-1", math.MinInt64, -1},
		{"1+max", 1, math.MaxInt64},
		{"-2+min", -2, math.MinInt64},
	} {
		k := pkey("n-" + c.name)
		s.set(subj, k, c.stored)
		op, err := storage.NewOp(storage.OpInc, c.arg)
		if err != nil {
			t.Fatal(err)
		}
		nv, old, err := s.b.Set(s.ctx, subj, k, storage.Mutation{Op: op})
		if !errors.Is(err, storage.ErrOverflow) || !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("%s: Inc = (%s, %s, %v), want an error wrapping ErrOverflow and ErrInvalidValue", c.name, describe(nv), describe(old), err)
		}
		s.expectValue(subj, k, c.stored)
	}
	// Up to the bounds it is exact.
	s.set(subj, pkey("edge"), int64(math.MaxInt64-1))
	inc, _ := storage.NewOp(storage.OpInc, 1)
	if nv, _, err := s.b.Set(s.ctx, subj, pkey("edge"), storage.Mutation{Op: inc}); err != nil || !sameTypeEqual(nv, int64(math.MaxInt64)) {
		t.Errorf("Inc to MaxInt64 = (%s, %v), want int64(MaxInt64)", describe(nv), err)
	}
	// A missing property takes the argument, whatever its size.
	big, _ := storage.NewOp(storage.OpInc, int64(math.MaxInt64))
	if nv, _, err := s.b.Set(s.ctx, subj, pkey("fresh"), storage.Mutation{Op: big}); err != nil || !sameTypeEqual(nv, int64(math.MaxInt64)) {
		t.Errorf("Inc(MaxInt64) of a missing property = (%s, %v), want int64(MaxInt64)", describe(nv), err)
	}
	// A float argument: float64 arithmetic, no overflow error.
	s.set(subj, pkey("f"), int64(math.MaxInt64))
	fop, _ := storage.NewOp(storage.OpInc, 1e19)
	nv, _, err := s.b.Set(s.ctx, subj, pkey("f"), storage.Mutation{Op: fop})
	if err != nil || !sameTypeEqual(nv, float64(math.MaxInt64)+1e19) {
		t.Errorf("Inc(1e19) of MaxInt64 = (%s, %v), want float64(%g)", describe(nv), err, float64(math.MaxInt64)+1e19)
	}
	s.expectValue(subj, pkey("f"), float64(math.MaxInt64)+1e19)
}

// testSubjectIncOverflow: the same through a Subject, cached and NoCache.
func testSubjectIncOverflow(t *testing.T, a *appSuite) {
	ctx := a.ctx
	name := a.subject("overflow")
	a.set(name, pkey("n"), int64(math.MaxInt64))
	h := a.app.Subject(name)
	if _, _, err := h.Set(ctx, "n", krules.Inc(1)); !errors.Is(err, storage.ErrOverflow) {
		t.Errorf("cached Inc past MaxInt64: err = %v, want ErrOverflow", err)
	}
	if _, _, err := h.Set(ctx, "n", krules.Inc(1), krules.NoCache()); !errors.Is(err, storage.ErrOverflow) {
		t.Errorf("NoCache Inc past MaxInt64: err = %v, want ErrOverflow", err)
	}
	must(t, "Store", h.Store(ctx))
	a.expectValue(name, pkey("n"), int64(math.MaxInt64))
	subjGet(t, ctx, a.app.Subject(name), "n", int64(math.MaxInt64))
}

// testAppendBracketsAndLetters: Append to lists whose text a server-side
// script cannot vouch for (capital N and I, many brackets) still appends
// exactly.
func testAppendBracketsAndLetters(t *testing.T, s *suite) {
	subj := s.subject("append")
	many := make([]any, 600)
	for i := range many {
		many[i] = []any{int64(i)}
	}
	for name, list := range map[string][]any{
		"letters":  {"No", "Infinity", "NaN", map[string]any{"I": "N"}},
		"brackets": many,
	} {
		k := pkey(name)
		s.set(k.Name+"-"+subj, k, list)
		op, _ := storage.NewOp(storage.OpAppend, []any{"x", int64(1)})
		want := append(append([]any{}, s.norm(list).([]any)...), "x", int64(1))
		nv, old, err := s.b.Set(s.ctx, k.Name+"-"+subj, k, storage.Mutation{Op: op})
		if err != nil || !sameTypeEqual(nv, want) || !sameTypeEqual(old, s.norm(list)) {
			t.Errorf("%s: Append = (%.80s, %.80s, %v), want the list with \"x\", 1", name, describe(nv), describe(old), err)
		}
		s.expectValue(k.Name+"-"+subj, k, want)
	}
}
