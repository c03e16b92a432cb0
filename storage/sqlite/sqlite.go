package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/krules-go/krules/storage"
)

// Defaults of [Config].
const (
	// DefaultTable is the table of Python KRules' PostgreSQL layout.
	DefaultTable = "subjects"
	// DefaultBusyTimeout is how long a connection waits for another
	// process's write lock before SQLite reports SQLITE_BUSY.
	DefaultBusyTimeout = 5 * time.Second
	// DefaultMaxRetries bounds the retries of one write after SQLITE_BUSY.
	DefaultMaxRetries = 10
	// DefaultListPageSize is the number of names List fetches per query.
	DefaultListPageSize = 1000
)

// Config configures a [Backend]. The zero value is usable: table
// "subjects", WAL journal, synchronous=NORMAL, a 5s busy timeout.
type Config struct {
	// Table is the table holding the subjects, one row per subject.
	// Default "subjects". It is always quoted, so any characters are allowed
	// (but not NUL).
	Table string

	// BusyTimeout is how long a statement waits for the write lock held by
	// another process (SQLite's busy_timeout). Default 5s.
	BusyTimeout time.Duration

	// Synchronous is SQLite's synchronous pragma: "NORMAL" (default) or
	// "FULL". In WAL mode NORMAL never corrupts the database and loses no
	// commit on a process crash; a power loss or OS crash may undo the last
	// commits. FULL fsyncs every commit.
	Synchronous string

	// MaxRetries bounds how many times one write is retried after SQLite
	// still reports SQLITE_BUSY once BusyTimeout has passed (or a busy
	// snapshot), with jittered backoff. Once exhausted the error wraps
	// [storage.ErrConflict] and nothing was written. Default 10; a negative
	// value means no retry.
	MaxRetries int

	// ListPageSize is the number of subject names List fetches per query
	// (keyset pagination). Default 1000.
	ListPageSize int

	// IdempotencyWindow is how long an idempotency key is remembered (see
	// Backend.IdempotencyWindow). 0 means storage.DefaultIdempotencyWindow
	// (24 hours).
	IdempotencyWindow time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if strings.IndexByte(c.Table, 0) >= 0 {
		return c, fmt.Errorf("sqlite: table name %q contains a NUL byte", c.Table)
	}
	if c.BusyTimeout <= 0 {
		c.BusyTimeout = DefaultBusyTimeout
	}
	switch strings.ToUpper(c.Synchronous) {
	case "":
		c.Synchronous = "NORMAL"
	case "NORMAL", "FULL":
		c.Synchronous = strings.ToUpper(c.Synchronous)
	default:
		return c, fmt.Errorf("sqlite: Synchronous %q: want NORMAL or FULL", c.Synchronous)
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	} else if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.ListPageSize <= 0 {
		c.ListPageSize = DefaultListPageSize
	}
	return c, nil
}

// Backend is a [storage.Backend] and [storage.Lister] keeping subjects in
// one SQLite database file, one row per subject with the properties in JSON
// columns (the layout of the PostgreSQL backend). It is safe for concurrent
// use by any number of goroutines, and by several processes opening the same
// file on one machine: every write is one IMMEDIATE transaction.
type Backend struct {
	db     *sql.DB
	cfg    Config
	path   string
	q      [2]colQueries
	tq     tableQueries
	cs     [2]colStmts // q prepared
	ts     tableStmts  // tq prepared
	stmts  []*sql.Stmt // every prepared statement, closed by Close
	wmu    sync.Mutex  // serialises this process's writers (see Open)
	closed atomic.Bool

	idemReady  atomic.Bool // the idempotency key table exists
	idemWrites atomic.Uint64
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// Open opens (creating it when missing) the SQLite database file at path and
// the subjects table in it. The file is switched to WAL mode, which lets
// readers run beside the one writer and is kept by the file. path must be a
// file on a local file system (WAL needs shared memory between the
// processes): ":memory:" and network file systems are refused or unsafe.
//
// The writers of one Backend queue on a mutex in Go, so only writers of
// other processes wait on SQLite's busy handler. Close the Backend to
// release the file.
func Open(ctx context.Context, path string, cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("sqlite: path %q: want the path of a database file", path)
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite: path %q: '?' and '#' are not allowed in the file name", path)
	}
	dsn := dataSourceName(path, cfg)
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	b := &Backend{db: db, cfg: cfg, path: path}
	table := quoteIdent(cfg.Table)
	b.q[0] = buildColQueries(table, "properties")
	b.q[1] = buildColQueries(table, "ext_properties")
	b.tq = buildTableQueries(table)
	if err := b.ensureSchema(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := b.prepare(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return b, nil
}

// dataSourceName is the modernc.org/sqlite DSN: every connection gets the
// pragmas, and transactions begin IMMEDIATE (the write lock first, so a
// read-modify-write never fails on a stale snapshot).
func dataSourceName(path string, cfg Config) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", cfg.BusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous("+cfg.Synchronous+")")
	q.Add("_pragma", "foreign_keys(OFF)")
	q.Set("_txlock", "immediate")
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func (b *Backend) ensureSchema(ctx context.Context) error {
	err := b.withRetry(ctx, func() error {
		_, err := b.db.ExecContext(ctx, b.tq.create)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: create table %s in %s: %w", b.cfg.Table, b.path, err)
	}
	return nil
}

// Close makes every later call fail with [storage.ErrClosed], closes the
// prepared statements and the database (waiting for the connections in
// use). It is safe to call more than once.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	serr := b.closeStmts()
	if err := b.db.Close(); err != nil {
		return err
	}
	return serr
}

// DB returns the database handle the Backend uses (for inspection, backups
// or raw queries; do not change its connections' pragmas).
func (b *Backend) DB() *sql.DB { return b.db }

// Path returns the database file's path.
func (b *Backend) Path() string { return b.path }

// Capabilities implements [storage.Backend]: persistent, shared between the
// processes of one machine. Built-in operations are computed in Go inside
// the write transaction (SQLite runs in-process, so there is no round trip
// to save), hence ServerSideOps is false.
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{Persistent: true, Shared: true}
}

// busy reports SQLITE_BUSY or SQLITE_LOCKED (any extended code): another
// process held the lock longer than the busy timeout, or a snapshot went
// stale.
func busy(err error) bool {
	var se *msqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return true
	}
	return false
}

// errConflict wraps storage.ErrConflict around the last busy error.
type conflictError struct {
	attempts int
	last     error
}

func (e *conflictError) Error() string {
	return fmt.Sprintf("%v after %d attempts (last: %v)", storage.ErrConflict, e.attempts, e.last)
}

func (e *conflictError) Unwrap() []error { return []error{storage.ErrConflict, e.last} }

// withRetry runs fn, retrying it while it fails with a busy error, up to
// cfg.MaxRetries times with jittered backoff.
func (b *Backend) withRetry(ctx context.Context, fn func() error) error {
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || !busy(err) {
			return err
		}
		if attempt >= b.cfg.MaxRetries {
			return &conflictError{attempts: attempt + 1, last: err}
		}
		d := time.Millisecond << min(attempt, 6)
		d = d/2 + time.Duration(rand.Int64N(int64(d)))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// write runs fn in one IMMEDIATE transaction, holding the process's write
// mutex, retried on busy errors. fn's errors abort the transaction.
func (b *Backend) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	return b.withRetry(ctx, func() error {
		tx, err := b.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	})
}
