package postgres_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
)

// sqlRecorder is a pgx query tracer that records the first word of every
// statement sent.
type sqlRecorder struct {
	mu    sync.Mutex
	words []string
}

func (r *sqlRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	w, _, _ := strings.Cut(strings.TrimSpace(d.SQL), " ")
	r.mu.Lock()
	r.words = append(r.words, w)
	r.mu.Unlock()
	return ctx
}

func (r *sqlRecorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// take returns and forgets the recorded words.
func (r *sqlRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.words
	r.words = nil
	return w
}

// The NoCache writes of a WriteOnly handle are one blind statement: an
// upsert (Store) for a plain value, one UPDATE for an Op; a missing row or
// a stored value the UPDATE's checks refuse goes on to the normal
// statement (WITH ...), which inserts the row or reports the error.
func TestWriteOnlyNoCacheStatements(t *testing.T) {
	ctx := t.Context()
	pcfg, err := postgres.PoolConfig(testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rec := &sqlRecorder{}
	pcfg.ConnConfig.Tracer = rec
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	table := testenv.Unique("blind")
	dropTable(t, pool, "", table)
	b, err := postgres.New(ctx, pool, postgres.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	app := krules.New(krules.WithStorage(b))
	h := app.Subject("blind", krules.WriteOnly(), krules.NoCache(), krules.Muted())
	for _, c := range []struct {
		what  string
		prop  string
		value any
		want  any
		stmts []string
	}{
		{"Inc(3) of a missing subject", "n", krules.Inc(3), int64(3), []string{"UPDATE", "WITH"}},
		{"Inc(2)", "n", krules.Inc(2), int64(5), []string{"UPDATE"}},
		{"Max(9)", "n", krules.Max(9), int64(9), []string{"UPDATE"}},
		{"Set of a plain value", "s", "x", "x", []string{"INSERT"}},
		{"Inc(1) of a string", "s", krules.Inc(1), nil, []string{"UPDATE", "WITH"}},
		{"Append to a missing property", "l", krules.Append(1), []any{int64(1)}, []string{"UPDATE"}},
	} {
		rec.take()
		nv, old, err := h.Set(ctx, c.prop, c.value)
		if c.want == nil {
			if !errors.Is(err, storage.ErrInvalidValue) {
				t.Fatalf("%s: err = %v, want ErrInvalidValue", c.what, err)
			}
		} else if err != nil || !storage.Equal(nv, c.want) || old != nil {
			t.Fatalf("%s = (%v, %v, %v), want (%v, nil, nil)", c.what, nv, old, err, c.want)
		}
		if got := rec.take(); !slices.Equal(got, c.stmts) {
			t.Errorf("%s sent %q, want %q", c.what, got, c.stmts)
		}
	}
}
