// Package feedtest holds tests shared by the change feeds of the storage
// backends (see package feed).
package feedtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// Backend is a storage backend with a change feed.
type Backend interface {
	storage.Backend
	storage.FeedStore
}

func Drain(t testing.TB, b storage.FeedStore) []storage.Change {
	t.Helper()
	ctx := context.Background()
	recs, err := b.ReadChanges(ctx, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]string, len(recs))
	out := make([]storage.Change, len(recs))
	for i, r := range recs {
		refs[i], out[i] = r.Ref, r.Change
	}
	if err := b.AckChanges(ctx, refs); err != nil {
		t.Fatal(err)
	}
	return out
}

// Records checks the change records a backend in feed mode writes for the
// writes of a krules App: NoCache Set (plain, unchanged, built-in op, muted,
// extended), Delete, cached writes committed by Store, and Flush; their
// order, versions, values, Extra, trace context and ids. b must be a fresh
// backend in feed mode with no pending record. Values of a subject-deleted
// record and the order of Flush's records follow insertion order on
// backends that keep it and name order on the others (sorted is set).
func Records(t *testing.T, b Backend, sorted bool) {
	ctx := context.Background()
	app := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{
		Trace: func(context.Context) (string, string) {
			return "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ""
		},
	}))
	if !app.ChangeFeed() {
		t.Fatal("ChangeFeed() = false")
	}
	s := app.Subject("u1")
	// NoCache writes.
	mustSet(t, s, "a", 1, krules.NoCache(), krules.WithExtra(krules.Extra{"why": "test"}))
	mustSet(t, s, "a", 1, krules.NoCache())                               // unchanged: no record
	mustSet(t, s, "a", krules.Inc(2), krules.NoCache())                   // built-in op
	mustSet(t, s, "m", "x", krules.NoCache(), krules.Muted())             // muted: no record
	if _, _, err := s.SetExt(ctx, "e", 1, krules.NoCache()); err != nil { // extended: no record
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a", krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	got := Drain(t, b)
	if len(got) != 3 {
		t.Fatalf("records %+v, want 3", got)
	}
	c0, c1, c2 := got[0], got[1], got[2]
	if c0.Type != storage.ChangePropertyChanged || c0.Property != "a" || c0.Old != nil || c0.New != int64(1) || c0.Extra["why"] != "test" || c0.Seq != 1 {
		t.Errorf("record 0 = %+v", c0)
	}
	if c0.TraceParent == "" || c0.ID == "" || c0.Time.IsZero() {
		t.Errorf("record 0 lacks trace, id or time: %+v", c0)
	}
	if c1.Old != int64(1) || c1.New != int64(3) || c1.Seq != 2 || c1.Extra != nil {
		t.Errorf("record 1 = %+v", c1)
	}
	if c2.Type != storage.ChangePropertyDeleted || c2.Old != int64(3) || c2.Seq != 3 {
		t.Errorf("record 2 = %+v", c2)
	}

	// Cached writes: one record per committed change, with each write's options.
	mustSet(t, s, "b", 1, krules.WithExtra(krules.Extra{"n": 1}))
	mustSet(t, s, "b", 2, krules.WithExtra(krules.Extra{"n": 2}))
	mustSet(t, s, "c", 1, krules.Muted())
	if got := Drain(t, b); len(got) != 0 {
		t.Fatalf("records before Store: %+v", got)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	got = Drain(t, b)
	if len(got) != 1 || got[0].Property != "b" || got[0].New != int64(2) || got[0].Old != nil || fmt.Sprint(got[0].Extra["n"]) != "2" || got[0].Seq != 4 {
		t.Fatalf("records after Store: %+v", got)
	}

	// Flush: a deletion per property, then the subject deletion; the
	// sequence goes on.
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got = Drain(t, b)
	var types []string
	for _, c := range got {
		types = append(types, c.Type+":"+c.Property)
	}
	want := []string{"subject-property-deleted:m", "subject-property-deleted:b", "subject-property-deleted:c", "subject-property-deleted:e", "subject-deleted:"}
	if sorted {
		want = []string{"subject-property-deleted:b", "subject-property-deleted:c", "subject-property-deleted:m", "subject-property-deleted:e", "subject-deleted:"}
	}
	if len(got) != len(want) {
		t.Fatalf("flush records %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] || got[i].Seq != int64(5+i) {
			t.Fatalf("flush records %v (seq from %d), want %v from 5", types, got[0].Seq, want)
		}
	}
	last := got[len(got)-1]
	if last.Props["b"] != int64(2) || last.ExtProps["e"] != int64(1) {
		t.Errorf("subject-deleted content %+v", last)
	}
}

func mustSet(t *testing.T, s *krules.Subject, prop string, v any, opts ...krules.SetOption) {
	t.Helper()
	if _, _, err := s.Set(context.Background(), prop, v, opts...); err != nil {
		t.Fatal(err)
	}
}

// Idempotent checks that a keyed direct write (krules.IdempotencyKey) on a
// backend in feed mode writes one change record, and that a retry with the
// same key writes none and returns the first call's result. b must be a
// fresh backend in feed mode with no pending record that records keys.
func Idempotent(t *testing.T, b Backend) {
	ctx := context.Background()
	app := krules.New(krules.WithStorage(b))
	s := app.Subject("idem-1")
	for i := 0; i < 3; i++ {
		nv, old, err := s.Set(ctx, "n", krules.Inc(5), krules.NoCache(), krules.IdempotencyKey("req-1"))
		if err != nil {
			t.Fatalf("keyed Inc, call %d: %v", i+1, err)
		}
		if !storage.Equal(nv, int64(5)) || old != nil {
			t.Fatalf("keyed Inc, call %d = %v, %v; want 5, <nil> (the first call's result)", i+1, nv, old)
		}
	}
	if err := s.Delete(ctx, "n", krules.NoCache(), krules.IdempotencyKey("req-2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "n", krules.NoCache(), krules.IdempotencyKey("req-2")); err != nil {
		t.Fatalf("keyed Delete retry: %v", err)
	}
	got := Drain(t, b)
	if len(got) != 2 || got[0].Type != storage.ChangePropertyChanged || got[1].Type != storage.ChangePropertyDeleted ||
		!storage.Equal(got[0].New, int64(5)) || got[1].Seq != got[0].Seq+1 {
		t.Fatalf("records of 3 keyed Incs and 2 keyed Deletes: %+v; want one change and one deletion", got)
	}
}

// CursorBackend is a backend whose feed has a cursor (storage.FeedCursor).
type CursorBackend interface {
	storage.Backend
	storage.FeedCursor
}

// Cursor checks storage.FeedCursor on an empty feed of b: "" reads from
// the start; a cursor returns only the records committed after it, in
// commit order, also while earlier ones are not yet removed and after the
// cursor's own record was removed; max bounds a read; an empty read waits
// up to wait and is woken by a commit.
func Cursor(t *testing.T, b CursorBackend) {
	t.Helper()
	ctx := context.Background()
	app := krules.New(krules.WithStorage(b))
	set := func(subject string, v int) {
		t.Helper()
		mustSet(t, app.Subject(subject, krules.NoCache()), "v", v)
	}
	read := func(after string, n int, wait time.Duration) []storage.PendingChange {
		t.Helper()
		recs, err := b.ReadChangesAfter(ctx, after, n, wait)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Err != nil {
				t.Fatalf("record %s: %v", r.Ref, r.Err)
			}
		}
		return recs
	}
	values := func(recs []storage.PendingChange) string {
		s := ""
		for _, r := range recs {
			s += fmt.Sprintf("%s/%v ", r.Change.Subject, r.Change.New)
		}
		return s
	}
	set("a", 1)
	set("b", 1)
	set("a", 2)
	all := read("", 10, 0)
	if got, want := values(all), "a/1 b/1 a/2 "; got != want {
		t.Fatalf("read from the start: %q, want %q", got, want)
	}
	if got := values(read("", 2, 0)); got != "a/1 b/1 " {
		t.Errorf("read of 2 from the start: %q", got)
	}
	if got := values(read(all[0].Ref, 10, 0)); got != "b/1 a/2 " {
		t.Errorf("read after the first: %q", got)
	}
	if got := read(all[2].Ref, 10, 0); len(got) != 0 {
		t.Errorf("read after the last: %q", values(got))
	}
	// The cursor's record removed, the next commit still follows it.
	if err := b.AckChanges(ctx, []string{all[0].Ref, all[2].Ref}); err != nil {
		t.Fatal(err)
	}
	set("c", 1)
	if got := values(read(all[2].Ref, 10, 0)); got != "c/1 " {
		t.Errorf("read after a removed record: %q", got)
	}
	if got := values(read("", 10, 0)); got != "b/1 c/1 " {
		t.Errorf("read from the start after a removal: %q", got)
	}
	// A waiting read is woken by a commit.
	last := read("", 10, 0)
	done := make(chan []storage.PendingChange, 1)
	go func() {
		recs, _ := b.ReadChangesAfter(ctx, last[len(last)-1].Ref, 10, 20*time.Second)
		done <- recs
	}()
	// Give the read time to start waiting: one that starts after the
	// commit returns at once, which passes without testing the wake-up.
	time.Sleep(50 * time.Millisecond)
	set("d", 1)
	select {
	case recs := <-done:
		if got := values(recs); got != "d/1 " {
			t.Errorf("woken read: %q", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a waiting read was not woken by a commit")
	}
	Drain(t, b)
}
