package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed/feedtest"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// newFeedBackend returns a Backend in feed mode on tables of its own,
// dropped at the end of the test.
func newFeedBackend(t testing.TB) *postgres.Backend {
	t.Helper()
	pool := testPool(t)
	table := testenv.Unique("krules_feed")
	dropTable(t, pool, "", table)
	dropTable(t, pool, "", table+"_feed")
	dropTable(t, pool, "", table+"_feed_seq")
	b, err := postgres.New(t.Context(), pool, postgres.Config{Table: table, ChangeFeed: true})
	if err != nil {
		t.Fatalf("postgres.New: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

func TestFeedRecords(t *testing.T) {
	feedtest.Records(t, newFeedBackend(t), true)
}

func TestFeedBatchFuncAndMuted(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	P := func(n string) storage.Key { return storage.Key{Kind: storage.Default, Name: n} }
	E := func(n string) storage.Key { return storage.Key{Kind: storage.Extended, Name: n} }
	if err := b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{{Key: P("a"), Value: int64(1)}, {Key: P("same"), Value: "x"}}}); err != nil {
		t.Fatal(err)
	}
	feedtest.Drain(t, b)
	err := b.Store(ctx, "s", storage.Batch{
		Deletes: []storage.Key{P("a"), P("gone")},
		Puts:    []storage.Write{{Key: P("a"), Value: int64(2)}, {Key: P("same"), Value: "x"}, {Key: E("e"), Value: true}, {Key: P("new"), Value: []any{int64(1)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := feedtest.Drain(t, b)
	if len(got) != 2 || got[0].Property != "a" || got[0].Old != int64(1) || got[0].New != int64(2) ||
		got[1].Property != "new" || got[1].Old != nil || got[1].Seq != got[0].Seq+1 {
		t.Fatalf("batch records %+v", got)
	}
	// Deletes only, on a missing subject: nothing written, no record.
	if err := b.Store(ctx, "missing", storage.Batch{Deletes: []storage.Key{P("x")}}); err != nil {
		t.Fatal(err)
	}
	// Update function; an unchanged result writes no record.
	double := storage.Mutation{Func: func(old any, _ bool) (any, error) { return old.(int64) * 2, nil }}
	if _, _, err := b.Set(ctx, "s", P("a"), double); err != nil {
		t.Fatal(err)
	}
	same := storage.Mutation{Func: func(old any, _ bool) (any, error) { return old, nil }}
	if _, _, err := b.Set(ctx, "s", P("a"), same); err != nil {
		t.Fatal(err)
	}
	// A failing op writes neither data nor record.
	if _, _, err := b.Set(ctx, "s", P("same"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(1)}}); err == nil {
		t.Fatal("inc of a string succeeded")
	}
	mctx := storage.WithChange(ctx, &storage.ChangeMeta{Muted: true})
	if _, _, err := b.Set(mctx, "s", P("a"), storage.Mutation{Value: int64(0)}); err != nil {
		t.Fatal(err)
	}
	got = feedtest.Drain(t, b)
	if len(got) != 1 || got[0].Old != int64(2) || got[0].New != int64(4) {
		t.Fatalf("records %+v", got)
	}
	var names []string
	for n, err := range b.List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if len(names) != 1 {
		t.Fatalf("subjects %v, want only s", names)
	}
}

func TestFeedReadWaitsAndLease(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	app := krules.New(krules.WithStorage(b))
	if ok, err := b.FeedLease(ctx, "a", time.Minute); err != nil || !ok {
		t.Fatalf("lease a: %v %v", ok, err)
	}
	done := make(chan int)
	go func() {
		r, err := b.ReadChanges(ctx, 10, time.Minute)
		if err != nil {
			t.Error(err)
		}
		done <- len(r)
	}()
	time.Sleep(100 * time.Millisecond)
	if _, _, err := app.Subject("w", krules.NoCache()).Set(ctx, "x", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-done:
		if n != 1 {
			t.Fatalf("woken read returned %d records", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("NOTIFY did not wake the read")
	}
	// Another backend (another process) cannot take the lease until the
	// holder releases it.
	other, err := postgres.New(ctx, b.Pool(), postgres.Config{Table: strings.Trim(b.Table(), `"`), ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if ok, _ := other.FeedLease(ctx, "b", time.Minute); ok {
		t.Fatal("b got the lease held by a")
	}
	if ok, _ := b.FeedLease(ctx, "b", time.Minute); ok {
		t.Fatal("b got the lease through a's backend")
	}
	if err := b.ReleaseFeedLease(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if ok, err := other.FeedLease(ctx, "b", time.Minute); !ok || err != nil {
		t.Fatalf("b did not get the released lease: %v", err)
	}
}

func TestFeedIdempotent(t *testing.T) { feedtest.Idempotent(t, newFeedBackend(t)) }

// TestFeedEveryWriteWakesTheRead: the NOTIFY is sent after the commit
// (notify.go) by every path that writes records: a plain Set, an Op, an
// update function, a keyed Set, Delete, Store and Flush. A read waiting a
// minute must return the path's record long before that.
func TestFeedEveryWriteWakesTheRead(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	app := krules.New(krules.WithStorage(b))
	if ok, err := b.FeedLease(ctx, "a", time.Minute); err != nil || !ok {
		t.Fatalf("lease: %v %v", ok, err)
	}
	direct := app.Subject("w", krules.NoCache())
	writes := []struct {
		name  string
		write func() error
	}{
		{"set", func() error { _, _, err := direct.Set(ctx, "x", 1); return err }},
		{"op", func() error { _, _, err := direct.Set(ctx, "x", krules.Inc(1)); return err }},
		{"update", func() error {
			_, _, err := direct.Set(ctx, "x", krules.Update(func(old int64) int64 { return old + 1 }))
			return err
		}},
		{"keyed", func() error { _, _, err := direct.Set(ctx, "x", 10, krules.IdempotencyKey("k1")); return err }},
		{"delete", func() error { return direct.Delete(ctx, "x") }},
		{"store", func() error {
			s := app.Subject("w")
			if _, _, err := s.Set(ctx, "y", 1); err != nil {
				return err
			}
			return s.Store(ctx)
		}},
		{"flush", func() error { return app.Subject("w").Flush(ctx) }},
	}
	for _, w := range writes {
		done := make(chan []storage.PendingChange, 1)
		go func() {
			r, err := b.ReadChanges(ctx, 10, time.Minute)
			if err != nil {
				t.Error(err)
			}
			done <- r
		}()
		time.Sleep(50 * time.Millisecond) // let the read start waiting
		if err := w.write(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		select {
		case r := <-done:
			if len(r) == 0 {
				t.Fatalf("%s: the woken read returned no record", w.name)
			}
			refs := make([]string, len(r))
			for i, c := range r {
				refs[i] = c.Ref
			}
			if err := b.AckChanges(ctx, refs); err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no NOTIFY woke the read", w.name)
		}
	}
}

// TestFeedReadFloorKeepsLateCommits: the relay's read starts at a floor
// below which every row is removed (feed.go, readFloor); a record whose
// transaction took its pos early and commits after later records were read
// and removed must still be read. The late transaction writes first (as
// every writer does: the data row, then the record) and holds its record
// uncommitted while other writes are read and removed.
func TestFeedReadFloorKeepsLateCommits(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	if ok, err := b.FeedLease(ctx, "a", time.Minute); err != nil || !ok {
		t.Fatalf("lease: %v %v", ok, err)
	}
	tx, err := b.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+b.FeedTable()+` (id, subject_name, seq, kind, property, new_value) VALUES ('late', 'late', 1, 'c', 'p', '1')`); err != nil {
		t.Fatal(err)
	}
	key := storage.Key{Kind: storage.Default, Name: "v"}
	drain := func() []storage.PendingChange { return drainFeed(t, b) }
	// Reads at once too: no transaction of this test completes before
	// them (a horizon from the snapshot's xmax would pass the record).
	for range 3 {
		if len(drain()) != 0 {
			t.Fatal("read an uncommitted record")
		}
	}
	for i := range 6 {
		if _, _, err := b.Set(ctx, "s", key, storage.Mutation{Value: int64(i)}); err != nil {
			t.Fatal(err)
		}
		for _, r := range drain() {
			if r.Change.ID == "late" {
				t.Fatal("read an uncommitted record")
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	recs := drain()
	if len(recs) != 1 || recs[0].Change.ID != "late" {
		t.Fatalf("after the late commit the read returned %+v, want the late record", recs)
	}
}

// TestFeedReadFloorSequenceRestart: after TRUNCATE ... RESTART IDENTITY of
// the feed table the positions start again at 1, below the read floor; the
// read must find the new records (it starts over once it sees the sequence
// went back).
func TestFeedReadFloorSequenceRestart(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	key := storage.Key{Kind: storage.Default, Name: "v"}
	read := func() []storage.PendingChange { return drainFeed(t, b) }
	for i := range 50 {
		if _, _, err := b.Set(ctx, "s", key, storage.Mutation{Value: int64(i)}); err != nil {
			t.Fatal(err)
		}
		read()
	}
	if _, err := b.Pool().Exec(ctx, `TRUNCATE `+b.FeedTable()+` RESTART IDENTITY`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "s", key, storage.Mutation{Value: int64(-1)}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if recs := read(); len(recs) > 0 {
			if recs[0].Change.New != int64(-1) {
				t.Fatalf("read %+v", recs[0].Change)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the record written after the restart of the sequence was never read")
		}
	}
}

// TestFeedReadFloorRestartPastFloor: after TRUNCATE ... RESTART IDENTITY
// with more new records than the old floor before the next read, every
// new record is read, in order (the floor was kept: 30 of 60 were never
// read, and the ones above the old floor came first; found in review).
func TestFeedReadFloorRestartPastFloor(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	key := storage.Key{Kind: storage.Default, Name: "v"}
	read := func() []storage.PendingChange { return drainFeed(t, b) }
	// Raise the floor: reads more than horizonEvery (10 ms) apart.
	for i := range 30 {
		if _, _, err := b.Set(ctx, "s", key, storage.Mutation{Value: int64(i)}); err != nil {
			t.Fatal(err)
		}
		read()
		time.Sleep(11 * time.Millisecond)
	}
	read()
	time.Sleep(11 * time.Millisecond)
	read()
	if _, err := b.Pool().Exec(ctx, `TRUNCATE `+b.FeedTable()+` RESTART IDENTITY`); err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		if _, _, err := b.Set(ctx, "s", key, storage.Mutation{Value: int64(1000 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []any
	for range 30 {
		for _, r := range read() {
			got = append(got, r.Change.New)
		}
		if len(got) >= 60 {
			break
		}
		time.Sleep(15 * time.Millisecond)
	}
	if len(got) != 60 {
		t.Fatalf("read %d of the 60 records written after the restart", len(got))
	}
	for i, v := range got {
		if v != int64(1000+i) {
			t.Fatalf("record %d after the restart is %v, want %d (order)", i, v, 1000+i)
		}
	}
}

// drainFeed reads up to 100 records of b's feed at once and removes them.
func drainFeed(t *testing.T, b *postgres.Backend) []storage.PendingChange {
	t.Helper()
	ctx := context.Background()
	recs, err := b.ReadChanges(ctx, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]string, len(recs))
	for i, r := range recs {
		refs[i] = r.Ref
	}
	if err := b.AckChanges(ctx, refs); err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestFeedReadNewChanges: ReadNewChanges returns each record once while it
// is not removed (later reads leave it out and wait for new ones), a fresh
// read returns the ones not removed again, and the read floor never passes
// a record left out: after reads that left records out across several
// floor horizons, a fresh read still returns them (with the floor's removal
// inference of ReadChanges, which takes a record a read did not return for
// removed, the floor passed them and they were never read again).
func TestFeedReadNewChanges(t *testing.T) {
	ctx := context.Background()
	b := newFeedBackend(t)
	if ok, err := b.FeedLease(ctx, "a", time.Minute); err != nil || !ok {
		t.Fatalf("lease: %v %v", ok, err)
	}
	key := storage.Key{Kind: storage.Default, Name: "v"}
	set := func(subject string, v int64) {
		t.Helper()
		if _, _, err := b.Set(ctx, subject, key, storage.Mutation{Value: v}); err != nil {
			t.Fatal(err)
		}
	}
	values := func(recs []storage.PendingChange) []int64 {
		var out []int64
		for _, r := range recs {
			n, _ := r.Change.New.(int64)
			out = append(out, n)
		}
		return out
	}
	read := func(fresh bool) []storage.PendingChange {
		t.Helper()
		recs, err := b.ReadNewChanges(ctx, fresh, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	for i := range 5 {
		set("s"+string(rune('a'+i)), int64(i))
	}
	first := read(true)
	if got := values(first); len(got) != 5 {
		t.Fatalf("first read: %v, want the 5 records", got)
	}
	// New records only, across several floor horizons (10 ms apart).
	for i := range 6 {
		set("t", int64(10+i))
		got := values(read(false))
		if len(got) != 1 || got[0] != int64(10+i) {
			t.Fatalf("read %d: %v, want only [%d]", i, got, 10+i)
		}
		time.Sleep(15 * time.Millisecond)
	}
	if got := read(false); len(got) != 0 {
		t.Fatalf("read returned %v again", values(got))
	}
	// Remove two of the first five: a fresh read returns the rest, the
	// 6 of "t" included.
	if err := b.AckChanges(ctx, []string{first[0].Ref, first[1].Ref}); err != nil {
		t.Fatal(err)
	}
	if got := values(read(true)); len(got) != 9 || got[0] != 2 || got[3] != 10 {
		t.Fatalf("fresh read: %v, want [2 3 4 10 ... 15]", got)
	}
	// A read that finds nothing new waits for the next commit's wake.
	done := make(chan []storage.PendingChange, 1)
	go func() {
		recs, err := b.ReadNewChanges(ctx, false, 100, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- recs
	}()
	time.Sleep(50 * time.Millisecond)
	set("u", 99)
	if got := values(<-done); len(got) != 1 || got[0] != 99 {
		t.Fatalf("waiting read: %v, want [99]", got)
	}
}
