// Package postgres is the PostgreSQL storage backend of krules, on
// github.com/jackc/pgx/v5 (pgxpool).
//
// # Getting started
//
// Open a backend from a URL (it owns its pool) and give it to the App:
//
//	backend, err := postgres.Open(ctx, "postgres://app@db:5432/app?pool_max_conns=20", postgres.Config{})
//	if err != nil {
//		return err
//	}
//	defer backend.Close()
//	app := krules.New(krules.WithStorage(backend))
//
//	user := app.Subject("user-123")
//	user.Set(ctx, "salary", 75000, krules.NoCache())             // one statement, atomic
//	user.Set(ctx, "salary", krules.Update(func(old float64) float64 { // row-locked transaction
//		return old * 1.05
//	}), krules.NoCache())
//	user.Set(ctx, "logins", krules.Inc(1), krules.NoCache())      // computed by PostgreSQL
//
// To share a pool with the rest of the program, build it with [PoolConfig]
// (which makes a cancelled ctx cancel the statement in the server too) and
// use [New]; Close then leaves the pool open:
//
//	pcfg, err := postgres.PoolConfig(url)
//	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
//	backend, err := postgres.New(ctx, pool, postgres.Config{Table: "tenant_a_subjects"})
//
// # Layout: compatible with Python KRules
//
// Subjects live in one table, by default "subjects" on the connection's
// search_path, created on first use exactly as Python KRules creates it:
//
//	CREATE TABLE subjects (
//		subject_name   TEXT PRIMARY KEY,
//		properties     JSONB NOT NULL DEFAULT '{}',
//		ext_properties JSONB NOT NULL DEFAULT '{}',
//		updated_at     TIMESTAMP DEFAULT NOW()
//	);
//	CREATE INDEX idx_subjects_properties ON subjects USING GIN (properties);
//	CREATE INDEX idx_subjects_ext_properties ON subjects USING GIN (ext_properties);
//
// Every property is a top-level key of the properties (default) or
// ext_properties (extended) object, its value the property's JSON. Rows
// written by Python KRules load here and rows written here load there.
// [Config] selects another table or schema (tenants, tests). Creation is
// idempotent and safe when many processes start at once: they serialise on
// an advisory lock, and when the table and indexes exist no DDL runs at all
// (set Config.NoCreate when the role may not create tables).
//
// Values come back in the value model of package storage: a JSONB number is
// an int64 when it is integral and fits (so 75000.0 written by Python reads
// as int64(75000)), a float64 otherwise. JSONB does not keep key order, so
// Load and ExtProps return properties sorted by name.
//
// # Atomicity and concurrency
//
// Every call is atomic per subject, also across processes:
//
//   - Set of a plain value and the built-in operations (Inc, Append, Max,
//     Min) are ONE statement that locks the subject's row, computes the new
//     value in SQL (numeric arithmetic: integers stay exact beyond 2^53),
//     writes it and returns the old value. No lock is held across Go code.
//     A stored value of the wrong type (Inc of a string) is refused with
//     [storage.ErrInvalidValue], an integer Inc whose sum leaves the int64
//     range with [storage.ErrOverflow]; nothing is written. A stored list
//     with more than 512 brackets is appended to in an update transaction
//     (it may nest deeper than the value model allows).
//   - [Backend.SetBlind] (the NoCache Ops of a krules WriteOnly handle)
//     applies an operation in one plain UPDATE ... RETURNING of the new
//     value, with the same checks and without reading the old value first;
//     a missing row or a refused value goes on to the statement above.
//   - Set with an update function runs it inside a READ COMMITTED
//     transaction that creates the row if missing and then locks it, so
//     concurrent updaters never lose an update, not even on the subject's
//     first write (Python KRules could). It costs two round trips; the
//     function runs while the row is locked, so keep it short.
//   - Delete is one statement returning the removed value; Store applies a
//     whole batch (deletes, then puts) in one statement; Load is one query.
//   - Serialization failures, deadlocks and a concurrent first insert or
//     flush of the same subject are retried (Config.MaxRetries, jittered
//     backoff); when retries run out the error wraps [storage.ErrConflict]
//     and nothing was written.
//
// # Errors
//
// Errors name the subject and property and wrap the driver's error, so
// errors.As(err, &pgErr) with a *pgconn.PgError works, as do errors.Is with
// the sentinels of package storage and with context.DeadlineExceeded when a
// call's ctx ended. NaN, ±Inf and other values outside the model are refused
// before any SQL runs. Subject and property names are always sent as query
// parameters and List escapes LIKE metacharacters, so quotes, backslashes,
// %, _ and SQL fragments in names are plain data.
//
// A server restart makes the calls in flight (and those made while it is
// down) fail with a connection error within their ctx deadline; the pool
// replaces broken connections by itself (pgxpool pings a connection idle
// for more than a second before handing it out), so later calls succeed
// once the server is back. A call that failed this way may or may not have
// committed; one that succeeded is durable.
package postgres
