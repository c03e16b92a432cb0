package redis_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
)

// cmdRecorder is a go-redis hook that records the names of the commands
// sent.
type cmdRecorder struct {
	mu    sync.Mutex
	names []string
}

func (r *cmdRecorder) add(n string) {
	r.mu.Lock()
	r.names = append(r.names, n)
	r.mu.Unlock()
}

// take returns and forgets the recorded names.
func (r *cmdRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.names
	r.names = nil
	return n
}

func (r *cmdRecorder) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (r *cmdRecorder) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		r.add(cmd.Name())
		return next(ctx, cmd)
	}
}

func (r *cmdRecorder) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		for _, c := range cmds {
			r.add(c.Name())
		}
		return next(ctx, cmds)
	}
}

// The NoCache writes of a WriteOnly handle are one blind command: HSET for
// a plain value, HINCRBY for an integer Inc; a stored value HINCRBY
// refuses goes on to the normal script. A normal handle's Set runs the
// script that returns the old value.
func TestWriteOnlyNoCacheCommands(t *testing.T) {
	ctx := t.Context()
	b := open(t, redis.Config{})
	rec := &cmdRecorder{}
	b.Client().AddHook(rec)
	app := krules.New(krules.WithStorage(b))
	h := app.Subject("blind", krules.WriteOnly(), krules.NoCache(), krules.Muted())
	for _, c := range []struct {
		what  string
		value any
		want  any
		cmds  []string
	}{
		{"Set(5)", 5, int64(5), []string{"hset"}},
		{"Inc(2)", krules.Inc(2), int64(7), []string{"hincrby"}},
		{"Set(2.5)", 2.5, 2.5, []string{"hset"}},
		{"Inc(1) of 2.5", krules.Inc(1), 3.5, []string{"hincrby", "evalsha"}},
		{"Inc(0.5)", krules.Inc(0.5), 4.0, []string{"evalsha"}},
	} {
		rec.take()
		nv, old, err := h.Set(ctx, "n", c.value)
		if err != nil || !storage.Equal(nv, c.want) || old != nil {
			t.Fatalf("%s = (%v, %v, %v), want (%v, nil, nil)", c.what, nv, old, err, c.want)
		}
		if got := rec.take(); !slices.Equal(got, c.cmds) {
			t.Errorf("%s sent %q, want %q", c.what, got, c.cmds)
		}
	}
	if _, _, err := app.Subject("blind", krules.NoCache(), krules.Muted()).Set(ctx, "n", 1); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); !slices.Equal(got, []string{"evalsha"}) {
		t.Errorf("a normal NoCache Set sent %q, want the set script", got)
	}
}
