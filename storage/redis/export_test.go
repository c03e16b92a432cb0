package redis

import "github.com/krules-go/krules/storage"

// UseWatch switches b to the WATCH/MULTI/EXEC design for update functions,
// so the tests can check and measure it against compare-and-set.
func UseWatch(b *Backend) { b.watch = true }

// LockRefs reports how many goroutines hold or wait for the in-process lock
// of one property's update functions.
func LockRefs(b *Backend, subject string, k storage.Key) int {
	name := b.Key(subject) + "\x00" + field(k)
	b.locks.mu.Lock()
	defer b.locks.mu.Unlock()
	if l := b.locks.m[name]; l != nil {
		return l.refs
	}
	return 0
}

// RecordKey and KeySlot expose the idempotency record naming to tests.
var (
	RecordKey = recordKey
	KeySlot   = keySlot
)
