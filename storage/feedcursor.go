package storage

import (
	"context"
	"time"
)

// FeedCursor is an optional interface of a FeedStore whose feed order is
// commit order across all subjects: a record committed after a read can
// never sort before a record that read returned. A relay can then keep a
// cursor (the Ref of the last record it read) and read only what was
// committed since, instead of reading the oldest pending records again
// while they are still being published (ReadChanges). The Redis backend
// (stream ids) and the memory backend implement it; PostgreSQL cannot (its
// pos order is not commit order across transactions): its relay runs the
// same pipeline over postgres.Backend.ReadNewChanges, whose reads leave out
// the records already returned and not yet removed.
//
// Like ReadChanges it is only called by the lease holder; it may be called
// while AckChanges of earlier records runs.
type FeedCursor interface {
	FeedStore
	// ReadChangesAfter returns up to max pending records that follow the
	// record after (a Ref this store returned; "" for the start of the
	// feed), oldest first. When there is none it waits up to wait for one
	// (woken by a store notification) and may return none. Records removed
	// by AckChanges are not returned; a removed after is valid.
	ReadChangesAfter(ctx context.Context, after string, max int, wait time.Duration) ([]PendingChange, error)
}
