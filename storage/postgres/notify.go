package postgres

import (
	"context"
	"sync"
	"time"
)

// notifier wakes the relay after feed records commit. The NOTIFY is sent
// after the writer's commit, on a connection of its own, and not inside the
// writer's transaction: PostgreSQL serialises the commits of all
// transactions that queued a NOTIFY (a database-wide lock held across the
// commit's WAL flush), which held concurrent feed writers to about one
// commit per fsync (pgbench, 8 clients: 1,600-1,700 tps plain, 620-700 with
// a NOTIFY in each transaction, 1,400-1,900 with it sent after the commit).
//
// A wake may be spurious (a write that recorded nothing: an extended or
// muted property, an unchanged value): the relay then reads no record.
// Wakes coalesce: while one NOTIFY is on its way, the commits meanwhile ask
// for one more, sent when it returns, so every commit is followed by a
// NOTIFY that started after it. A NOTIFY that fails (or a writer that dies
// between its commit and the wake) costs latency only: the relay also reads
// the feed at least every LeaseTTL/3 (see the feed package).
type notifier struct {
	once sync.Once
	wake chan struct{} // capacity 1: a NOTIFY is wanted
	done chan struct{} // closed by stop
}

// feedCommitted tells the notifier that feed records may have committed.
// It never blocks.
func (b *Backend) feedCommitted() {
	if !b.cfg.ChangeFeed {
		return
	}
	n := &b.notify
	n.once.Do(func() {
		n.wake = make(chan struct{}, 1)
		go b.notifyLoop(n.wake, n.done)
	})
	select {
	case n.wake <- struct{}{}:
	default: // one is wanted already and will start after this commit
	}
}

func (b *Backend) notifyLoop(wake, done <-chan struct{}) {
	sql := `SELECT pg_notify('` + b.feed.channel + `', '')`
	for {
		select {
		case <-done:
			return
		case <-wake:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = b.pool.Exec(ctx, sql) // a failure only delays the relay (see notifier)
		cancel()
	}
}

// stopNotify ends the notifier's goroutine (Backend.Close).
func (b *Backend) stopNotify() {
	b.notify.once.Do(func() {}) // no goroutine starts after this
	close(b.notify.done)
}
