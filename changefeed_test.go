package krules_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

func drain(t *testing.T, b *memory.Backend) []storage.Change {
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

func TestChangeFeedRecords(t *testing.T) {
	ctx := context.Background()
	b := memory.New(memory.WithChangeFeed())
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
	got := drain(t, b)
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
	if got := drain(t, b); len(got) != 0 {
		t.Fatalf("records before Store: %+v", got)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	got = drain(t, b)
	if len(got) != 1 || got[0].Property != "b" || got[0].New != int64(2) || got[0].Old != nil || got[0].Extra["n"] != 2 || got[0].Seq != 4 {
		t.Fatalf("records after Store: %+v", got)
	}

	// Flush: a deletion per property, then the subject deletion; the
	// sequence goes on.
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got = drain(t, b)
	var types []string
	for _, c := range got {
		types = append(types, c.Type+":"+c.Property)
	}
	want := []string{"subject-property-deleted:m", "subject-property-deleted:b", "subject-property-deleted:c", "subject-property-deleted:e", "subject-deleted:"}
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

func TestChangeFeedPolicy(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		policy krules.FeedPolicy
		local  int
	}{{krules.FeedBoth, 1}, {krules.FeedRemote, 0}} {
		b := memory.New(memory.WithChangeFeed())
		app := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{Policy: tc.policy}))
		n := 0
		app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { n++; return nil })
		mustSet(t, app.Subject("s"), "x", 1, krules.NoCache())
		if n != tc.local {
			t.Errorf("policy %v: local handler ran %d times, want %d", tc.policy, n, tc.local)
		}
		if got := drain(t, b); len(got) != 1 {
			t.Errorf("policy %v: %d records, want 1", tc.policy, len(got))
		}
	}
	// Without a feed backend, WithChangeFeed changes nothing.
	app := krules.New(krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote}))
	n := 0
	app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { n++; return nil })
	mustSet(t, app.Subject("s"), "x", 1)
	if n != 1 || app.ChangeFeed() {
		t.Errorf("no feed backend: handler ran %d times (want 1), ChangeFeed %v", n, app.ChangeFeed())
	}
	_ = ctx
}

func TestChangeFeedCascadeDepth(t *testing.T) {
	b := memory.New(memory.WithChangeFeed())
	app := krules.New(krules.WithStorage(b), krules.WithCascadeLimit(3), krules.WithChangeFeed(krules.FeedConfig{Policy: krules.FeedRemote}))
	s := app.Subject("s", krules.NoCache())
	// A write at the limit is refused although no local handler matches.
	_, _, err := s.Set(krules.WithCascadeDepth(context.Background(), 3), "x", 1)
	if !errors.Is(err, krules.ErrCascadeDepth) {
		t.Fatalf("Set at the limit: %v, want ErrCascadeDepth", err)
	}
	if _, err := s.Get(context.Background(), "x"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatalf("refused write was stored: %v", err)
	}
	ctx := krules.WithCascadeDepth(context.Background(), 2)
	if krules.CascadeDepth(ctx) != 2 {
		t.Fatal("CascadeDepth")
	}
	mustSetCtx(t, ctx, s, "x", 1)
	got := drain(t, b)
	if len(got) != 1 || got[0].Depth != 2 {
		t.Fatalf("records %+v, want one at depth 2", got)
	}
}

func mustSetCtx(t *testing.T, ctx context.Context, s *krules.Subject, prop string, v any) {
	t.Helper()
	if _, _, err := s.Set(ctx, prop, v); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryFeedReadWaits(t *testing.T) {
	b := memory.New(memory.WithChangeFeed())
	app := krules.New(krules.WithStorage(b))
	done := make(chan []storage.PendingChange)
	go func() {
		r, _ := b.ReadChanges(context.Background(), 10, time.Minute)
		done <- r
	}()
	time.Sleep(10 * time.Millisecond)
	mustSet(t, app.Subject("w", krules.NoCache()), "x", 1)
	if r := <-done; len(r) != 1 {
		t.Fatalf("ReadChanges woke with %d records", len(r))
	}
}
