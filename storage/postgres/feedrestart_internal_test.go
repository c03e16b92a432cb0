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
// built on the old connection is gone, so the next read fails (the lease
// went with the connection: errFeedLeaseLost; or errFeedRestarted) and the
// relay drops its pipeline, and the fresh read returns the record in flight
// first. Before, the read went on, the
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
		if errors.Is(err, errFeedRestarted) || errors.Is(err, errFeedLeaseLost) {
			restarted++
			// As the relay: it drops its pipeline, takes the lease again
			// and reads fresh.
			if ok, err := b.FeedLease(ctx, "relay", time.Minute); err != nil || !ok {
				t.Fatalf("FeedLease after the reconnect = %v, %v; want true", ok, err)
			}
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
		t.Errorf("%d reads failed with errFeedRestarted or errFeedLeaseLost, want 1 (the first after the reconnect)", restarted)
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

// The relay's connection ends (pgx closed it on a fatal error) and, with
// it, the advisory lock: another process takes the lease. The next read of
// the first relay fails with errFeedLeaseLost instead of reading on
// without the lock, and its FeedLease reports the lease as someone else's.
func TestFeedReadFailsWhenTheLeaseWentWithItsConnection(t *testing.T) {
	ctx := context.Background()
	b, pool := leasedFeed(t)
	other, err := New(ctx, pool, Config{Table: b.cfg.Table, ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	feedSet(t, b, "a", 1)
	b.feed.mu.Lock()
	b.feed.conn.Close(ctx) // as pgx does on a fatal error
	b.feed.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, err := other.FeedLease(ctx, "other", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other relay did not get the lease after the first one's connection ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, err := b.ReadNewChanges(ctx, true, 100, 0); !errors.Is(err, errFeedLeaseLost) {
		t.Fatalf("read after the lease went with the connection: %v, %v; want errFeedLeaseLost", recNames(got), err)
	}
	if ok, err := b.FeedLease(ctx, "relay", time.Minute); err != nil || ok {
		t.Fatalf("FeedLease = %v, %v; want false: the other relay holds it", ok, err)
	}
	// The other one releases: the first takes it again and reads.
	if err := other.ReleaseFeedLease(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.FeedLease(ctx, "relay", time.Minute); err != nil || !ok {
		t.Fatalf("FeedLease after the release = %v, %v; want true", ok, err)
	}
	if got, err := b.ReadNewChanges(ctx, true, 100, 0); err != nil || len(got) != 1 {
		t.Fatalf("read with the lease again: %v, %v; want a's record", recNames(got), err)
	}
}
