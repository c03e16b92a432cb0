package storagetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// longName returns a name of exactly n bytes that ends with a multi-byte
// character, unique to the subtest when it names a subject.
func (s *suite) longName(prefix string, n int) string {
	name := prefix + strings.Repeat("x", n-len(prefix)-2) + "é"
	if len(name) != n {
		s.t.Fatalf("longName: %d bytes, want %d", len(name), n)
	}
	return name
}

// testNamesMaxLen: the backend holds subject and property names of
// storage.MaxNameLen bytes (the limit every caller enforces) through every
// method.
func testNamesMaxLen(t *testing.T, s *suite) {
	subj := s.subject("")
	subj = s.subject(subj + s.longName("", storage.MaxNameLen-len(subj))[len(subj):])
	if len(subj) != storage.MaxNameLen {
		t.Fatalf("subject name of %d bytes, want %d", len(subj), storage.MaxNameLen)
	}
	if err := storage.ValidateName("subject", subj); err != nil {
		t.Fatalf("ValidateName refuses a name of MaxNameLen bytes: %v", err)
	}
	prop := s.longName("p", storage.MaxNameLen)
	s.set(subj, pkey(prop), 1)
	s.set(subj, ekey(prop), "e")
	s.store(subj, storage.Batch{Puts: []storage.Write{{Key: pkey("short"), Value: int64(2)}}})
	s.expectValue(subj, pkey(prop), int64(1))
	s.expectSnapshot(subj, map[string]any{prop: int64(1), "short": int64(2)}, map[string]any{prop: "e"})
	inc, _ := storage.NewOp(storage.OpInc, 1)
	if nv, _, err := s.b.Set(s.ctx, subj, pkey(prop), storage.Mutation{Op: inc}); err != nil || nv != int64(2) {
		t.Errorf("Inc of a MaxNameLen property: (%v, %v), want 2", nv, err)
	}
	if _, err := s.b.Delete(s.ctx, subj, pkey(prop)); err != nil {
		t.Errorf("Delete of a MaxNameLen property: %v", err)
	}
	if l, ok := s.b.(storage.Lister); ok {
		found := false
		for name, err := range l.List(s.ctx, subj) {
			if err != nil {
				t.Fatal(err)
			}
			found = found || name == subj
		}
		if !found {
			t.Errorf("List does not return the subject of MaxNameLen bytes")
		}
	}
}

// testSubjectNameLimit: a krules Subject refuses a subject or property name
// beyond storage.MaxNameLen with ErrInvalidName, writes nothing, and quotes
// only the start of the name in the error.
func testSubjectNameLimit(t *testing.T, a *appSuite) {
	ctx := a.ctx
	// Not registered for the final flush: no backend call may name it.
	long := a.longName("st-"+a.tag+"-", storage.MaxNameLen+1)
	_, _, err := a.app.Subject(long).Set(ctx, "p", 1)
	expectNameErr(t, "Set on a subject name of MaxNameLen+1 bytes", err)
	_, _, err = a.app.Subject(long).Set(ctx, "p", 1, krules.NoCache())
	expectNameErr(t, "NoCache Set on a subject name of MaxNameLen+1 bytes", err)
	expectNameErr(t, "Store of a subject name of MaxNameLen+1 bytes", a.app.Subject(long).Store(ctx))
	a.expectNoEvents("a refused Set")

	name := a.subject("props")
	h := a.app.Subject(name)
	prop := a.longName("p", storage.MaxNameLen+1)
	_, _, err = h.Set(ctx, prop, 1)
	expectNameErr(t, "Set of a property name of MaxNameLen+1 bytes", err)
	_, _, err = h.SetExt(ctx, prop, 1)
	expectNameErr(t, "SetExt of a property name of MaxNameLen+1 bytes", err)
	must(t, "Store", h.Store(ctx))
	a.expectSnapshot(name, nil, nil)

	ok := a.longName("p", storage.MaxNameLen)
	if _, _, err := h.Set(ctx, ok, 1); err != nil {
		t.Fatalf("Set of a property name of MaxNameLen bytes: %v", err)
	}
	must(t, "Store", h.Store(ctx))
	a.expectSnapshot(name, map[string]any{ok: int64(1)}, nil)
}

func expectNameErr(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("%s: err = %v, want ErrInvalidName", what, err)
		return
	}
	if n := len(err.Error()); n > 400 {
		t.Errorf("%s: error of %d bytes, want the name cut: %.120q…", what, n, err)
	}
}
