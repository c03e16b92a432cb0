// Package sqlite is the SQLite storage backend of krules: every subject in
// one database file, shared by the goroutines of a process and by the
// processes of one machine.
//
// # Getting started
//
//	backend, err := sqlite.Open(ctx, "/var/lib/myapp/subjects.db", sqlite.Config{})
//	if err != nil {
//		return err
//	}
//	defer backend.Close()
//	app := krules.New(krules.WithStorage(backend))
//
//	user := app.Subject("user-123")
//	user.Set(ctx, "email", "john@example.com")
//	user.Store(ctx)                                          // one transaction
//	user.Set(ctx, "logins", krules.Inc(1), krules.NoCache()) // atomic, also across processes
//
// Through package storageurl the same backend is "sqlite:///var/lib/myapp/subjects.db"
// (an absolute path after three slashes; "sqlite:relative/path.db" for a relative one).
//
// # Layout
//
// One table (default "subjects", see [Config]) holds one row per subject,
// the layout of the PostgreSQL backend and of Python KRules' PostgreSQL
// storage, with the JSON in TEXT columns:
//
//	CREATE TABLE subjects (
//		subject_name   TEXT PRIMARY KEY,
//		properties     TEXT NOT NULL DEFAULT '{}',
//		ext_properties TEXT NOT NULL DEFAULT '{}',
//		updated_at     TEXT DEFAULT CURRENT_TIMESTAMP
//	) WITHOUT ROWID
//
// Every property is a top-level key of the properties (default) or
// ext_properties (extended) object. Load and ExtProps return properties
// sorted by name.
//
// # Driver: modernc.org/sqlite
//
// The driver is modernc.org/sqlite, SQLite's C source translated to Go, not
// github.com/mattn/go-sqlite3, which binds the C library through cgo. With
// modernc a program using krules still builds with CGO_ENABLED=0: static
// binaries, cross-compilation with GOOS/GOARCH alone, distroless or scratch
// images, no C toolchain on the build machine, and no cgo call overhead or
// C stacks in profiles. The price is speed: the translated C runs slower
// than the compiled one, and much slower under the race detector, which
// instruments every memory access of the translated code. For a single-machine store this is the right trade; a program that
// already uses cgo and needs the last microseconds can register mattn's
// driver and copy this package's statements.
//
// # WAL, synchronous=NORMAL, busy timeout
//
// Open switches the file to WAL mode (kept by the file): readers never block
// the writer nor each other, and a commit appends to the -wal file instead
// of rewriting pages. WAL needs memory shared between the processes through
// the -shm file, so the file must be on a local file system; ":memory:" and
// network file systems are not supported. With synchronous=NORMAL (the
// default) a commit is not fsync'd: a process crash loses nothing committed
// and never corrupts the file, an OS crash or power loss may undo the last
// commits; Config.Synchronous "FULL" fsyncs every commit. Config.BusyTimeout
// (default 5s) is how long a statement waits for another process's write
// lock.
//
// # Atomicity: BEGIN IMMEDIATE, operations computed in Go
//
// Every write (Set, Delete, Store, Flush) is one BEGIN IMMEDIATE
// transaction: it takes the database's write lock at its first statement,
// so no writer of this or another process can interleave between its read
// and its write. A DEFERRED transaction would read on a snapshot and try to
// take the lock only at its first write; when another process committed in
// between, SQLite fails it at once with SQLITE_BUSY_SNAPSHOT, without
// waiting on the busy timeout, and every read-modify-write would need an
// optimistic retry loop. With IMMEDIATE there is none: an update function
// runs exactly once per successful call (while the lock is held, so keep it
// short), and only a lock held beyond BusyTimeout by another process makes
// the whole transaction retry (Config.MaxRetries; then the error wraps
// [storage.ErrConflict] and nothing was written). Writers of one Backend
// queue on a mutex in Go, so only other processes' writers wait on SQLite's
// busy handler.
//
// Built-in operations (Append, Max, Min, and Inc in general) are computed
// in Go inside that transaction: read the property, [storage.Op.Apply],
// write it with one json_set upsert. SQLite's own arithmetic would not give
// the same results: it silently turns an int64 overflow into a REAL
// (9223372036854775807 + 1 yields 9.2233720368547758e+18) and has its own
// rules for mixed integer and REAL values, while Go gives exactly the values
// and errors of storage.Op.Apply that every backend without server-side
// operations shares. The one exception is the common case of an integer
// Inc of a stored integer whose sum stays in the int64 range (and no
// idempotency key): it is one UPDATE ... RETURNING statement, whose WHERE
// clause checks the stored type and the range, so the result is the one Go
// would give; anything else (a missing property, a float, an overflow)
// falls back to the transaction. [Backend.Capabilities] reports
// ServerSideOps false.
package sqlite
