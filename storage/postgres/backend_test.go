package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

func pkey(name string) storage.Key { return storage.Key{Kind: storage.Default, Name: name} }
func ekey(name string) storage.Key { return storage.Key{Kind: storage.Extended, Name: name} }

// same reports equality with identical Go types (int64 is not float64).
func same(a, b any) bool {
	return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b)
}

func propMap(ps []storage.Property) map[string]any {
	m := make(map[string]any, len(ps))
	for _, p := range ps {
		m[p.Name] = p.Value
	}
	return m
}

func mustOp(t *testing.T, kind storage.OpKind, arg any) storage.Mutation {
	t.Helper()
	op, err := storage.NewOp(kind, arg)
	if err != nil {
		t.Fatalf("NewOp(%v, %#v): %v", kind, arg, err)
	}
	return storage.Mutation{Op: op}
}

// TestPythonLayoutLoads writes rows the way Python KRules does, with plain
// SQL, and checks that they load with the types of the value model.
func TestPythonLayoutLoads(t *testing.T) {
	b, pool := newBackend(t)
	ctx := t.Context()
	// Python's json.dumps output (with its ", " and ": " separators).
	_, err := pool.Exec(ctx, `INSERT INTO `+b.Table()+` (subject_name, properties, ext_properties) VALUES ($1, $2, $3)`,
		"user-123",
		`{"name": "John Doe", "age": 30, "salary": 75000.0, "ratio": 0.25, "active": true, "nothing": null, `+
			`"projects": ["a", "b", 3], "metadata": {"level": "Staff", "certifications": ["AWS"]}, "big": 9007199254740993}`,
		`{"source": "import", "version": 2}`)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := b.Load(ctx, "user-123")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"name": "John Doe", "age": int64(30), "salary": int64(75000), "ratio": 0.25, "active": true, "nothing": nil,
		"projects": []any{"a", "b", int64(3)},
		"metadata": map[string]any{"level": "Staff", "certifications": []any{"AWS"}},
		"big":      int64(9007199254740993),
	}
	got := propMap(snap.Props)
	if len(got) != len(want) {
		t.Errorf("Load: %d properties %v, want %d", len(got), slices.Sorted(mapsKeys(got)), len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || !same(g, w) {
			t.Errorf("Load: %q = %#v (present %v), want %#v", k, g, ok, w)
		}
	}
	if ext := propMap(snap.Ext); !same(ext["source"], "import") || !same(ext["version"], int64(2)) || len(ext) != 2 {
		t.Errorf("Load: ext = %#v", ext)
	}
	if v, err := b.Get(ctx, "user-123", pkey("salary")); err != nil || !same(v, int64(75000)) {
		t.Errorf("Get salary = %#v, %v; want int64(75000)", v, err)
	}
	if v, err := b.Get(ctx, "user-123", pkey("nothing")); err != nil || v != nil {
		t.Errorf("Get of a JSON null = %#v, %v; want nil, no error", v, err)
	}
	// Python increments the salary the way krules does.
	nv, old, err := b.Set(ctx, "user-123", pkey("salary"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
		return float64(old.(int64)) * 1.05, nil
	}})
	if err != nil || !same(nv, int64(78750)) || !same(old, int64(75000)) {
		t.Errorf("Set salary*1.05 = %#v, %#v, %v; want int64(78750), int64(75000)", nv, old, err)
	}
}

func mapsKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestWritesProducePythonLayout checks with plain SQL that krules writes
// one row per subject with each property a top-level JSONB key.
func TestWritesProducePythonLayout(t *testing.T) {
	b, pool := newBackend(t)
	ctx := t.Context()
	mustSet := func(subject string, k storage.Key, v any) {
		t.Helper()
		n, err := storage.Normalize(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Set(ctx, subject, k, storage.Mutation{Value: n}); err != nil {
			t.Fatal(err)
		}
	}
	mustSet("u1", pkey("name"), "John")
	mustSet("u1", pkey("age"), 30)
	mustSet("u1", ekey("source"), map[string]any{"sys": "crm"})
	if _, _, err := b.Set(ctx, "u1", pkey("count"), mustOp(t, storage.OpInc, 2)); err != nil {
		t.Fatal(err)
	}
	err := b.Store(ctx, "u1", storage.Batch{
		Deletes: []storage.Key{pkey("age")},
		Puts:    []storage.Write{{Key: pkey("tags"), Value: []any{"x", int64(1)}}, {Key: ekey("v"), Value: 1.5}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var rows int
	var same1, same2 bool
	err = pool.QueryRow(ctx, `SELECT count(*), bool_and(properties = $2::jsonb), bool_and(ext_properties = $3::jsonb) FROM `+b.Table()+` WHERE subject_name = $1`,
		"u1", `{"name": "John", "count": 2, "tags": ["x", 1]}`, `{"source": {"sys": "crm"}, "v": 1.5}`).Scan(&rows, &same1, &same2)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 1 || !same1 || !same2 {
		var p, e string
		_ = pool.QueryRow(ctx, `SELECT properties::text, ext_properties::text FROM `+b.Table()+` WHERE subject_name = 'u1'`).Scan(&p, &e)
		t.Errorf("rows=%d, properties=%s ext_properties=%s; want the Python layout", rows, p, e)
	}
	// The Python query for a property.
	var name string
	if err := pool.QueryRow(ctx, `SELECT properties->>'name' FROM `+b.Table()+` WHERE subject_name = 'u1'`).Scan(&name); err != nil || name != "John" {
		t.Errorf("properties->>'name' = %q, %v", name, err)
	}
}

// TestDefaultTableMatchesPython creates the default table in a schema of its
// own and checks columns and index names against the Python DDL.
func TestDefaultTableMatchesPython(t *testing.T) {
	pool := testPool(t)
	ctx := t.Context()
	schema := testenv.Unique("krules_schema")
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	b, err := postgres.New(ctx, pool, postgres.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rows, err := pool.Query(ctx, `SELECT column_name, data_type, is_nullable, coalesce(column_default, '')
		FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'subjects' ORDER BY ordinal_position`, schema)
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for rows.Next() {
		var n, ty, null, def string
		if err := rows.Scan(&n, &ty, &null, &def); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, fmt.Sprintf("%s %s null=%s default=%s", n, ty, null, def))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"subject_name text null=NO default=",
		"properties jsonb null=NO default='{}'::jsonb",
		"ext_properties jsonb null=NO default='{}'::jsonb",
		"updated_at timestamp without time zone null=YES default=now()",
	}
	if !slices.Equal(cols, want) {
		t.Errorf("columns:\n%s\nwant:\n%s", strings.Join(cols, "\n"), strings.Join(want, "\n"))
	}
	var idx []string
	rows, err = pool.Query(ctx, `SELECT indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'subjects' ORDER BY indexname`, schema)
	if err != nil {
		t.Fatal(err)
	}
	idx, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	wantIdx := []string{"idx_subjects_ext_properties", "idx_subjects_properties", "subjects_pkey"}
	if len(idx) != 3 {
		t.Fatalf("indexes %q, want %q", idx, wantIdx)
	}
	for i, w := range wantIdx {
		if !strings.HasPrefix(idx[i], w+" ") || (i < 2 && !strings.Contains(idx[i], "USING gin")) {
			t.Errorf("index %q, want %s (GIN for the JSONB columns)", idx[i], w)
		}
	}
	// A second New on the existing table runs no DDL and succeeds.
	b2, err := postgres.New(ctx, pool, postgres.Config{Schema: schema, NoCreate: true})
	if err != nil {
		t.Fatalf("New on the existing table with NoCreate: %v", err)
	}
	b2.Close()
}

// TestNoCreateMissingTable: NoCreate refuses a table that does not exist.
func TestNoCreateMissingTable(t *testing.T) {
	pool := testPool(t)
	table := testenv.Unique("krules_missing")
	_, err := postgres.New(t.Context(), pool, postgres.Config{Table: table, NoCreate: true})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("New(NoCreate) on a missing table = %v, want a 'does not exist' error", err)
	}
	var exists bool
	if err := pool.QueryRow(t.Context(), `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{table}.Sanitize()).Scan(&exists); err != nil || exists {
		t.Errorf("table created despite NoCreate (exists=%v, err=%v)", exists, err)
	}
}

// TestConcurrentSchemaCreation starts many backends at once on a table that
// does not exist yet, from separate pools (as separate processes would).
func TestConcurrentSchemaCreation(t *testing.T) {
	table := testenv.Unique("krules_race")
	const n = 8
	pools := make([]*pgxpool.Pool, n)
	for i := range pools {
		pools[i] = testPool(t)
	}
	dropTable(t, pools[0], "", table)
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			b, err := postgres.New(t.Context(), pools[i], postgres.Config{Table: table})
			if err == nil {
				_, _, err = b.Set(t.Context(), "s", pkey("p"), storage.Mutation{Value: int64(i)})
				b.Close()
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("backend %d: %v", i, err)
		}
	}
}

// TestNamesArePlainData uses names full of SQL and LIKE metacharacters.
func TestNamesArePlainData(t *testing.T) {
	b, pool := newBackend(t)
	ctx := t.Context()
	names := []string{
		`it's`, `say "hi"`, `back\slash`, `100%`, `a_b`, `%`, `_`, `\`, `\%`,
		`'; DROP TABLE subjects; --`, `$1`, `{"a":1}`, `ключ`, `名前`, `emoji 🎉`, `a.b`, `a->b`, `?|`, ` `, `x'||'y`,
	}
	for i, name := range names {
		subject := "s:" + name
		if _, _, err := b.Set(ctx, subject, pkey(name), storage.Mutation{Value: name}); err != nil {
			t.Fatalf("Set(%q, %q): %v", subject, name, err)
		}
		// Store builds its JSON object from the names: escaping matters.
		if err := b.Store(ctx, subject, storage.Batch{Puts: []storage.Write{{Key: ekey(name), Value: int64(i)}}}); err != nil {
			t.Fatalf("Store ext(%q, %q): %v", subject, name, err)
		}
	}
	for i, name := range names {
		subject := "s:" + name
		if v, err := b.Get(ctx, subject, pkey(name)); err != nil || v != name {
			t.Errorf("Get(%q, %q) = %#v, %v", subject, name, v, err)
		}
		snap, err := b.Load(ctx, subject)
		if err != nil || len(snap.Props) != 1 || snap.Props[0].Name != name || len(snap.Ext) != 1 || !same(snap.Ext[0].Value, int64(i)) {
			t.Errorf("Load(%q) = %#v, %v", subject, snap, err)
		}
		// The row is stored under the literal name.
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+b.Table()+` WHERE subject_name = $1 AND properties ? $2`, subject, name).Scan(&n); err != nil || n != 1 {
			t.Errorf("row of %q holding key %q: count=%d, %v", subject, name, n, err)
		}
	}
	// Prefixes are literal.
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"s:%", []string{"s:%"}},
		{"s:_", []string{"s:_"}},
		{`s:\`, []string{`s:\`, `s:\%`}},
		{`s:\%`, []string{`s:\%`}},
		{"s:100", []string{"s:100%"}},
		{"s:a", []string{"s:a_b", "s:a.b", "s:a->b"}},
		{"s:'", []string{"s:'; DROP TABLE subjects; --"}},
		{"nothing", nil},
	} {
		var got []string
		for n, err := range b.List(ctx, c.prefix) {
			if err != nil {
				t.Fatalf("List(%q): %v", c.prefix, err)
			}
			got = append(got, n)
		}
		slices.Sort(got)
		want := slices.Clone(c.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", c.prefix, got, want)
		}
	}
	for _, name := range names {
		old, err := b.Delete(ctx, "s:"+name, pkey(name))
		if err != nil || old != name {
			t.Errorf("Delete(%q) = %#v, %v", name, old, err)
		}
	}
}

// TestListPages walks several pages and stops early on request.
func TestListPages(t *testing.T) {
	pool := testPool(t)
	table := testenv.Unique("krules_list")
	dropTable(t, pool, "", table)
	b, err := postgres.New(t.Context(), pool, postgres.Config{Table: table, ListPageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := t.Context()
	var want []string
	for i := range 10 {
		name := fmt.Sprintf("p-%02d", i)
		want = append(want, name)
		if err := b.Store(ctx, name, storage.Batch{Puts: []storage.Write{{Key: pkey("i"), Value: int64(i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Store(ctx, "other", storage.Batch{Puts: []storage.Write{{Key: pkey("i"), Value: int64(0)}}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for n, err := range b.List(ctx, "p-") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("List(p-) = %q, want %q", got, want)
	}
	var all int
	for _, err := range b.List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		all++
	}
	if all != 11 {
		t.Errorf("List(\"\") yielded %d names, want 11", all)
	}
	seen := 0
	for range b.List(ctx, "p-") {
		seen++
		if seen == 4 {
			break
		}
	}
	if seen != 4 {
		t.Errorf("early break: saw %d", seen)
	}
}

// TestInvalidValuesNeverReachSQL: NaN and ±Inf (and other values outside the
// model) are refused with ErrInvalidValue and nothing is written.
func TestInvalidValuesNeverReachSQL(t *testing.T) {
	b, _ := newBackend(t)
	ctx := t.Context()
	for _, v := range []any{math.NaN(), math.Inf(1), math.Inf(-1), []any{1.0, math.NaN()}, map[string]any{"x": math.Inf(1)}} {
		if _, err := storage.Normalize(v); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("storage.Normalize(%v) = %v, want ErrInvalidValue", v, err)
		}
		// Even a backend caller that skipped Normalize cannot store it.
		if _, _, err := b.Set(ctx, "s", pkey("x"), storage.Mutation{Value: v}); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Set(%v) = %v, want ErrInvalidValue", v, err)
		}
		err := b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{{Key: pkey("ok"), Value: int64(1)}, {Key: pkey("x"), Value: v}}})
		if !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Store(%v) = %v, want ErrInvalidValue", v, err)
		}
		if _, _, err := b.Set(ctx, "s", pkey("x"), storage.Mutation{Func: func(any, bool) (any, error) { return v, nil }}); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Set(func returning %v) = %v, want ErrInvalidValue", v, err)
		}
	}
	for _, arg := range []any{math.NaN(), math.Inf(1)} {
		if _, _, err := b.Set(ctx, "s", pkey("n"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: arg}}); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Set(Inc %v) = %v, want ErrInvalidValue", arg, err)
		}
	}
	if _, _, err := b.Set(ctx, "s", pkey("n"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: "1"}}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Errorf("Set(Inc \"1\") = %v, want ErrInvalidValue", err)
	}
	if _, _, err := b.Set(ctx, "s", pkey("n"), storage.Mutation{Value: "a\x00b"}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Errorf("Set(string with NUL) = %v, want ErrInvalidValue", err)
	}
	snap, err := b.Load(ctx, "s")
	if err != nil || len(snap.Props)+len(snap.Ext) != 0 {
		t.Errorf("after refused writes Load = %#v, %v; want empty", snap, err)
	}
	if _, _, err := b.Set(ctx, "bad\x00name", pkey("x"), storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("Set with a NUL in the subject = %v, want ErrInvalidName", err)
	}
	if _, _, err := b.Set(ctx, "s", pkey(""), storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("Set with an empty property name = %v, want ErrInvalidName", err)
	}
}

// TestOpsInSQL checks the server-side operations: results typed as in the
// value model, exact integers beyond 2^53, and a wrong stored type refused
// with nothing written.
func TestOpsInSQL(t *testing.T) {
	b, _ := newBackend(t)
	ctx := t.Context()
	type step struct {
		m        storage.Mutation
		new, old any
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"inc-int", []step{{mustOp(t, storage.OpInc, 5), int64(5), nil}, {mustOp(t, storage.OpInc, -7), int64(-2), int64(5)}}},
		{"inc-float-to-int", []step{{mustOp(t, storage.OpInc, 1.5), 1.5, nil}, {mustOp(t, storage.OpInc, 1.5), int64(3), 1.5}}},
		{"inc-beyond-2^53", []step{{storage.Mutation{Value: int64(1) << 62}, int64(1) << 62, nil}, {mustOp(t, storage.OpInc, 1), int64(1)<<62 + 1, int64(1) << 62}}},
		{"inc-int-by-float-beyond-int64", []step{{storage.Mutation{Value: int64(math.MaxInt64)}, int64(math.MaxInt64), nil}, {mustOp(t, storage.OpInc, 1e19), float64(math.MaxInt64) + 1e19, int64(math.MaxInt64)}}},
		{"inc-null", []step{{storage.Mutation{Value: nil}, nil, nil}, {mustOp(t, storage.OpInc, 2), int64(2), nil}}},
		{"max", []step{{mustOp(t, storage.OpMax, 3), int64(3), nil}, {mustOp(t, storage.OpMax, 2.5), int64(3), int64(3)}, {mustOp(t, storage.OpMax, 7.5), 7.5, int64(3)}}},
		{"min", []step{{mustOp(t, storage.OpMin, 3), int64(3), nil}, {mustOp(t, storage.OpMin, 4), int64(3), int64(3)}, {mustOp(t, storage.OpMin, -1.25), -1.25, int64(3)}}},
		{"append", []step{{mustOp(t, storage.OpAppend, []any{"a"}), []any{"a"}, nil}, {mustOp(t, storage.OpAppend, []any{int64(1), map[string]any{"k": []any{}}}), []any{"a", int64(1), map[string]any{"k": []any{}}}, []any{"a"}}}},
	}
	for _, c := range cases {
		for i, s := range c.steps {
			nv, old, err := b.Set(ctx, c.name, pkey("v"), s.m)
			if err != nil || !same(nv, s.new) || !same(old, s.old) {
				t.Errorf("%s step %d: Set = (%#v, %#v, %v), want (%#v, %#v)", c.name, i, nv, old, err, s.new, s.old)
			}
			if s.m.Op != nil {
				if got, err := b.Get(ctx, c.name, pkey("v")); err != nil || !same(got, s.new) {
					t.Errorf("%s step %d: Get = %#v, %v; want %#v", c.name, i, got, err, s.new)
				}
			}
		}
	}
	// Wrong stored type: ErrInvalidValue, nothing written.
	for _, c := range []struct {
		stored any
		m      storage.Mutation
	}{
		{"text", mustOp(t, storage.OpInc, 1)},
		{[]any{int64(1)}, mustOp(t, storage.OpMax, 1)},
		{map[string]any{}, mustOp(t, storage.OpMin, 1)},
		{true, mustOp(t, storage.OpInc, 1)},
		{int64(4), mustOp(t, storage.OpAppend, []any{int64(1)})},
		{"x", mustOp(t, storage.OpAppend, []any{int64(1)})},
		{int64(math.MaxInt64), mustOp(t, storage.OpInc, 1)},
		{int64(math.MinInt64), mustOp(t, storage.OpInc, -1)},
	} {
		if _, _, err := b.Set(ctx, "wrong", ekey("v"), storage.Mutation{Value: c.stored}); err != nil {
			t.Fatal(err)
		}
		_, _, err := b.Set(ctx, "wrong", ekey("v"), c.m)
		if !errors.Is(err, storage.ErrInvalidValue) || !strings.Contains(err.Error(), `"wrong"`) || !strings.Contains(err.Error(), `"v"`) {
			t.Errorf("%v over %#v: err = %v, want ErrInvalidValue naming subject and property", c.m.Op.Kind, c.stored, err)
		}
		if got, err := b.Get(ctx, "wrong", ekey("v")); err != nil || !same(got, c.stored) {
			t.Errorf("%v over %#v: stored value became %#v, %v", c.m.Op.Kind, c.stored, got, err)
		}
	}
	// A failed op on a missing subject creates no row.
	if _, _, err := b.Set(ctx, "wrong", pkey("nope"), mustOp(t, storage.OpInc, 1)); err != nil {
		t.Fatal(err)
	}
}

// TestPlainSetOldValuesAreConsistent: concurrent plain Sets on a subject
// that does not exist yet form one history: every value but the last is
// returned as old by exactly one Set, and exactly one Set saw no old value.
func TestPlainSetOldValuesAreConsistent(t *testing.T) {
	b, _ := newBackend(t)
	ctx := t.Context()
	const workers, perWorker = 16, 40
	// The race (a first insert between another Set's snapshot and its
	// insert) is narrow: many fresh subjects give it many chances.
	for round := range 12 {
		subject := fmt.Sprintf("fresh-%d", round)
		olds := make(chan any, workers*perWorker)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := range perWorker {
					_, old, err := b.Set(ctx, subject, pkey("v"), storage.Mutation{Value: int64(w*1000 + i)})
					if err != nil {
						errs <- err
						return
					}
					olds <- old
				}
			}()
		}
		close(start)
		wg.Wait()
		close(olds)
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
		final, err := b.Get(ctx, subject, pkey("v"))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[any]int{}
		nils := 0
		for o := range olds {
			if o == nil {
				nils++
				continue
			}
			seen[o]++
		}
		if nils != 1 {
			t.Errorf("round %d: %d Sets saw no old value, want exactly 1 (the first insert)", round, nils)
		}
		for v, n := range seen {
			if n != 1 {
				t.Errorf("round %d: old value %v returned %d times", round, v, n)
			}
		}
		if len(seen) != workers*perWorker-1 {
			t.Errorf("round %d: %d distinct old values, want %d", round, len(seen), workers*perWorker-1)
		}
		if _, ok := seen[final]; ok {
			t.Errorf("round %d: the final value %v was also returned as an old value", round, final)
		}
	}
}

// TestConcurrentFirstFuncUpdate: update functions racing on the first write
// of a subject lose nothing (the Python original loses updates here).
func TestConcurrentFirstFuncUpdate(t *testing.T) {
	b, _ := newBackend(t)
	ctx := t.Context()
	const workers = 16
	inc := storage.Mutation{Func: func(old any, exists bool) (any, error) {
		if !exists {
			return int64(1), nil
		}
		return old.(int64) + 1, nil
	}}
	for round := range 5 {
		subject := fmt.Sprintf("first-%d", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		results := make(chan any, workers)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				nv, _, err := b.Set(ctx, subject, pkey("n"), inc)
				if err != nil {
					t.Error(err)
				}
				results <- nv
			}()
		}
		close(start)
		wg.Wait()
		close(results)
		var got []int64
		for r := range results {
			if n, ok := r.(int64); ok {
				got = append(got, n)
			}
		}
		slices.Sort(got)
		for i, n := range got {
			if n != int64(i+1) {
				t.Fatalf("round %d: new values %v, want 1..%d", round, got, workers)
			}
		}
		if v, err := b.Get(ctx, subject, pkey("n")); err != nil || !same(v, int64(workers)) {
			t.Errorf("round %d: final = %#v, %v; want %d", round, v, err, workers)
		}
	}
}

// TestFuncRacesFlush: update functions and flushes of the same subject
// interleave without error.
func TestFuncRacesFlush(t *testing.T) {
	b, _ := newBackend(t)
	ctx := t.Context()
	inc := storage.Mutation{Func: func(old any, exists bool) (any, error) {
		if !exists {
			return int64(1), nil
		}
		return old.(int64) + 1, nil
	}}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := b.Flush(ctx, "flushy"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 200 {
		if _, _, err := b.Set(ctx, "flushy", pkey("n"), inc); err != nil && !errors.Is(err, storage.ErrConflict) {
			t.Error(err)
			break
		}
		if _, _, err := b.Set(ctx, "flushy", pkey("m"), storage.Mutation{Value: int64(1)}); err != nil && !errors.Is(err, storage.ErrConflict) {
			t.Error(err)
			break
		}
	}
	close(stop)
	wg.Wait()
}

// TestErrorsWrapPgError: driver errors keep the *pgconn.PgError and name the
// subject and property.
func TestErrorsWrapPgError(t *testing.T) {
	b, pool := newBackend(t)
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `DROP TABLE `+b.Table()); err != nil {
		t.Fatal(err)
	}
	_, err := b.Get(ctx, "subj-x", pkey("prop-y"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42P01" {
		t.Fatalf("Get on a dropped table = %v, want a *pgconn.PgError 42P01 (undefined_table)", err)
	}
	if !strings.Contains(err.Error(), `"subj-x"`) || !strings.Contains(err.Error(), `"prop-y"`) {
		t.Errorf("error %q does not name the subject and property", err)
	}
	for name, err := range map[string]error{
		"Set":      second(b.Set(ctx, "subj-x", pkey("prop-y"), storage.Mutation{Value: int64(1)})),
		"SetFunc":  second(b.Set(ctx, "subj-x", pkey("prop-y"), storage.Mutation{Func: func(any, bool) (any, error) { return int64(1), nil }})),
		"Delete":   secondOf(b.Delete(ctx, "subj-x", pkey("prop-y"))),
		"Store":    b.Store(ctx, "subj-x", storage.Batch{Puts: []storage.Write{{Key: pkey("prop-y"), Value: int64(1)}}}),
		"Load":     secondOf(b.Load(ctx, "subj-x")),
		"Flush":    b.Flush(ctx, "subj-x"),
		"ExtProps": secondOf(b.ExtProps(ctx, "subj-x")),
	} {
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), `"subj-x"`) {
			t.Errorf("%s: %v, want a wrapped *pgconn.PgError naming the subject", name, err)
		}
	}
	for _, err := range b.List(ctx, "") {
		if !errors.As(err, &pe) {
			t.Errorf("List: %v, want a wrapped *pgconn.PgError", err)
		}
	}
}

func second(_, _ any, err error) error     { return err }
func secondOf[T any](_ T, err error) error { return err }

// TestClose: calls after Close fail with ErrClosed; a caller-owned pool
// stays open, an owned one is closed.
func TestClose(t *testing.T) {
	b, pool := newBackend(t)
	ctx := t.Context()
	b.Close()
	b.Close()
	if _, err := b.Get(ctx, "s", pkey("x")); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if _, _, err := b.Set(ctx, "s", pkey("x"), storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Set after Close = %v, want ErrClosed", err)
	}
	for _, err := range b.List(ctx, "") {
		if !errors.Is(err, storage.ErrClosed) {
			t.Errorf("List after Close = %v, want ErrClosed", err)
		}
	}
	if err := pool.Ping(ctx); err != nil {
		t.Errorf("caller-owned pool closed by Close: %v", err)
	}

	table := testenv.Unique("krules_open")
	dropTable(t, pool, "", table)
	ob, err := postgres.Open(ctx, testenv.PostgresURL(t), postgres.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ob.Set(ctx, "s", pkey("x"), storage.Mutation{Value: int64(1)}); err != nil {
		t.Fatal(err)
	}
	owned := ob.Pool()
	ob.Close()
	if err := owned.Ping(ctx); err == nil {
		t.Error("pool of an Open backend still usable after Close")
	}
	if _, err := postgres.Open(ctx, "postgres://%zz", postgres.Config{}); err == nil {
		t.Error("Open with a malformed URL succeeded")
	}
}

// TestContextDeadlineWhileLocked: a call waiting on a row lock held by
// another transaction returns at its ctx deadline, its statement is
// cancelled in the server (the pool comes from postgres.PoolConfig; with
// pgx's default the statement would still commit once the lock is freed),
// and the pool serves the next calls normally.
func TestContextDeadlineWhileLocked(t *testing.T) {
	b, pool := newBackend(t)
	ctx := t.Context()
	if _, _, err := b.Set(ctx, "locked", pkey("n"), storage.Mutation{Value: int64(1)}); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM `+b.Table()+` WHERE subject_name = 'locked' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func(context.Context) error{
		"Set": func(c context.Context) error {
			return second(b.Set(c, "locked", pkey("n"), storage.Mutation{Value: int64(2)}))
		},
		"SetFunc": func(c context.Context) error {
			return second(b.Set(c, "locked", pkey("n"), storage.Mutation{Func: func(any, bool) (any, error) { return int64(3), nil }}))
		},
		"Inc": func(c context.Context) error {
			return second(b.Set(c, "locked", pkey("n"), mustOp(t, storage.OpInc, 1)))
		},
		"Delete": func(c context.Context) error { return secondOf(b.Delete(c, "locked", pkey("n"))) },
		"Store": func(c context.Context) error {
			return b.Store(c, "locked", storage.Batch{Puts: []storage.Write{{Key: pkey("n"), Value: int64(4)}}})
		},
	} {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := call(cctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a locked row = %v, want an error wrapping context.DeadlineExceeded", name, err)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing was written by the timed-out calls, and the backend works.
	if v, err := b.Get(ctx, "locked", pkey("n")); err != nil || !same(v, int64(1)) {
		t.Errorf("after timeouts Get = %#v, %v; want 1", v, err)
	}
	if nv, old, err := b.Set(ctx, "locked", pkey("n"), mustOp(t, storage.OpInc, 1)); err != nil || !same(nv, int64(2)) || !same(old, int64(1)) {
		t.Errorf("Inc after timeouts = %#v, %#v, %v", nv, old, err)
	}
}
