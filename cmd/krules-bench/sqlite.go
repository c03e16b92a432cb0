package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	_ "modernc.org/sqlite" // the driver storage/sqlite uses, for the raw side

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/sqlite"
)

// SQLite rows: krules Subjects (NoCache, so every call reaches the store) on
// storage/sqlite against raw database/sql statements with the same driver
// (modernc.org/sqlite), the same pragmas (WAL, synchronous=NORMAL, IMMEDIATE
// transactions), statements prepared once, and the same table layout (one row per subject, JSON text
// columns), each side on its own file in one temporary directory.
func init() {
	register(Group{Name: "sqlite", Setup: sqliteSetup})
}

// sqliteRawDSN is the data source name of the raw side: the pragmas
// storage/sqlite sets on its connections with the default Config.
func sqliteRawDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

func sqliteSetup() ([]Row, func(), error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "krules-bench-sqlite")
	if err != nil {
		return nil, nil, err
	}
	backend, err := sqlite.Open(ctx, filepath.Join(dir, "krules.db"), sqlite.Config{})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	db, err := sql.Open("sqlite", sqliteRawDSN(filepath.Join(dir, "raw.db")))
	if err != nil {
		backend.Close()
		os.RemoveAll(dir)
		return nil, nil, err
	}
	done := func() { backend.Close(); db.Close(); os.RemoveAll(dir) }
	fail := func(err error) ([]Row, func(), error) { done(); return nil, nil, err }
	if _, err := db.ExecContext(ctx, `CREATE TABLE subjects (
	subject_name   TEXT PRIMARY KEY,
	properties     TEXT NOT NULL DEFAULT '{}',
	ext_properties TEXT NOT NULL DEFAULT '{}',
	updated_at     TEXT DEFAULT CURRENT_TIMESTAMP
) WITHOUT ROWID`); err != nil {
		return fail(err)
	}
	app := krules.New(krules.WithStorage(backend))

	// The raw statements.
	const (
		rawGet    = `SELECT properties -> ?2 FROM subjects WHERE subject_name = ?1`
		rawUpsert = `INSERT INTO subjects (subject_name, properties) VALUES (?1, json_object(?4, json(?3)))
	ON CONFLICT (subject_name) DO UPDATE SET properties = json_set(properties, ?2, json(?3)), updated_at = CURRENT_TIMESTAMP`
		rawInc = `INSERT INTO subjects (subject_name, properties) VALUES (?1, json_object(?3, ?4))
	ON CONFLICT (subject_name) DO UPDATE SET properties = json_set(properties, ?2, coalesce(properties ->> ?2, 0) + ?4),
	updated_at = CURRENT_TIMESTAMP RETURNING properties ->> ?2`
		rawLoad = `SELECT properties, ext_properties FROM subjects WHERE subject_name = ?1`
	)
	const path = `$."n"`

	// Prepared once, as storage/sqlite prepares its statements (a fair
	// hand-written program does not re-parse SQL on every call either).
	prep := func(q string) (*sql.Stmt, error) { return db.PrepareContext(ctx, q) }
	getSt, err := prep(rawGet)
	if err != nil {
		return fail(err)
	}
	upsertSt, err := prep(rawUpsert)
	if err != nil {
		return fail(err)
	}
	incSt, err := prep(rawInc)
	if err != nil {
		return fail(err)
	}
	loadSt, err := prep(rawLoad)
	if err != nil {
		return fail(err)
	}

	// 100 properties with small mixed values, the same on both sides.
	props := make([]string, 100)
	values := make([]any, 100)
	for i := range props {
		props[i] = "prop-" + strconv.Itoa(i)
		switch i % 3 {
		case 0:
			values[i] = int64(i)
		case 1:
			values[i] = "value-" + strconv.Itoa(i)
		default:
			values[i] = map[string]any{"n": int64(i), "ok": true}
		}
	}
	loaded := app.Subject("load-100")
	for i, p := range props {
		if _, _, err := loaded.Set(ctx, p, values[i], krules.Muted()); err != nil {
			return fail(err)
		}
	}
	if err := loaded.Store(ctx); err != nil {
		return fail(err)
	}
	m := make(map[string]any, len(props))
	for i, p := range props {
		m[p] = values[i]
	}
	obj, _ := json.Marshal(m)
	if _, err := db.ExecContext(ctx, `INSERT INTO subjects (subject_name, properties) VALUES ('load-100', ?1)`, string(obj)); err != nil {
		return fail(err)
	}

	// rawSet is what a hand-written Set that reports the old value does:
	// one IMMEDIATE transaction reading the old value and upserting the new.
	rawSet := func(subject string, v int) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		var old sql.NullString
		if err := tx.StmtContext(ctx, getSt).QueryRowContext(ctx, subject, path).Scan(&old); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if old.Valid {
			var o any
			if err := json.Unmarshal([]byte(old.String), &o); err != nil {
				return err
			}
		}
		text, _ := json.Marshal(v)
		if _, err := tx.StmtContext(ctx, upsertSt).ExecContext(ctx, subject, path, string(text), "n"); err != nil {
			return err
		}
		return tx.Commit()
	}

	rows := []Row{
		{
			Name: "sqlite/set-nocache",
			Run: func(b *testing.B) {
				s := app.Subject("k-set", krules.NoCache())
				for i := 0; b.Loop(); i++ {
					if _, _, err := s.Set(ctx, "n", i); err != nil {
						b.Fatal(err)
					}
				}
			},
			Baseline: "database/sql IMMEDIATE tx: select old + json_set upsert",
			Base: func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					if err := rawSet("raw-set", i); err != nil {
						b.Fatal(err)
					}
				}
			},
		},
		{
			Name: "sqlite/inc-nocache",
			Run: func(b *testing.B) {
				s := app.Subject("k-inc", krules.NoCache())
				for b.Loop() {
					if _, _, err := s.Set(ctx, "n", krules.Inc(1)); err != nil {
						b.Fatal(err)
					}
				}
			},
			Baseline: "database/sql one-statement json_set increment RETURNING",
			Base: func(b *testing.B) {
				for b.Loop() {
					var n int64
					if err := incSt.QueryRowContext(ctx, "raw-inc", path, "n", 1).Scan(&n); err != nil {
						b.Fatal(err)
					}
				}
			},
		},
		{
			Name: "sqlite/load-100",
			Run: func(b *testing.B) {
				for b.Loop() {
					d, err := app.Subject("load-100").Dict(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if len(d) < len(props) {
						b.Fatalf("loaded %d keys", len(d))
					}
				}
			},
			Baseline: "database/sql select both columns + json.Unmarshal",
			Base: func(b *testing.B) {
				for b.Loop() {
					var p, e string
					if err := loadSt.QueryRowContext(ctx, "load-100").Scan(&p, &e); err != nil {
						b.Fatal(err)
					}
					var pm, em map[string]any
					if err := json.Unmarshal([]byte(p), &pm); err != nil {
						b.Fatal(err)
					}
					if err := json.Unmarshal([]byte(e), &em); err != nil {
						b.Fatal(err)
					}
					if len(pm) != len(props) {
						b.Fatalf("loaded %d keys", len(pm))
					}
				}
			},
		},
	}
	return rows, done, nil
}
