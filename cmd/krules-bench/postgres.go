package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/postgres"
)

// PostgreSQL rows: krules Subjects (NoCache, so every call reaches the
// store) on storage/postgres against raw pgx statements doing the same work
// on the same table layout (one row per subject, JSONB properties), through
// the same pool. They run when KRULES_POSTGRES_URL is set, on a table of
// their own that is dropped afterwards. The -c16 rows run 16 goroutines on
// ONE subject and property (row-lock contention). store-100 is 100 cached
// Sets on a fresh WriteOnly handle (no load before the writes) plus Store.
// The inc-blind rows are Inc on a WriteOnly, NoCache, Muted handle: one
// UPDATE that returns only the new value, as the raw increment does.
func init() {
	register(Group{
		Name:    "postgres",
		Enabled: func() bool { return os.Getenv("KRULES_POSTGRES_URL") != "" },
		Setup:   postgresSetup,
	})
}

func postgresSetup() ([]Row, func(), error) {
	ctx := context.Background()
	pcfg, err := postgres.PoolConfig(os.Getenv("KRULES_POSTGRES_URL"))
	if err != nil {
		return nil, nil, err
	}
	if pcfg.MaxConns < 32 {
		pcfg.MaxConns = 32 // room for the 16-goroutine rows on both sides
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, nil, err
	}
	table := fmt.Sprintf("krules_bench_%d", os.Getpid())
	backend, err := postgres.New(ctx, pool, postgres.Config{Table: table})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	t := backend.Table()
	done := func() {
		backend.Close()
		if _, err := pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+t); err != nil {
			fmt.Fprintf(os.Stderr, "krules-bench: drop %s: %v\n", t, err)
		}
		pool.Close()
	}
	app := krules.New(krules.WithStorage(backend))

	// The raw statements (Python KRules' own SQL where it has one).
	rawUpsert := `INSERT INTO ` + t + ` AS s (subject_name, properties) VALUES ($1, jsonb_build_object($2::text, $3::jsonb))
		ON CONFLICT (subject_name) DO UPDATE SET properties = s.properties || EXCLUDED.properties, updated_at = NOW()`
	rawGet := `SELECT properties -> $2::text FROM ` + t + ` WHERE subject_name = $1`
	rawLock := `SELECT properties -> $2::text FROM ` + t + ` WHERE subject_name = $1 FOR UPDATE`
	rawWrite := `UPDATE ` + t + ` SET properties = properties || jsonb_build_object($2::text, $3::jsonb), updated_at = NOW() WHERE subject_name = $1`
	rawInc := `UPDATE ` + t + ` SET properties = properties || jsonb_build_object($2::text, to_jsonb(coalesce((properties ->> $2::text)::numeric, 0) + $3::numeric)),
		updated_at = NOW() WHERE subject_name = $1`
	rawStore := `INSERT INTO ` + t + ` AS s (subject_name, properties) VALUES ($1, $2::jsonb)
		ON CONFLICT (subject_name) DO UPDATE SET properties = s.properties || EXCLUDED.properties, updated_at = NOW()`
	rawLoad := `SELECT properties, ext_properties FROM ` + t + ` WHERE subject_name = $1`

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
	fixtures := func() error {
		for _, s := range []string{"k-get", "k-func", "k-inc", "k-inc1", "k-inc-blind", "k-inc1-blind", "raw-get", "raw-func", "raw-inc", "raw-inc1"} {
			if _, _, err := app.Subject(s, krules.NoCache()).Set(ctx, "n", 0, krules.Muted()); err != nil {
				return err
			}
		}
		for _, s := range []string{"k-load-100", "raw-load-100"} {
			sub := app.Subject(s)
			for i, p := range props {
				if _, _, err := sub.Set(ctx, p, values[i], krules.Muted()); err != nil {
					return err
				}
			}
			if err := sub.Store(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	if err := fixtures(); err != nil {
		done()
		return nil, nil, err
	}

	incFunc := krules.Update(func(n int64) int64 { return n + 1 })
	rawFunc := func(subject string) error {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		var raw []byte
		if err := tx.QueryRow(ctx, rawLock, subject, "n").Scan(&raw); err != nil {
			return err
		}
		var n int64
		if err := json.Unmarshal(raw, &n); err != nil {
			return err
		}
		nv, _ := json.Marshal(n + 1)
		if _, err := tx.Exec(ctx, rawWrite, subject, "n", nv); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}

	setSub := app.Subject("k-set", krules.NoCache())
	getSub := app.Subject("k-get", krules.NoCache())
	funcSub := app.Subject("k-func", krules.NoCache())
	inc16Sub := app.Subject("k-inc", krules.NoCache())
	incSub := app.Subject("k-inc1", krules.NoCache())
	blindOpts := []krules.SubjectOption{krules.WriteOnly(), krules.NoCache(), krules.Muted()}
	incBlindSub := app.Subject("k-inc1-blind", blindOpts...)
	inc16BlindSub := app.Subject("k-inc-blind", blindOpts...)
	rows := []Row{
		{
			Name: "postgres/set",
			Op: func(i int) error {
				_, _, err := setSub.Set(ctx, "n", i)
				return err
			},
			Baseline: "pgx upsert (jsonb merge)",
			BaseOp: func(i int) error {
				v, _ := json.Marshal(i)
				_, err := pool.Exec(ctx, rawUpsert, "raw-set", "n", v)
				return err
			},
		},
		{
			Name: "postgres/get-nocache",
			Op: func(int) error {
				_, err := getSub.Get(ctx, "n")
				return err
			},
			Baseline: "pgx select properties->key + json.Unmarshal",
			BaseOp: func(int) error {
				var raw []byte
				if err := pool.QueryRow(ctx, rawGet, "raw-get", "n").Scan(&raw); err != nil {
					return err
				}
				var v any
				return json.Unmarshal(raw, &v)
			},
		},
		{
			Name: "postgres/update-func-c1",
			Op: func(int) error {
				_, _, err := funcSub.Set(ctx, "n", incFunc)
				return err
			},
			Baseline: "pgx tx: SELECT FOR UPDATE + UPDATE",
			BaseOp:   func(int) error { return rawFunc("raw-func") },
		},
		{
			Name:     "postgres/update-func-c16",
			Op16:     func() error { _, _, err := funcSub.Set(ctx, "n", incFunc); return err },
			Baseline: "pgx tx: SELECT FOR UPDATE + UPDATE, 16 goroutines",
			BaseOp16: func() error { return rawFunc("raw-func") },
		},
		{
			Name: "postgres/inc",
			Op: func(int) error {
				_, _, err := incSub.Set(ctx, "n", krules.Inc(1))
				return err
			},
			Baseline: "pgx single-statement jsonb increment",
			BaseOp: func(int) error {
				_, err := pool.Exec(ctx, rawInc, "raw-inc1", "n", 1)
				return err
			},
		},
		{
			Name:     "postgres/inc-c16",
			Op16:     func() error { _, _, err := inc16Sub.Set(ctx, "n", krules.Inc(1)); return err },
			Baseline: "pgx single-statement jsonb increment, 16 goroutines",
			BaseOp16: func() error { _, err := pool.Exec(ctx, rawInc, "raw-inc", "n", 1); return err },
		},
		{
			// The blind Inc a user can choose: a WriteOnly, NoCache, Muted
			// handle reads no old value (one UPDATE ... RETURNING new).
			Name: "postgres/inc-blind",
			Op: func(int) error {
				_, _, err := incBlindSub.Set(ctx, "n", krules.Inc(1))
				return err
			},
			Baseline: "pgx single-statement jsonb increment",
			BaseOp: func(int) error {
				_, err := pool.Exec(ctx, rawInc, "raw-inc1", "n", 1)
				return err
			},
		},
		{
			Name:     "postgres/inc-blind-c16",
			Op16:     func() error { _, _, err := inc16BlindSub.Set(ctx, "n", krules.Inc(1)); return err },
			Baseline: "pgx single-statement jsonb increment, 16 goroutines",
			BaseOp16: func() error { _, err := pool.Exec(ctx, rawInc, "raw-inc", "n", 1); return err },
		},
		{
			Name: "postgres/store-100",
			Op: func(i int) error {
				s := app.Subject("k-store-100-"+strconv.Itoa(i%64), krules.WriteOnly())
				for j, p := range props {
					if _, _, err := s.Set(ctx, p, values[j], krules.Muted()); err != nil {
						return err
					}
				}
				return s.Store(ctx)
			},
			Baseline: "pgx upsert of a 100-key object (json.Marshal of a map)",
			BaseOp: func(i int) error {
				m := make(map[string]any, len(props))
				for j, p := range props {
					m[p] = values[j]
				}
				obj, err := json.Marshal(m)
				if err != nil {
					return err
				}
				_, err = pool.Exec(ctx, rawStore, "raw-store-100-"+strconv.Itoa(i%64), obj)
				return err
			},
		},
		{
			Name: "postgres/load-100",
			Op: func(int) error {
				d, err := app.Subject("k-load-100").Dict(ctx)
				if err == nil && len(d) < len(props) {
					err = fmt.Errorf("loaded %d keys", len(d))
				}
				return err
			},
			Baseline: "pgx select both columns + json.Unmarshal",
			BaseOp: func(int) error {
				var p, e []byte
				if err := pool.QueryRow(ctx, rawLoad, "raw-load-100").Scan(&p, &e); err != nil {
					return err
				}
				var pm, em map[string]any
				if err := json.Unmarshal(p, &pm); err != nil {
					return err
				}
				if err := json.Unmarshal(e, &em); err != nil {
					return err
				}
				if len(pm) != len(props) {
					return fmt.Errorf("loaded %d keys", len(pm))
				}
				return nil
			},
		},
	}
	return rows, done, nil
}
