package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/storage"
)

// Defaults of [Config].
const (
	// DefaultTable is the table of Python KRules.
	DefaultTable = "subjects"
	// DefaultMaxRetries bounds the retries of one Set.
	DefaultMaxRetries = 10
	// DefaultListPageSize is the number of names List fetches per query.
	DefaultListPageSize = 1000
)

// maxIdentifier is PostgreSQL's NAMEDATALEN-1: longer names are truncated by
// the server, which could make two tables share index names.
const maxIdentifier = 63

// Config configures a [Backend]. The zero value is usable: it selects the
// table "subjects" found through the connection's search_path, the layout of
// Python KRules.
type Config struct {
	// Table is the table holding the subjects, one row per subject.
	// Default "subjects". At most 63 bytes; it is always quoted, so any
	// characters (upper case, spaces, quotes) are allowed.
	Table string

	// Schema qualifies Table. Default "": the table is looked up (and
	// created) through the connection's search_path. A schema that does not
	// exist is created together with the table unless NoCreate is set.
	Schema string

	// MaxRetries bounds how many times one Set is retried after a
	// serialization failure (40001), a deadlock (40P01) or a concurrent
	// insert or flush of the same subject, with jittered exponential backoff
	// between attempts. Once exhausted, Set returns an error wrapping
	// [storage.ErrConflict] and nothing was written. Default 10; a negative
	// value means no retry.
	MaxRetries int

	// ListPageSize is the number of subject names List fetches per query
	// (keyset pagination, so no connection is held between pages).
	// Default 1000.
	ListPageSize int

	// NoCreate disables the creation of the schema, table and indexes: New
	// then only checks that the table exists. Use it when the database
	// schema is managed elsewhere or the role lacks DDL privileges. When the
	// table and its indexes already exist, New never runs DDL anyway.
	NoCreate bool

	// ChangeFeed turns on the change feed (see feed.go and package feed):
	// every committed effective change of a default property, and every
	// Flush, also writes a change record into the table Table+"_feed" in
	// the same transaction; the subjects' versions live in
	// Table+"_feed_seq". New creates both tables unless NoCreate is set.
	// A Backend in feed mode opens, beyond its pool, one connection for
	// the NOTIFY that wakes the relay (on its first write) and, when it
	// runs the relay, one for LISTEN and the relay's lease.
	// Default false.
	ChangeFeed bool
	// IdempotencyWindow is how long an idempotency key is remembered (see
	// Backend.IdempotencyWindow). 0 means storage.DefaultIdempotencyWindow
	// (24 hours).
	IdempotencyWindow time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	} else if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.ListPageSize <= 0 {
		c.ListPageSize = DefaultListPageSize
	}
	for _, id := range []struct{ what, name string }{{"table", c.Table}, {"schema", c.Schema}} {
		if len(id.name) > maxIdentifier {
			return c, fmt.Errorf("postgres: %s name %q is longer than %d bytes", id.what, id.name, maxIdentifier)
		}
		if strings.IndexByte(id.name, 0) >= 0 {
			return c, fmt.Errorf("postgres: %s name %q contains a NUL byte", id.what, id.name)
		}
	}
	return c, nil
}

// Backend is a [storage.Backend] and [storage.Lister] keeping subjects in a
// PostgreSQL table with the layout of Python KRules: one row per subject,
// each property a top-level key of the JSONB column properties (default
// properties) or ext_properties (extended properties).
//
// A Backend is safe for concurrent use by any number of goroutines and
// processes sharing the same table: every write is atomic per subject.
// Create it with [New] (caller-owned pool) or [Open] (URL).
type Backend struct {
	pool     *pgxpool.Pool
	ownsPool bool
	cfg      Config
	table    string // quoted, possibly schema-qualified
	q        [2]queries
	tq       tableQueries
	closed   atomic.Bool
	feed     feedState // change feed (feed.go)
	notify   notifier  // wakes the relay after feed commits (notify.go)
	idem     idemState
	// textJSON: the pool's default exec mode sends parameters as text
	// without their types (QueryExecModeExec, the simple protocol), where a
	// []byte goes as bytea; JSON arguments are then sent as strings
	// (textArgs).
	textJSON bool
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// New returns a Backend on a pool the caller owns ([Backend.Close] leaves it
// open). Unless cfg.NoCreate is set it creates the table and its GIN indexes
// when they are missing; this is idempotent and safe when several processes
// start at once (they serialise on a PostgreSQL advisory lock). The ctx
// bounds that set-up only.
//
// Every pgx query exec mode of the pool (ConnConfig.DefaultQueryExecMode)
// works, including QueryExecModeExec and QueryExecModeSimpleProtocol, which
// a pool behind pgbouncer in transaction mode needs: there JSON arguments
// are sent as text. The mode is read once, here.
func New(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Backend, error) {
	if pool == nil {
		return nil, errors.New("postgres: nil pool")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Backend{pool: pool, cfg: cfg}
	switch pool.Config().ConnConfig.DefaultQueryExecMode {
	case pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol:
		b.textJSON = true
	}
	if cfg.Schema != "" {
		b.table = pgx.Identifier{cfg.Schema, cfg.Table}.Sanitize()
	} else {
		b.table = pgx.Identifier{cfg.Table}.Sanitize()
	}
	b.q[0] = buildQueries(b.table, "properties")
	b.q[1] = buildQueries(b.table, "ext_properties")
	b.tq = buildTableQueries(b.table)
	if err := b.initFeed(); err != nil { // change feed hook
		return nil, err
	}
	if err := b.ensureSchema(ctx); err != nil {
		return nil, err
	}
	if err := b.ensureFeedSchema(ctx); err != nil { // change feed hook
		return nil, err
	}
	return b, nil
}

// Open connects to the database at url with the pool settings of
// [PoolConfig] and returns a Backend owning the pool: [Backend.Close] closes
// it. See [New] for cfg.
func Open(ctx context.Context, url string, cfg Config) (*Backend, error) {
	pcfg, err := PoolConfig(url)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	b, err := New(ctx, pool, cfg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	b.ownsPool = true
	return b, nil
}

// DefaultConnectTimeout bounds establishing one connection when the URL
// sets no connect_timeout (see PoolConfig).
const DefaultConnectTimeout = 10 * time.Second

// PoolConfig parses url (a PostgreSQL URL or keyword/value DSN as accepted
// by [pgxpool.ParseConfig], e.g. "postgres://user@host:5432/db?pool_max_conns=20")
// into a pool configuration with the settings krules recommends: a
// connect timeout of DefaultConnectTimeout unless the URL sets
// connect_timeout, and, when a
// call's ctx ends while a statement runs, pgx sends PostgreSQL a cancel
// request at once (and closes the connection one second later if the server
// does not answer). With pgx's default, the connection is only closed, and
// PostgreSQL may still execute, and commit, a statement that was waiting on
// a row lock long after the caller got its timeout error. Use it for pools
// given to [New]:
//
//	pcfg, err := postgres.PoolConfig(url)
//	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
//	backend, err := postgres.New(ctx, pool, postgres.Config{})
func PoolConfig(url string) (*pgxpool.Config, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse url: %w", err)
	}
	pcfg.ConnConfig.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: time.Second}
	}
	if pcfg.ConnConfig.ConnectTimeout == 0 {
		// A server that accepts but never answers must not hang a caller
		// whose ctx has no deadline; connect_timeout in the URL overrides.
		pcfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	return pcfg, nil
}

// Close makes every later call fail with [storage.ErrClosed] and, when the
// Backend was created by [Open], closes its pool (waiting for the
// connections in use to be released). It is safe to call more than once.
func (b *Backend) Close() {
	if b.closed.Swap(true) {
		return
	}
	b.closeFeed() // change feed hook
	if b.cfg.ChangeFeed {
		b.stopNotify()
	}
	if b.ownsPool {
		b.pool.Close()
	}
}

// Pool returns the connection pool the Backend uses.
func (b *Backend) Pool() *pgxpool.Pool { return b.pool }

// Table returns the quoted (and, with Config.Schema, schema-qualified) name
// of the subjects table, ready to be used in SQL text.
func (b *Backend) Table() string { return b.table }

// Capabilities implements [storage.Backend]: persistent, shared between
// processes, built-in operations computed by PostgreSQL in one statement.
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{Persistent: true, Shared: true, ServerSideOps: true}
}

// indexNames returns the names of the two GIN indexes: those of Python KRules
// (idx_subjects_properties, idx_subjects_ext_properties) for the default
// table; a hash keeps long table names within PostgreSQL's 63 bytes.
func indexNames(table string) (props, ext string) {
	props, ext = "idx_"+table+"_properties", "idx_"+table+"_ext_properties"
	if len(ext) <= maxIdentifier {
		return props, ext
	}
	h := fnv.New32a()
	h.Write([]byte(table))
	base := fmt.Sprintf("idx_%s_%08x", truncateUTF8(table, maxIdentifier-len("idx__12345678_ext")), h.Sum32())
	return base + "_p", base + "_ext"
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 { // do not cut a rune in two
		n--
	}
	return s[:n]
}

// schemaLockKey is the advisory lock every krules process takes while it
// creates tables, so that concurrent CREATE ... IF NOT EXISTS never race on
// the catalogs.
var schemaLockKey = func() int64 {
	h := fnv.New64a()
	h.Write([]byte("github.com/krules-go/krules/storage/postgres: schema"))
	return int64(h.Sum64())
}()

// ensureSchema checks for the table and its indexes and creates what is
// missing.
func (b *Backend) ensureSchema(ctx context.Context) error {
	propIdx, extIdx := indexNames(b.cfg.Table)
	complete, err := b.schemaComplete(ctx, propIdx, extIdx)
	if err != nil {
		return err
	}
	if complete {
		return nil
	}
	if b.cfg.NoCreate {
		// The table alone is enough to work; the indexes only speed up
		// JSONB queries of other tools.
		var exists bool
		if err := b.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, b.table).Scan(&exists); err != nil {
			return fmt.Errorf("postgres: check table %s: %w", b.table, err)
		}
		if !exists {
			return fmt.Errorf("postgres: table %s does not exist and Config.NoCreate is set", b.table)
		}
		return nil
	}
	var stmts []string
	if b.cfg.Schema != "" {
		stmts = append(stmts, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{b.cfg.Schema}.Sanitize())
	}
	stmts = append(stmts,
		`CREATE TABLE IF NOT EXISTS `+b.table+` (
			subject_name TEXT PRIMARY KEY,
			properties JSONB NOT NULL DEFAULT '{}',
			ext_properties JSONB NOT NULL DEFAULT '{}',
			updated_at TIMESTAMP DEFAULT NOW()
		)`,
		`CREATE INDEX IF NOT EXISTS `+pgx.Identifier{propIdx}.Sanitize()+` ON `+b.table+` USING GIN (properties)`,
		`CREATE INDEX IF NOT EXISTS `+pgx.Identifier{extIdx}.Sanitize()+` ON `+b.table+` USING GIN (ext_properties)`,
	)
	// The advisory lock serialises krules processes; a process of another
	// program (Python KRules) creating the same table at the same moment can
	// still make CREATE ... IF NOT EXISTS fail on a catalog unique index, so
	// those errors are retried: the next attempt finds the objects.
	for attempt := 0; ; attempt++ {
		err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
				return err
			}
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			return nil
		}
		if attempt < 3 && hasCode(err, "23505", "42P07", "42710", "42P06") {
			continue
		}
		return fmt.Errorf("postgres: create table %s: %w", b.table, err)
	}
}

// schemaComplete reports whether the table and both indexes exist, without
// needing any privilege beyond catalog access.
func (b *Backend) schemaComplete(ctx context.Context, propIdx, extIdx string) (bool, error) {
	var n int
	err := b.pool.QueryRow(ctx, `
		SELECT count(i.relname)
		FROM pg_class c
		LEFT JOIN pg_class i ON i.relnamespace = c.relnamespace AND i.relkind = 'i' AND i.relname IN ($2, $3)
		WHERE c.oid = to_regclass($1)`, b.table, propIdx, extIdx).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("postgres: check table %s: %w", b.table, err)
	}
	return n == 2, nil
}

// hasCode reports whether err wraps a *pgconn.PgError with one of codes.
func hasCode(err error, codes ...string) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	for _, c := range codes {
		if pe.Code == c {
			return true
		}
	}
	return false
}

// retryable reports a serialization failure or a deadlock.
func retryable(err error) bool { return hasCode(err, "40001", "40P01") }

// backoff sleeps before retry number attempt (0-based): jittered, growing
// from ~1ms to at most ~64ms. It returns ctx's error if ctx ends first.
func backoff(ctx context.Context, attempt int) error {
	d := time.Millisecond << min(attempt, 6)
	d = d/2 + time.Duration(jitter(int64(d)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
