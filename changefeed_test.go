package krules_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed/feedtest"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

func TestChangeFeedRecords(t *testing.T) {
	feedtest.Records(t, memory.New(memory.WithChangeFeed()), false)
}

func drain(t *testing.T, b *memory.Backend) []storage.Change { return feedtest.Drain(t, b) }

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

// Under FeedRemote the writing App's outbound hooks see its custom events
// but not the built-in events of its writes: those leave the process only
// as change records (the worker that consumes them emits them in its own
// App, whose hooks see them), so a transport hook never sends a change twice.
// Under FeedBoth the hooks see every event.
func TestChangeFeedPolicyOutbound(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		policy krules.FeedPolicy
		want   []string
	}{
		{krules.FeedBoth, []string{krules.PropertyChanged, krules.PropertyDeleted, "custom", krules.PropertyDeleted, krules.SubjectDeleted}},
		{krules.FeedRemote, []string{"custom"}},
	} {
		b := memory.New(memory.WithChangeFeed())
		app := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{Policy: tc.policy}))
		var got []string
		app.Outbound("rec", func(_ context.Context, ev *krules.Event) error { got = append(got, ev.Type); return nil })
		s := app.Subject("s", krules.NoCache())
		mustSet(t, s, "x", 1)
		if err := s.Delete(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		if err := app.Emit(ctx, "custom", s, nil); err != nil {
			t.Fatal(err)
		}
		mustSet(t, s, "y", 2, krules.Muted())
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("policy %v: outbound saw %v, want %v", tc.policy, got, tc.want)
		}
		if n := len(drain(t, b)); n != 4 { // changed, deleted, deleted (flush of y), subject deleted
			t.Errorf("policy %v: %d records, want 4", tc.policy, n)
		}
	}
}
