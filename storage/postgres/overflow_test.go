package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// An Inc beyond the float64 range is refused with nothing written (numeric
// would store it, and no reader could decode it).
func TestIncOverflowWritesNothing(t *testing.T) {
	ctx := context.Background()
	table := testenv.Unique("ovf")
	b, err := postgres.Open(ctx, testenv.PostgresURL(t), postgres.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Pool().Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
		b.Close()
	})
	k := storage.Key{Kind: storage.Default, Name: "n"}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: 1e308}); err != nil {
		t.Fatal(err)
	}
	op, _ := storage.NewOp(storage.OpInc, 1e308)
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Op: op}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("Inc past float64: err = %v, want ErrInvalidValue", err)
	}
	v, err := b.Get(ctx, "s", k)
	if err != nil || v != 1e308 {
		t.Fatalf("after the refused Inc: (%v, %v), want 1e308", v, err)
	}
	if _, err := b.Load(ctx, "s"); err != nil {
		t.Fatalf("Load after the refused Inc: %v", err)
	}
}

// The Inc statement decides in SQL (numeric, exact) what Op.Apply decides
// in Go: every edge of its test, from stored JSON texts that only other
// writers (Python KRules, SQL) produce as well as from Go values.
func TestIncEdgesInSQL(t *testing.T) {
	ctx := context.Background()
	b, pool := newBackend(t)
	k := storage.Key{Kind: storage.Default, Name: "n"}
	for _, c := range []struct {
		name   string
		stored string // JSON text of the stored value
		arg    any
		want   any   // the new value, when err is nil
		err    error // else the error it must wrap (nothing written)
	}{
		{"MinInt64+0 (|sum| is 2^63)", "-9223372036854775808", int64(0), int64(math.MinInt64), nil},
		{"MinInt64+1-1", "-9223372036854775807", int64(-1), int64(math.MinInt64), nil},
		{"MaxInt64+0", "9223372036854775807", int64(0), int64(math.MaxInt64), nil},
		{"-1+MinInt64", "-1", int64(math.MinInt64), nil, storage.ErrOverflow},
		{"MinInt64+MinInt64", "-9223372036854775808", int64(math.MinInt64), nil, storage.ErrOverflow},
		{"MaxInt64+MaxInt64", "9223372036854775807", int64(math.MaxInt64), nil, storage.ErrOverflow},
		{"MaxInt64-MinInt64 (sum in range)", "9223372036854775807", int64(math.MinInt64), int64(-1), nil},
		{"integral 5.0 (Python float) + MaxInt64", "5.0", int64(math.MaxInt64), nil, storage.ErrOverflow},
		{"integral 5.0 + 1", "5.0", int64(1), int64(6), nil},
		{"float 1e19 + 1 (stored beyond int64)", "1e19", int64(1), float64(1e19), nil},
		{"2.5 + MaxInt64 (float side)", "2.5", int64(math.MaxInt64), float64(math.MaxInt64) + 2.5, nil},
		{"MaxInt64 + 0.5", "9223372036854775807", 0.5, float64(math.MaxInt64), nil},
		{"-1e308 - 1e308", "-1e308", -1e308, nil, storage.ErrInvalidValue},
		{"stored beyond float64", "1e400", int64(1), nil, storage.ErrInvalidValue},
		{"JSON null", "null", int64(-7), int64(-7), nil},
		{"string", `"7"`, int64(1), nil, storage.ErrInvalidValue},
		{"false", "false", int64(1), nil, storage.ErrInvalidValue},
		{"empty object", "{}", int64(1), nil, storage.ErrInvalidValue},
		{"empty list", "[]", int64(1), nil, storage.ErrInvalidValue},
	} {
		subject := "edge-" + c.name
		if _, err := pool.Exec(ctx, `INSERT INTO `+b.Table()+` (subject_name, properties) VALUES ($1, jsonb_build_object('n', $2::jsonb))`, subject, c.stored); err != nil {
			t.Fatal(err)
		}
		before := storedText(t, pool, b.Table(), subject)
		op, err := storage.NewOp(storage.OpInc, c.arg)
		if err != nil {
			t.Fatal(err)
		}
		nv, old, err := b.Set(ctx, subject, k, storage.Mutation{Op: op})
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: Inc(%v) = (%v, %v, %v), want an error wrapping %v", c.name, c.arg, nv, old, err, c.err)
			}
			if after := storedText(t, pool, b.Table(), subject); after != before {
				t.Errorf("%s: the refused Inc wrote %s over %s", c.name, after, before)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Inc(%v): %v", c.name, c.arg, err)
			continue
		}
		if !storage.Equal(nv, c.want) || fmt.Sprintf("%T", nv) != fmt.Sprintf("%T", c.want) {
			t.Errorf("%s: Inc(%v) = %T(%v), want %T(%v)", c.name, c.arg, nv, nv, c.want, c.want)
		}
		if got, err := b.Get(ctx, subject, k); err != nil || !storage.Equal(got, nv) {
			t.Errorf("%s: Get after Inc = (%v, %v), want the returned %v", c.name, got, err, nv)
		}
		if wantOld := storage.UnmarshalProperty([]byte(c.stored)); !storage.Equal(old, wantOld) {
			t.Errorf("%s: old value %v, want %v", c.name, old, wantOld)
		}
	}
}

// Max and Min refuse a stored number beyond float64 and a stored
// non-number, as Op.Apply does, with nothing written.
func TestMaxMinEdgesInSQL(t *testing.T) {
	ctx := context.Background()
	b, pool := newBackend(t)
	k := storage.Key{Kind: storage.Default, Name: "n"}
	for _, kind := range []storage.OpKind{storage.OpMax, storage.OpMin} {
		for _, c := range []struct {
			stored string
			want   any // nil: refused with ErrInvalidValue
		}{
			{"1e400", nil}, {"-1e400", nil}, {`"1"`, nil}, {"true", nil}, {"[1]", nil},
			{"null", int64(3)}, {"5.0", int64(map[storage.OpKind]int64{storage.OpMax: 5, storage.OpMin: 3}[kind])},
		} {
			subject := fmt.Sprintf("edge-%v-%s", kind, c.stored)
			if _, err := pool.Exec(ctx, `INSERT INTO `+b.Table()+` (subject_name, properties) VALUES ($1, jsonb_build_object('n', $2::jsonb))`, subject, c.stored); err != nil {
				t.Fatal(err)
			}
			before := storedText(t, pool, b.Table(), subject)
			op, _ := storage.NewOp(kind, 3)
			nv, _, err := b.Set(ctx, subject, k, storage.Mutation{Op: op})
			if c.want == nil {
				if !errors.Is(err, storage.ErrInvalidValue) {
					t.Errorf("%v(3) on %s = (%v, %v), want ErrInvalidValue", kind, c.stored, nv, err)
				}
				if after := storedText(t, pool, b.Table(), subject); after != before {
					t.Errorf("%v(3) on %s: the refused op wrote %s", kind, c.stored, after)
				}
				continue
			}
			if err != nil || !storage.Equal(nv, c.want) {
				t.Errorf("%v(3) on %s = (%v, %v), want %v", kind, c.stored, nv, err, c.want)
			}
		}
	}
}

// storedText returns the JSON text of property n of subject ("" when
// missing).
func storedText(t *testing.T, pool *pgxpool.Pool, table, subject string) string {
	t.Helper()
	var s *string
	if err := pool.QueryRow(context.Background(), `SELECT (properties -> 'n')::text FROM `+table+` WHERE subject_name = $1`, subject).Scan(&s); err != nil {
		t.Fatal(err)
	}
	if s == nil {
		return ""
	}
	return *s
}

// The one-statement Set reads its row straight from the driver's buffers
// and passes its names as pgtype.TextValuer: the same results in each query
// exec mode of pgx, including QueryExecModeExec and the simple protocol
// (pgbouncer's transaction pooling), where pgx sends parameters as untyped
// text and a []byte as bytea: the JSON arguments of every write go as
// strings there (without, a plain Set failed with 22P02).
func TestSetStatementExecModes(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	} {
		t.Run(mode.String(), func(t *testing.T) {
			pcfg, err := postgres.PoolConfig(testenv.PostgresURL(t))
			if err != nil {
				t.Fatal(err)
			}
			pcfg.ConnConfig.DefaultQueryExecMode = mode
			pool, err := pgxpool.NewWithConfig(ctx, pcfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			table := testenv.Unique("modes")
			dropTable(t, pool, "", table)
			b, err := postgres.New(ctx, pool, postgres.Config{Table: table})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Close)
			k := storage.Key{Kind: storage.Default, Name: "it's"}
			subject := `s'; "x`
			if _, old, err := b.Set(ctx, subject, k, storage.Mutation{Value: int64(40)}); err != nil || old != nil {
				t.Fatalf("Set = (old %v, %v), want (nil, nil)", old, err)
			}
			inc, _ := storage.NewOp(storage.OpInc, 2)
			if nv, old, err := b.Set(ctx, subject, k, storage.Mutation{Op: inc}); err != nil || nv != int64(42) || old != int64(40) {
				t.Fatalf("Inc(2) = (%v, %v, %v), want (42, 40, nil)", nv, old, err)
			}
			app, _ := storage.NewOp(storage.OpAppend, []any{"x"})
			if _, _, err := b.Set(ctx, subject, k, storage.Mutation{Op: app}); !errors.Is(err, storage.ErrInvalidValue) {
				t.Fatalf("Append to a number: err = %v, want ErrInvalidValue", err)
			}
			if _, old, err := b.Set(ctx, subject, k, storage.Mutation{Value: map[string]any{"a": []any{"é", nil}}}); err != nil || old != int64(42) {
				t.Fatalf("Set of an object = (old %v, %v), want (42, nil)", old, err)
			}
			if got, err := b.Get(ctx, subject, k); err != nil || !storage.Equal(got, map[string]any{"a": []any{"é", nil}}) {
				t.Fatalf("Get = (%v, %v)", got, err)
			}
			// Every other write and read: Store, an update function, the
			// blind operation, an idempotency key, Delete, Load.
			if err := b.Store(ctx, subject, storage.Batch{Puts: []storage.Write{{Key: k, Value: int64(1)}, {Key: storage.Key{Kind: storage.Extended, Name: "e'"}, Value: "x"}}}); err != nil {
				t.Fatalf("Store: %v", err)
			}
			fn := storage.Mutation{Func: func(old any, _ bool) (any, error) { return old.(int64) + 1, nil }}
			if nv, old, err := b.Set(ctx, subject, k, fn); err != nil || nv != int64(2) || old != int64(1) {
				t.Fatalf("update function = (%v, %v, %v), want (2, 1, nil)", nv, old, err)
			}
			if nv, err := b.SetBlind(ctx, subject, k, inc); err != nil || nv != int64(4) {
				t.Fatalf("SetBlind Inc(2) = (%v, %v), want (4, nil)", nv, err)
			}
			kctx := storage.WithIdempotencyKey(ctx, "key-"+mode.String())
			if nv, old, err := b.Set(kctx, subject, k, storage.Mutation{Value: []any{"k"}}); err != nil || !storage.Equal(nv, []any{"k"}) || old != int64(4) {
				t.Fatalf("keyed Set = (%v, %v, %v), want ([k], 4, nil)", nv, old, err)
			}
			if old, err := b.Delete(ctx, subject, k); err != nil || !storage.Equal(old, []any{"k"}) {
				t.Fatalf("Delete = (%v, %v), want [k]", old, err)
			}
			if snap, err := b.Load(ctx, subject); err != nil || len(snap.Props) != 0 || len(snap.Ext) != 1 || snap.Ext[0].Value != "x" {
				t.Fatalf("Load = (%v, %v)", snap, err)
			}
		})
	}
}
