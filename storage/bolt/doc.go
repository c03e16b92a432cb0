// Package bolt is an embedded, persistent storage backend for krules, kept in
// one file with go.etcd.io/bbolt. It needs no server: point it at a path and
// subjects survive restarts of the program.
//
// # Usage
//
//	b, err := bolt.Open("/var/lib/myapp/krules.db", bolt.Config{})
//	if err != nil {
//		return err // errors.Is(err, bolt.ErrLocked) when another process has the file
//	}
//	defer b.Close()
//	app := krules.New(krules.WithStorage(b))
//	user := app.Subject("user-1")
//	user.Set(ctx, "name", "John")   // buffered in the handle's cache
//	user.Store(ctx)                  // one atomic, durable write
//
// The same store can be opened from a URL with package storage/storageurl
// ("bolt:///var/lib/myapp/krules.db"), which is how the krules CLI and the
// examples pick it (KRULES_STORAGE).
//
// # Guarantees
//
// Every Set, Delete, Store and Flush is one bbolt write transaction: it is
// atomic (a Store batch is applied entirely or not at all) and durable when
// it returns (the file is fsynced, unless Config.NoSync). bbolt serialises
// writers, so an update function or built-in operation runs exactly once,
// on the latest value, without retries. Reads (Load, Get, ExtProps, List)
// run in read transactions that never block writers or each other. A process
// killed at any point leaves a file that opens, with every write that
// returned before the kill.
//
// Properties keep their insertion order. Values are stored as the JSON text
// of storage.Marshal, the format of the Redis and PostgreSQL backends.
//
// # Layout
//
// Each subject is a top-level bucket named by the subject, holding one key
// whose value is the whole subject: a small binary envelope listing the
// default, then the extended properties in insertion order, each as name and
// JSON text. A small subject's bucket is stored inline in its parent page,
// so a write to it dirties a single B+tree page, exactly like a raw bbolt
// program keeping one bucket per subject. The file also holds a bucket named
// "\x00meta" (format version); no subject name can contain a NUL byte.
//
// One record per subject was chosen over one key per property (with a
// sequence index to keep insertion order) because every operation then
// touches exactly one key: Load is one lookup, Set and Store are one lookup
// and one put, Flush is one bucket delete, List is a cursor over the
// top-level names. Keys per property would need an order index updated on
// every insert and delete, and a sort on every Load. A single nested
// "subjects" bucket was measured too: it costs one more dirty page per
// commit (about 1.4x slower Set). The price of the record is that a write
// re-encodes the subject's envelope (the other values are copied as bytes,
// not decoded), which is linear in the subject's size: fine for subjects of
// tens or hundreds of properties, wasteful for a subject of many megabytes.
//
// # Change feed
//
// With Config.ChangeFeed every write transaction that changes a default
// property (Set, Delete, Store) or flushes a subject also writes a change
// record (storage.Change) into the bucket "\x00feed" and bumps the
// subject's version in "\x00fseq", in the same transaction: a change is in
// the file if and only if its record is, and a record is as durable as its
// data. The Backend then implements storage.FeedStore for a feed.Relay
// running in this process (the only one that can open the file): readers
// are woken by the commits, the relay lease is held in memory. See the feed
// package. A muted write, an extended property and a write that leaves the
// stored text as it was write no record. The subject layout is the same
// with and without the feed.
//
// # Limits
//
//   - One process at a time. bbolt takes an exclusive lock on the file:
//     while one process (or one Backend in this process) has it open,
//     another Open waits Config.Timeout (default 1s) and fails with an error
//     wrapping ErrLocked. Capabilities().Shared is false. To share subjects
//     between processes use the Redis or PostgreSQL backend.
//   - Writers are serialised: throughput is bounded by one fsync per write
//     (a few hundred to a few thousand writes per second on common disks).
//     Buffer writes in a Subject's cache and Store them in one batch, or set
//     Config.NoSync when losing the last writes on an OS crash is acceptable.
//   - An update function runs while the database's write lock is held; keep
//     it short and never call the backend from inside it.
//   - Subject and property names are limited to storage.MaxNameLen (1 KiB),
//     as on every backend (bbolt itself allows keys up to 32 KiB).
//   - The file never shrinks: space freed by deletes is reused, not returned
//     to the OS (use `bbolt compact` offline).
package bolt
