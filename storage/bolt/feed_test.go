package bolt_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed/feedtest"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/storagetest"
)

func openFeed(t testing.TB, path string) *bolt.Backend {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "feed.db")
	}
	b, err := bolt.Open(path, bolt.Config{NoSync: true, ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestFeedRecords(t *testing.T) { feedtest.Records(t, openFeed(t, ""), false) }

func TestFeedIdempotent(t *testing.T) { feedtest.Idempotent(t, openFeed(t, "")) }

// The data behaviour is the same with the feed on. Under the race detector
// the concurrent subtests make a quarter of their rounds (raceScaleDown):
// bbolt serialises the writers of a file in one write transaction with or
// without the feed, and TestConformance runs the full counts.
func TestFeedConformance(t *testing.T) {
	storagetest.RunConfig(t, storagetest.Config{
		Parallel:  fileParallel,
		ScaleDown: raceScaleDown(),
		New:       func(t *testing.T) storage.Backend { return openFeed(t, "") },
	})
}

func TestFeedBatchAndOps(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t, "")
	set := func(k storage.Key, v any) {
		t.Helper()
		if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: v}); err != nil {
			t.Fatal(err)
		}
	}
	// A batch: delete-then-put of one property is one change; an unchanged
	// put none; extended properties none.
	set(dk("a"), int64(1))
	set(dk("same"), "x")
	feedtest.Drain(t, b)
	err := b.Store(ctx, "s", storage.Batch{
		Deletes: []storage.Key{dk("a"), dk("gone")},
		Puts:    []storage.Write{{Key: dk("a"), Value: int64(2)}, {Key: dk("same"), Value: "x"}, {Key: ek("e"), Value: true}, {Key: dk("new"), Value: []any{int64(1)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := feedtest.Drain(t, b)
	if len(got) != 2 || got[0].Property != "a" || got[0].Old != int64(1) || got[0].New != int64(2) ||
		got[1].Property != "new" || got[1].Old != nil || got[1].Seq != got[0].Seq+1 {
		t.Fatalf("batch records %+v", got)
	}
	// A batch deleting a property records its deletion.
	if err := b.Store(ctx, "s", storage.Batch{Deletes: []storage.Key{dk("same")}}); err != nil {
		t.Fatal(err)
	}
	if got := feedtest.Drain(t, b); len(got) != 1 || got[0].Type != storage.ChangePropertyDeleted || got[0].Old != "x" {
		t.Fatalf("batch delete records %+v", got)
	}
	// Built-in ops and update functions record old and new values.
	if _, _, err := b.Set(ctx, "s", dk("a"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(5)}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", dk("new"), storage.Mutation{Op: &storage.Op{Kind: storage.OpAppend, Arg: []any{int64(2)}}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", dk("a"), storage.Mutation{Func: func(old any, _ bool) (any, error) { return old.(int64) * 2, nil }}); err != nil {
		t.Fatal(err)
	}
	// A failing op writes neither data nor record.
	set(dk("str"), "x")
	feedtest.Drain(t, b)
	if _, _, err := b.Set(ctx, "s", dk("str"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(1)}}); err == nil {
		t.Fatal("inc of a string succeeded")
	}
	if _, _, err := b.Set(ctx, "s", ek("x"), storage.Mutation{Value: int64(1)}); err != nil { // extended: no record
		t.Fatal(err)
	}
	got = feedtest.Drain(t, b)
	if len(got) != 0 {
		t.Fatalf("records after a failed op and an extended write: %+v", got)
	}
	// Muted through the context: nothing recorded.
	mctx := storage.WithChange(ctx, &storage.ChangeMeta{Muted: true})
	if _, _, err := b.Set(mctx, "s", dk("a"), storage.Mutation{Value: int64(0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Delete(mctx, "s", dk("a")); err != nil {
		t.Fatal(err)
	}
	if got := feedtest.Drain(t, b); len(got) != 0 {
		t.Fatalf("muted writes recorded: %+v", got)
	}
	// Extra outside the value model refuses the write before anything is written.
	bad := storage.WithChange(ctx, &storage.ChangeMeta{Extra: map[string]any{"ch": make(chan int)}})
	if _, _, err := b.Set(bad, "s", dk("z"), storage.Mutation{Value: int64(1)}); err == nil {
		t.Fatal("Set with an unencodable Extra succeeded")
	}
	if _, err := b.Get(ctx, "s", dk("z")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("refused Set wrote the value: %v", err)
	}
}

// The ops: Inc, Append, update function, and its old/new values.
func TestFeedOpValues(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t, "")
	if _, _, err := b.Set(ctx, "s", dk("a"), storage.Mutation{Value: int64(2)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", dk("a"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(5)}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", dk("a"), storage.Mutation{Func: func(old any, _ bool) (any, error) { return old.(int64) * 2, nil }}); err != nil {
		t.Fatal(err)
	}
	got := feedtest.Drain(t, b)
	if len(got) != 3 || got[1].Old != int64(2) || got[1].New != int64(7) || got[2].Old != int64(7) || got[2].New != int64(14) {
		t.Fatalf("op records %+v", got)
	}
}

// Records are in the file: they survive a reopen, and versions go on.
func TestFeedDurableAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "feed.db")
	b, err := bolt.Open(path, bolt.Config{ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	app := krules.New(krules.WithStorage(b))
	for i := 0; i < 3; i++ {
		if _, _, err := app.Subject("d", krules.NoCache()).Set(ctx, "n", krules.Inc(1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openFeed(t, path)
	got := feedtest.Drain(t, b)
	if len(got) != 3 || got[2].Seq != 3 || got[2].New != int64(3) {
		t.Fatalf("records after reopen: %+v", got)
	}
	if err := b.Flush(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "d", dk("n"), storage.Mutation{Value: int64(1)}); err != nil {
		t.Fatal(err)
	}
	got = feedtest.Drain(t, b)
	if len(got) != 3 || got[0].Seq != 4 || got[1].Type != storage.ChangeSubjectDeleted || got[2].Seq != 6 {
		t.Fatalf("versions after a flush: %+v", got)
	}
	// Without the feed the same file writes no record.
	b.Close()
	plain, err := bolt.Open(path, bolt.Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if plain.ChangeFeed() {
		t.Fatal("ChangeFeed() without Config.ChangeFeed")
	}
	if _, _, err := plain.Set(ctx, "d", dk("n"), storage.Mutation{Value: int64(9)}); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.ReadChanges(ctx, 10, 0); !errors.Is(err, bolt.ErrFeedOff) {
		t.Fatalf("ReadChanges without the feed: %v", err)
	}
	plain.Close()
	b = openFeed(t, path)
	if got := feedtest.Drain(t, b); len(got) != 0 {
		t.Fatalf("a write without the feed recorded %+v", got)
	}
}

// A record that cannot be decoded comes back with Err set, and does not
// hide the records after it.
func TestFeedUndecodableRecord(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t, "")
	if err := bolt.RawFeedPut(b, []byte("\x01garbage")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", dk("a"), storage.Mutation{Value: int64(1)}); err != nil {
		t.Fatal(err)
	}
	recs, err := b.ReadChanges(ctx, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Err == nil || recs[1].Err != nil || recs[1].Change.New != int64(1) {
		t.Fatalf("records %+v", recs)
	}
	if err := b.AckChanges(ctx, []string{recs[0].Ref, recs[1].Ref, "not-a-ref"}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := b.ReadChanges(ctx, 10, 0); len(recs) != 0 {
		t.Fatalf("records left after the ack: %+v", recs)
	}
}

// A blocked ReadChanges is woken by a commit that writes a record.
func TestFeedReadBlocksAndLease(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t, "")
	app := krules.New(krules.WithStorage(b))
	done := make(chan int)
	go func() {
		r, err := b.ReadChanges(ctx, 10, time.Minute)
		if err != nil {
			t.Error(err)
		}
		done <- len(r)
	}()
	time.Sleep(50 * time.Millisecond)
	if _, _, err := app.Subject("w", krules.NoCache()).Set(ctx, "x", 1); err != nil {
		t.Fatal(err)
	}
	if n := <-done; n != 1 {
		t.Fatalf("blocked read returned %d records", n)
	}
	// No record: the wait ends empty, and a cancelled context ends it.
	feedtest.Drain(t, b)
	if r, err := b.ReadChanges(ctx, 10, 20*time.Millisecond); err != nil || len(r) != 0 {
		t.Fatalf("empty wait: %v %v", r, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.ReadChanges(cctx, 10, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}

	ok, err := b.FeedLease(ctx, "a", time.Minute)
	if err != nil || !ok {
		t.Fatalf("lease a: %v %v", ok, err)
	}
	if ok, _ := b.FeedLease(ctx, "b", time.Minute); ok {
		t.Fatal("b got the lease held by a")
	}
	if ok, _ := b.FeedLease(ctx, "a", 50*time.Millisecond); !ok {
		t.Fatal("a could not renew")
	}
	time.Sleep(100 * time.Millisecond)
	if ok, _ := b.FeedLease(ctx, "b", time.Minute); !ok {
		t.Fatal("b did not get the expired lease")
	}
	if err := b.ReleaseFeedLease(ctx, "a"); err != nil { // not the owner: no effect
		t.Fatal(err)
	}
	if ok, _ := b.FeedLease(ctx, "a", time.Minute); ok {
		t.Fatal("release by a non-owner freed the lease")
	}
	if err := b.ReleaseFeedLease(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.FeedLease(ctx, "a", time.Minute); !ok {
		t.Fatal("released lease not free")
	}
	b.Close()
	if _, err := b.ReadChanges(ctx, 10, 0); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("ReadChanges after Close: %v", err)
	}
}

// raceScaleDown is storagetest.Config.ScaleDown for the suites here that
// run a quarter of the concurrent rounds under the race detector, where
// every write costs an order of magnitude more; without it (CI's full-size
// step) they run the full counts.
func raceScaleDown() int {
	if testenv.Race {
		return 4
	}
	return 1
}
