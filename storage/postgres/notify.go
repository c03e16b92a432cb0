package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifier wakes the relay after feed records commit. The NOTIFY is sent
// after the writer's commit, on a connection of its own, and not inside the
// writer's transaction: PostgreSQL serialises the commits of all
// transactions that queued a NOTIFY (a database-wide lock held across the
// commit's WAL flush), which held concurrent feed writers to about one
// commit per fsync (pgbench, 8 clients: 1,600-1,700 tps plain, 620-700 with
// a NOTIFY in each transaction, 1,400-1,900 with it sent after the commit).
//
// The connection is the notifier's own (opened on the first wake with the
// pool's settings, so a Backend in feed mode that writes holds one server
// connection beyond its pool): sent through the pool, a NOTIFY waited
// behind the writers for a connection and took one from them. When that
// connection cannot be opened, the NOTIFY goes through the pool.
//
// Wakes coalesce: while one NOTIFY is on its way, the commits meanwhile ask
// for one more, and two NOTIFYs start at least notifyGap apart, so every
// commit is followed by a NOTIFY that started after it, at most notifyGap
// (plus a round trip) later. Under load a NOTIFY per commit cost more
// server CPU than the record itself (8 writers, 200 subjects, relay
// reading and removing: 490 µs of CPU per change in the writers' and
// relay's server processes with a NOTIFY after every commit, 293 µs without
// any), most of it in the many tiny batches the relay read and removed when
// woken for every record. A wake may be spurious (a write that recorded
// nothing: an extended or muted property, an unchanged value): the relay
// then reads no record. A NOTIFY that fails (or a writer that dies between
// its commit and the wake) costs latency only: the relay also reads the
// feed at least every LeaseTTL/3 (see the feed package).
type notifier struct {
	once   sync.Once
	wake   chan struct{} // capacity 1: a NOTIFY is wanted
	done   chan struct{} // closed by stop
	exited chan struct{} // closed when the goroutine ended (nil: none started)
}

// notifyGap is the least time between the starts of two NOTIFYs of one
// Backend: the most a commit's wake waits for the previous one.
const notifyGap = time.Millisecond

// feedCommitted tells the notifier that feed records may have committed.
// It never blocks.
func (b *Backend) feedCommitted() {
	if !b.cfg.ChangeFeed {
		return
	}
	n := &b.notify
	n.once.Do(func() {
		n.wake = make(chan struct{}, 1)
		n.exited = make(chan struct{})
		go b.notifyLoop(n.wake, n.done, n.exited)
	})
	select {
	case n.wake <- struct{}{}:
	default: // one is wanted already and will start after this commit
	}
}

func (b *Backend) notifyLoop(wake, done <-chan struct{}, exited chan<- struct{}) {
	defer close(exited)
	sql := `SELECT pg_notify('` + b.feed.channel + `', '')`
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(ctx)
			cancel()
		}
	}()
	var last, noConnUntil time.Time
	for {
		select {
		case <-done:
			return
		case <-wake:
		}
		if d := notifyGap - time.Since(last); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-done:
				t.Stop()
				return
			case <-t.C:
			}
		}
		// The NOTIFY below starts after every commit that asked for one
		// so far: it answers them all.
		select {
		case <-wake:
		default:
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn = b.sendNotify(ctx, conn, sql, &noConnUntil)
		cancel()
	}
}

// notifyConnRetry is how long the notifier uses the pool alone after its
// own connection could not be opened (the server at max_connections,
// credentials only the pool's BeforeConnect supplies): not a connection
// attempt per NOTIFY.
const notifyConnRetry = 5 * time.Second

// sendNotify runs sql on conn (connecting first when conn is nil and no
// connection attempt failed in the last notifyConnRetry, see noConnUntil),
// and through the pool when that fails; it returns the connection to use
// next time (nil: none). A failure only delays the relay (see notifier).
func (b *Backend) sendNotify(ctx context.Context, conn *pgx.Conn, sql string, noConnUntil *time.Time) *pgx.Conn {
	if conn == nil || conn.IsClosed() {
		if time.Now().Before(*noConnUntil) {
			_, _ = b.pool.Exec(ctx, sql)
			return nil
		}
		c, err := pgx.ConnectConfig(ctx, b.pool.Config().ConnConfig.Copy())
		if err != nil {
			*noConnUntil = time.Now().Add(notifyConnRetry)
			_, _ = b.pool.Exec(ctx, sql)
			return nil
		}
		conn = c
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		conn.Close(ctx)
		_, _ = b.pool.Exec(ctx, sql)
		return nil
	}
	return conn
}

// stopNotify ends the notifier's goroutine and closes its connection
// (Backend.Close), waiting at most a few seconds for a NOTIFY in flight.
func (b *Backend) stopNotify() {
	n := &b.notify
	n.once.Do(func() {}) // no goroutine starts after this
	close(n.done)
	if n.exited != nil {
		select {
		case <-n.exited:
		case <-time.After(6 * time.Second):
		}
	}
}
