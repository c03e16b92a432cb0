package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
)

// leasedFeed returns a feed Backend of its own tables holding the relay
// lease, and its pool.
func leasedFeed(t *testing.T) (*Backend, *pgxpool.Pool) {
	ctx := context.Background()
	pcfg, err := PoolConfig(testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	table := testenv.Unique("krules_feedrestart")
	t.Cleanup(func() {
		for _, s := range []string{"", "_feed", "_feed_seq"} {
			_, _ = pool.Exec(ctx, `DROP TABLE IF EXISTS `+pgx.Identifier{table + s}.Sanitize())
		}
	})
	b, err := New(ctx, pool, Config{Table: table, ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if ok, err := b.FeedLease(ctx, "relay", time.Minute); err != nil || !ok {
		t.Fatalf("lease: %v %v", ok, err)
	}
	return b, pool
}

func feedSet(t *testing.T, b *Backend, subject string, v int64) {
	t.Helper()
	if _, _, err := b.Set(context.Background(), subject, storage.Key{Kind: storage.Default, Name: "v"}, storage.Mutation{Value: v}); err != nil {
		t.Fatal(err)
	}
}

func recNames(recs []storage.PendingChange) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Change.Subject+"@"+r.Ref)
	}
	return out
}

// The relay's connection is replaced while records are in flight (pgx
// closed it on a fatal error; the next read reconnects): the read state
// built on the old connection is gone, so the next read that is not fresh
// fails with errFeedRestarted (the relay drops its pipeline), and the fresh
// read returns the record in flight first. Before, the read went on, the
// floor passed the record in flight, and a later fresh read missed it.
func TestReadNewChangesAfterReconnect(t *testing.T) {
	ctx := context.Background()
	b, _ := leasedFeed(t)
	feedSet(t, b, "a", 1)
	first, err := b.ReadNewChanges(ctx, true, 100, 0)
	if err != nil || len(first) != 1 {
		t.Fatalf("first read: %v %v", recNames(first), err)
	}
	b.feed.mu.Lock()
	b.feed.conn.Close(ctx) // as pgx does on a fatal error
	b.feed.mu.Unlock()
	restarted := 0
	for i := range 6 {
		feedSet(t, b, "a", int64(10+i))
		_, err := b.ReadNewChanges(ctx, false, 100, 0)
		if errors.Is(err, errFeedRestarted) {
			restarted++
			// As the relay: it drops its pipeline and reads fresh.
			got, err := b.ReadNewChanges(ctx, true, 100, 0)
			if err != nil || len(got) != 2 || got[0].Ref != first[0].Ref {
				t.Fatalf("fresh read after the restart: %v, %v; want %s first", recNames(got), err, first[0].Ref)
			}
		} else if err != nil {
			t.Fatal(err)
		}
		time.Sleep(15 * time.Millisecond) // horizons pass (horizonEvery)
	}
	if restarted != 1 {
		t.Errorf("%d reads failed with errFeedRestarted, want 1 (the first after the reconnect)", restarted)
	}
	got, err := b.ReadNewChanges(ctx, true, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 || got[0].Ref != first[0].Ref {
		t.Fatalf("fresh read: %v, want %s first and the 6 later records of a (none removed); floor %d", recNames(got), first[0].Ref, b.feed.fl.floor)
	}
}

// TRUNCATE ... RESTART IDENTITY while records are in flight: new rows take
// their positions. The next read that is not fresh fails (the relay starts
// over), the fresh read returns the new rows, and the late removal of the
// old records does not remove the new rows that reuse their positions.
func TestReadNewChangesAfterTruncateRestartIdentity(t *testing.T) {
	ctx := context.Background()
	b, pool := leasedFeed(t)
	feedSet(t, b, "a", 1)
	feedSet(t, b, "a", 2)
	first, err := b.ReadNewChanges(ctx, true, 100, 0)
	if err != nil || len(first) != 2 {
		t.Fatalf("first read: %v %v", recNames(first), err)
	}
	if _, err := pool.Exec(ctx, `TRUNCATE `+b.feed.table+` RESTART IDENTITY`); err != nil {
		t.Fatal(err)
	}
	feedSet(t, b, "c", 1)
	feedSet(t, b, "c", 2)
	if got, err := b.ReadNewChanges(ctx, false, 100, 0); !errors.Is(err, errFeedRestarted) {
		t.Fatalf("read after TRUNCATE RESTART IDENTITY: %v, %v; want errFeedRestarted", recNames(got), err)
	}
	got, err := b.ReadNewChanges(ctx, true, 100, 0)
	if err != nil || len(got) != 2 || got[0].Change.Subject != "c" {
		t.Fatalf("fresh read: %v, %v; want c's 2 records", recNames(got), err)
	}
	// The removal of a's records, published before the TRUNCATE:
	if err := b.AckChanges(ctx, []string{first[0].Ref, first[1].Ref}); err != nil {
		t.Fatal(err)
	}
	all, err := b.ReadNewChanges(ctx, true, 100, 0)
	if err != nil || len(all) != 2 {
		t.Fatalf("after the removal of the old records: %v, %v; want c's 2 records still there", recNames(all), err)
	}
}
