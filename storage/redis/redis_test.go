package redis_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/redis"
)

var (
	P = func(name string) storage.Key { return storage.Key{Kind: storage.Default, Name: name} }
	E = func(name string) storage.Key { return storage.Key{Kind: storage.Extended, Name: name} }
)

// dropPrefix removes every key "s:<prefix>*".
func dropPrefix(t testing.TB, c goredis.UniversalClient, prefix string) {
	t.Helper()
	ctx := context.Background()
	iter := c.Scan(ctx, 0, "s:"+globQuote(prefix)+"*", 1000).Iterator()
	for iter.Next(ctx) {
		c.Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("cleanup of prefix %q: %v", prefix, err)
	}
}

// globQuote escapes the characters special to Redis glob patterns.
func globQuote(s string) string {
	var sb strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// openPrefix opens a Backend on KRULES_REDIS_URL with the given prefix and
// removes its keys at the end of the test.
func openPrefix(t testing.TB, prefix string, cfg redis.Config) *redis.Backend {
	t.Helper()
	url := testenv.RedisURL(t)
	cfg.Prefix = prefix
	b, err := redis.Open(context.Background(), url, cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	t.Cleanup(func() {
		dropPrefix(t, b.Client(), prefix)
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// open opens a Backend with a unique prefix.
func open(t testing.TB, cfg redis.Config) *redis.Backend {
	t.Helper()
	return openPrefix(t, testenv.Unique("krules_redis_test")+":", cfg)
}

func mustSet(t testing.TB, b storage.Backend, subject string, k storage.Key, v any) {
	t.Helper()
	n, err := storage.Normalize(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(context.Background(), subject, k, storage.Mutation{Value: n}); err != nil {
		t.Fatalf("Set(%s, %v): %v", subject, k, err)
	}
}

// sameValue fails unless got equals want with identical Go types.
func sameValue(t testing.TB, what string, got, want any) {
	t.Helper()
	if !storage.Equal(got, want) || fmt.Sprintf("%T", got) != fmt.Sprintf("%T", want) {
		t.Errorf("%s = %#v (%T), want %#v (%T)", what, got, got, want, want)
	}
}

func TestBasicOperations(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	const s = "user-1"

	nv, old, err := b.Set(ctx, s, P("name"), storage.Mutation{Value: "John"})
	if err != nil || nv != "John" || old != nil {
		t.Fatalf("first Set = %v, %v, %v", nv, old, err)
	}
	nv, old, err = b.Set(ctx, s, P("name"), storage.Mutation{Value: "Jane"})
	if err != nil || nv != "Jane" || old != "John" {
		t.Fatalf("second Set = %v, %v, %v", nv, old, err)
	}
	mustSet(t, b, s, E("meta"), map[string]any{"source": "test"})

	v, err := b.Get(ctx, s, P("name"))
	if err != nil || v != "Jane" {
		t.Fatalf("Get = %v, %v", v, err)
	}
	if _, err := b.Get(ctx, s, P("meta")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get of an extended name as default: err = %v, want ErrNotFound", err)
	}
	ext, err := b.ExtProps(ctx, s)
	if err != nil || len(ext) != 1 || ext[0].Name != "meta" {
		t.Fatalf("ExtProps = %v, %v", ext, err)
	}
	sameValue(t, "ext meta", ext[0].Value, map[string]any{"source": "test"})

	err = b.Store(ctx, s, storage.Batch{
		Deletes: []storage.Key{P("name"), E("meta")},
		Puts:    []storage.Write{{Key: P("a"), Value: int64(1)}, {Key: E("meta"), Value: "again"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := b.Load(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Props) != 1 || snap.Props[0].Name != "a" || len(snap.Ext) != 1 || snap.Ext[0].Value != "again" {
		t.Fatalf("Load after Store = %+v", snap)
	}

	old, err = b.Delete(ctx, s, P("a"))
	if err != nil {
		t.Fatal(err)
	}
	sameValue(t, "deleted old", old, int64(1))
	if _, err := b.Delete(ctx, s, P("a")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second Delete: %v, want ErrNotFound", err)
	}
	if err := b.Flush(ctx, s); err != nil {
		t.Fatal(err)
	}
	if snap, err := b.Load(ctx, s); err != nil || len(snap.Props)+len(snap.Ext) != 0 {
		t.Fatalf("Load after Flush = %+v, %v", snap, err)
	}
	if n, err := b.Client().Exists(ctx, b.Key(s)).Result(); err != nil || n != 0 {
		t.Fatalf("hash still exists after Flush: %d, %v", n, err)
	}
}

// TestPythonLayoutRead: data written by Python KRules (json.dumps, default
// separators) loads with the value model's types.
func TestPythonLayoutRead(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	raw := b.Client()
	key := b.Key("user-123")
	if key[:2] != "s:" {
		t.Fatalf("Key = %q, want the s:{prefix}{subject} layout", key)
	}
	// What redis-py stores for {"name": "John Doe", "age": 30, ...}.
	python := map[string]string{
		"pname":    `"John Doe"`,
		"page":     `30`,
		"pscore":   `98.5`,
		"pwhole":   `2.0`,
		"pactive":  `true`,
		"pnothing": `null`,
		"ptags":    `["a", "b"]`,
		"paddr":    `{"city": "Rome", "zip": 100}`,
		"pbig":     `9007199254740993`,
		"etrace":   `"abc"`,
	}
	if err := raw.HSet(ctx, key, python).Err(); err != nil {
		t.Fatal(err)
	}
	snap, err := b.Load(ctx, "user-123")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	for _, p := range snap.Props {
		got[p.Name] = p.Value
	}
	want := map[string]any{
		"name": "John Doe", "age": int64(30), "score": 98.5, "whole": int64(2), "active": true,
		"nothing": nil, "tags": []any{"a", "b"}, "addr": map[string]any{"city": "Rome", "zip": int64(100)},
		"big": int64(9007199254740993),
	}
	if len(got) != len(want) {
		t.Fatalf("Load props = %v, want %v", got, want)
	}
	for k, w := range want {
		sameValue(t, "prop "+k, got[k], w)
	}
	if len(snap.Ext) != 1 || snap.Ext[0].Name != "trace" || snap.Ext[0].Value != "abc" {
		t.Errorf("Load ext = %+v", snap.Ext)
	}
	v, err := b.Get(ctx, "user-123", P("addr"))
	if err != nil {
		t.Fatal(err)
	}
	sameValue(t, "Get addr", v, want["addr"])

	// Built-in operations work on Python's formatting.
	if nv, _, err := b.Set(ctx, "user-123", P("tags"), storage.Mutation{Op: &storage.Op{Kind: storage.OpAppend, Arg: []any{"c"}}}); err != nil {
		t.Fatal(err)
	} else {
		sameValue(t, "Append to a Python list", nv, []any{"a", "b", "c"})
	}
	if v, err := b.Get(ctx, "user-123", P("tags")); err != nil {
		t.Fatal(err)
	} else {
		sameValue(t, "reloaded list", v, []any{"a", "b", "c"})
	}
}

// TestPythonLayoutWrite: what krules writes is exactly what Python writes.
func TestPythonLayoutWrite(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	mustSet(t, b, "user-123", P("name"), "John Doe")
	mustSet(t, b, "user-123", P("age"), 30)
	mustSet(t, b, "user-123", P("obj"), map[string]any{"a": 1})
	mustSet(t, b, "user-123", P("html"), "<a&b>")
	if err := b.Store(ctx, "user-123", storage.Batch{Puts: []storage.Write{
		{Key: E("source"), Value: "import"},
		{Key: P("list"), Value: []any{int64(1), "x", nil}},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Set(ctx, "user-123", P("n"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(5)}}); err != nil {
		t.Fatal(err)
	}
	got, err := b.Client().HGetAll(ctx, b.Key("user-123")).Result()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"pname":   `"John Doe"`,
		"page":    `30`,
		"pobj":    `{"a":1}`,
		"phtml":   `"<a&b>"`,
		"esource": `"import"`,
		"plist":   `[1,"x",null]`,
		"pn":      `5`,
	}
	if len(got) != len(want) {
		t.Errorf("HGETALL = %q, want %q", got, want)
	}
	for f, w := range want {
		if got[f] != w {
			t.Errorf("field %q = %q, want %q", f, got[f], w)
		}
	}
}

func op(kind storage.OpKind, arg any) *storage.Op {
	o, err := storage.NewOp(kind, arg)
	if err != nil {
		panic(err)
	}
	return o
}

// TestOps runs every built-in operation server-side and compares new and
// old values, with their Go types, against the in-memory reference backend.
func TestOps(t *testing.T) {
	b := open(t, redis.Config{})
	ref := memory.New()
	ctx := context.Background()
	const maxSafe = int64(1) << 53
	cases := []struct {
		name    string
		initial any // absent when missing is true
		missing bool
		op      *storage.Op
	}{
		{"inc missing", nil, true, op(storage.OpInc, 3)},
		{"inc null", nil, false, op(storage.OpInc, 3)},
		{"inc int", int64(40), false, op(storage.OpInc, 2)},
		{"inc negative", int64(5), false, op(storage.OpInc, -7)},
		{"inc float", 1.5, false, op(storage.OpInc, 0.25)},
		{"inc 0.1+0.2", 0.1, false, op(storage.OpInc, 0.2)},
		{"inc float to integral", 1.5, false, op(storage.OpInc, 1.5)},
		{"inc int by float", int64(1), false, op(storage.OpInc, 0.5)},
		{"inc to 2^53", maxSafe - 1, false, op(storage.OpInc, 1)},
		{"inc past 2^53", maxSafe, false, op(storage.OpInc, 1)},
		{"inc near int64 max", int64(math.MaxInt64 - 10), false, op(storage.OpInc, 10)},
		{"inc int by float beyond int64", int64(math.MaxInt64), false, op(storage.OpInc, 1e19)},
		{"inc int64 overflow", int64(math.MaxInt64), false, op(storage.OpInc, 1)},
		{"inc negative overflow", int64(math.MinInt64), false, op(storage.OpInc, -1)},
		{"inc big float", 1e300, false, op(storage.OpInc, 1e300)},
		{"inc tiny", 1e-300, false, op(storage.OpInc, 2e-300)},
		{"max missing", nil, true, op(storage.OpMax, 7)},
		{"max keeps", int64(9), false, op(storage.OpMax, 7)},
		{"max takes", int64(5), false, op(storage.OpMax, 7)},
		{"max tie", int64(7), false, op(storage.OpMax, 7)},
		{"max negative", int64(-5), false, op(storage.OpMax, -7)},
		{"max mixed", 7.5, false, op(storage.OpMax, 7)},
		{"max big ints", maxSafe + 1, false, op(storage.OpMax, maxSafe+2)},
		{"max big ints keep", maxSafe + 3, false, op(storage.OpMax, maxSafe+2)},
		{"min takes", int64(9), false, op(storage.OpMin, 7)},
		{"min keeps", int64(-9), false, op(storage.OpMin, 7)},
		{"min big negative", -maxSafe - 1, false, op(storage.OpMin, -maxSafe-2)},
		{"min float", 0.5, false, op(storage.OpMin, 0.25)},
		{"append missing", nil, true, op(storage.OpAppend, []any{1, "a"})},
		{"append null", nil, false, op(storage.OpAppend, []any{1})},
		{"append empty", []any{}, false, op(storage.OpAppend, []any{1, 2})},
		{"append", []any{"x", map[string]any{"k": 1}}, false, op(storage.OpAppend, []any{[]any{1}, nil})},
		{"append nothing", []any{"x"}, false, op(storage.OpAppend, []any{})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			subject := testenv.Unique("ops")
			if !c.missing {
				mustSet(t, b, subject, P("v"), c.initial)
				mustSet(t, ref, subject, P("v"), c.initial)
			}
			wantNew, wantOld, wantErr := ref.Set(ctx, subject, P("v"), storage.Mutation{Op: c.op})
			gotNew, gotOld, err := b.Set(ctx, subject, P("v"), storage.Mutation{Op: c.op})
			if (err != nil) != (wantErr != nil) || errors.Is(err, storage.ErrOverflow) != errors.Is(wantErr, storage.ErrOverflow) {
				t.Fatalf("err = %v, reference err = %v", err, wantErr)
			}
			if err != nil { // refused: nothing written
				stored, gerr := b.Get(ctx, subject, P("v"))
				if gerr != nil {
					t.Fatal(gerr)
				}
				sameValue(t, "stored after the refused op", stored, c.initial)
				return
			}
			sameValue(t, "new", gotNew, wantNew)
			sameValue(t, "old", gotOld, wantOld)
			stored, err := b.Get(ctx, subject, P("v"))
			if err != nil {
				t.Fatal(err)
			}
			sameValue(t, "stored", stored, wantNew)
		})
	}
}

func TestOpStoredText(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	raw := b.Client()
	cases := []struct {
		initial string
		op      *storage.Op
		want    string
	}{
		{`0.1`, op(storage.OpInc, 0.2), `0.30000000000000004`},
		{`1.5`, op(storage.OpInc, 1.5), `3`},
		{`9007199254740993`, op(storage.OpInc, 2), `9007199254740995`},
		{`[1, 2]`, op(storage.OpAppend, []any{3, "x"}), `[1, 2,3,"x"]`},
		{`[ ]`, op(storage.OpAppend, []any{3}), `[3]`},
		{`null`, op(storage.OpMax, 4), `4`},
		{`12345678901234567890`, op(storage.OpMin, 1), `1`},
	}
	for i, c := range cases {
		subject := fmt.Sprintf("text-%d", i)
		if err := raw.HSet(ctx, b.Key(subject), "pv", c.initial).Err(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Set(ctx, subject, P("v"), storage.Mutation{Op: c.op}); err != nil {
			t.Fatalf("%s %v on %s: %v", c.op.Kind, c.op.Arg, c.initial, err)
		}
		if got := raw.HGet(ctx, b.Key(subject), "pv").Val(); got != c.want {
			t.Errorf("%s %v on %s stored %q, want %q", c.op.Kind, c.op.Arg, c.initial, got, c.want)
		}
	}
}

func TestOpWrongTypeWritesNothing(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	for _, c := range []struct {
		initial any
		op      *storage.Op
	}{
		{"text", op(storage.OpInc, 1)},
		{[]any{1}, op(storage.OpMax, 1)},
		{map[string]any{}, op(storage.OpMin, 1)},
		{true, op(storage.OpInc, 1)},
		{int64(3), op(storage.OpAppend, []any{1})},
		{"[x", op(storage.OpAppend, []any{1})},
		{1e308, op(storage.OpInc, 1e308)},
	} {
		mustSet(t, b, "s", P("v"), c.initial)
		_, _, err := b.Set(ctx, "s", P("v"), storage.Mutation{Op: c.op})
		if !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("%s on %#v: err = %v, want ErrInvalidValue", c.op.Kind, c.initial, err)
			continue
		}
		v, err := b.Get(ctx, "s", P("v"))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := storage.Normalize(c.initial)
		sameValue(t, fmt.Sprintf("value after failed %s", c.op.Kind), v, want)
	}
}

func TestInvalidInputNeverReachesRedis(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	err := b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{
		{Key: P("ok"), Value: int64(1)},
		{Key: P("bad"), Value: make(chan int)},
	}})
	if !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("Store with a channel: err = %v, want ErrInvalidValue", err)
	}
	err = b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{{Key: storage.Key{Kind: 'x', Name: "n"}, Value: int64(1)}}})
	if !errors.Is(err, storage.ErrInvalidName) {
		t.Fatalf("Store with kind 'x': err = %v, want ErrInvalidName", err)
	}
	if _, _, err := b.Set(ctx, "s", P("bad"), storage.Mutation{Value: func() {}}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("Set of a func: err = %v, want ErrInvalidValue", err)
	}
	_, _, err = b.Set(ctx, "s", P("f"), storage.Mutation{Func: func(any, bool) (any, error) { return math.NaN(), nil }})
	if !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("update func returning NaN: err = %v, want ErrInvalidValue", err)
	}
	if n, err := b.Client().Exists(ctx, b.Key("s")).Result(); err != nil || n != 0 {
		t.Fatalf("something reached Redis: exists = %d, %v", n, err)
	}
}

func TestServerErrorsNameSubjectAndProperty(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	// A key of the wrong type makes every hash command fail on the server.
	if err := b.Client().Set(ctx, b.Key("broken"), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	checks := map[string]error{}
	_, checks["Get"] = b.Get(ctx, "broken", P("prop"))
	_, _, checks["Set"] = b.Set(ctx, "broken", P("prop"), storage.Mutation{Value: int64(1)})
	_, _, checks["Inc"] = b.Set(ctx, "broken", P("prop"), storage.Mutation{Op: op(storage.OpInc, 1)})
	_, _, checks["Func"] = b.Set(ctx, "broken", P("prop"), storage.Mutation{Func: func(any, bool) (any, error) { return 1, nil }})
	_, checks["Delete"] = b.Delete(ctx, "broken", P("prop"))
	for name, err := range checks {
		var rerr goredis.Error
		if !errors.As(err, &rerr) {
			t.Errorf("%s: err = %v, want a wrapped Redis error", name, err)
			continue
		}
		msg := err.Error()
		if !containsAll(msg, `"broken"`, `"prop"`, "WRONGTYPE") {
			t.Errorf("%s: error %q does not name subject, property and cause", name, msg)
		}
	}
	if _, err := b.Load(ctx, "broken"); err == nil || !containsAll(err.Error(), `"broken"`, "WRONGTYPE") {
		t.Errorf("Load: err = %v", err)
	}
	if err := b.Store(ctx, "broken", storage.Batch{Puts: []storage.Write{{Key: P("a"), Value: int64(1)}}}); err == nil || !containsAll(err.Error(), `"broken"`, "WRONGTYPE") {
		t.Errorf("Store: err = %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func TestClosed(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	owned, err := redis.Open(ctx, testenv.RedisURL(t), redis.Config{})
	if err != nil {
		t.Fatal(err)
	}
	shared := redis.New(b.Client(), redis.Config{})
	for _, c := range []*redis.Backend{owned, shared} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "s", P("x")); !errors.Is(err, storage.ErrClosed) {
			t.Errorf("Get after Close: %v, want ErrClosed", err)
		}
		if _, _, err := c.Set(ctx, "s", P("x"), storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrClosed) {
			t.Errorf("Set after Close: %v, want ErrClosed", err)
		}
		for _, err := range c.List(ctx, "") {
			if !errors.Is(err, storage.ErrClosed) {
				t.Errorf("List after Close: %v, want ErrClosed", err)
			}
		}
	}
	// Closing a New backend leaves the caller's client open.
	if err := b.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("client closed by New backend's Close: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel() // waits for dial retries to a closed port
	ctx := context.Background()
	if _, err := redis.Open(ctx, "http://localhost", redis.Config{}); err == nil {
		t.Error("Open of an http URL succeeded")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := redis.Open(ctx, "redis://127.0.0.1:1/0", redis.Config{}); err == nil {
		t.Error("Open of a closed port succeeded")
	}
}

func TestUpdateFuncConflictExhaustsRetries(t *testing.T) {
	for _, design := range []string{"cas", "watch"} {
		t.Run(design, func(t *testing.T) {
			b := open(t, redis.Config{MaxRetries: 3, MinBackoff: time.Microsecond, MaxBackoff: time.Microsecond})
			if design == "watch" {
				redis.UseWatch(b)
			}
			ctx := context.Background()
			raw := b.Client()
			mustSet(t, b, "s", P("n"), 0)
			calls := 0
			// Another writer changes the property while every attempt runs.
			_, _, err := b.Set(ctx, "s", P("n"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
				calls++
				if err := raw.HSet(ctx, b.Key("s"), "pn", fmt.Sprint(1000+calls)).Err(); err != nil {
					return nil, err
				}
				return old.(int64) + 1, nil
			}})
			if !errors.Is(err, storage.ErrConflict) {
				t.Fatalf("err = %v, want ErrConflict", err)
			}
			if calls != 4 {
				t.Errorf("function ran %d times, want 1 + MaxRetries = 4", calls)
			}
			v, err := b.Get(ctx, "s", P("n"))
			if err != nil {
				t.Fatal(err)
			}
			sameValue(t, "value after conflict", v, int64(1000+calls))
		})
	}
}

func TestUpdateFuncOtherPropertyNoRetry(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	raw := b.Client()
	calls := 0
	nv, old, err := b.Set(ctx, "s", P("n"), storage.Mutation{Func: func(old any, exists bool) (any, error) {
		calls++
		if exists || old != nil {
			return nil, fmt.Errorf("old = %v, %v; want missing", old, exists)
		}
		// A concurrent write of another property of the same subject.
		if err := raw.HSet(ctx, b.Key("s"), fmt.Sprintf("pother%d", calls), "1").Err(); err != nil {
			return nil, err
		}
		return int64(1), nil
	}})
	if err != nil || nv != int64(1) || old != nil {
		t.Fatalf("Set = %v, %v, %v", nv, old, err)
	}
	if calls != 1 {
		t.Errorf("function ran %d times, want 1: a write to another property forced a retry", calls)
	}
}

func TestUpdateFuncErrorAndMutation(t *testing.T) {
	b := open(t, redis.Config{})
	ctx := context.Background()
	mustSet(t, b, "s", P("m"), map[string]any{"a": 1})
	boom := errors.New("boom")
	_, _, err := b.Set(ctx, "s", P("m"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
		old.(map[string]any)["a"] = 99
		return nil, boom
	}})
	if !errors.Is(err, boom) || !containsAll(err.Error(), `"s"`, `"m"`) {
		t.Fatalf("err = %v, want boom naming subject and property", err)
	}
	nv, old, err := b.Set(ctx, "s", P("m"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
		m := old.(map[string]any)
		m["b"] = 2
		return m, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	sameValue(t, "old", old, map[string]any{"a": int64(1)})
	sameValue(t, "new", nv, map[string]any{"a": int64(1), "b": int64(2)})
}

// TestConcurrentUpdates runs both update-function designs and Inc from many
// goroutines on one property, with a writer of other properties.
func TestConcurrentUpdates(t *testing.T) {
	const goroutines, updates = 16, 100
	for _, design := range []string{"cas", "watch"} {
		t.Run(design, func(t *testing.T) {
			b := open(t, redis.Config{})
			if design == "watch" {
				redis.UseWatch(b)
			}
			ctx := context.Background()
			var wg sync.WaitGroup
			var conflicts atomic.Int64
			seen := make([][]int64, goroutines)
			errs := make(chan error, goroutines*2)
			for g := range goroutines {
				wg.Add(2)
				go func() {
					defer wg.Done()
					for range updates {
						nv, old, err := b.Set(ctx, "hot", P("n"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
							n, _ := old.(int64)
							return n + 1, nil
						}})
						if errors.Is(err, storage.ErrConflict) {
							conflicts.Add(1)
							continue
						}
						if err != nil {
							errs <- err
							return
						}
						o, _ := old.(int64)
						if nv.(int64) != o+1 {
							errs <- fmt.Errorf("new %v, old %v", nv, old)
							return
						}
						seen[g] = append(seen[g], nv.(int64))
					}
				}()
				go func() {
					defer wg.Done()
					for i := range updates {
						if _, _, err := b.Set(ctx, "hot", P("i"), storage.Mutation{Op: op(storage.OpInc, 1)}); err != nil {
							errs <- err
							return
						}
						if _, _, err := b.Set(ctx, "hot", P(fmt.Sprintf("w%d", g)), storage.Mutation{Value: int64(i)}); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			all := slices.Concat(seen...)
			slices.Sort(all)
			for i, v := range all {
				if v != int64(i+1) {
					t.Fatalf("update results not 1..%d: position %d holds %d", len(all), i, v)
				}
			}
			snap, err := b.Load(ctx, "hot")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]any{}
			for _, p := range snap.Props {
				got[p.Name] = p.Value
			}
			sameValue(t, "func counter", got["n"], int64(len(all)))
			sameValue(t, "inc counter", got["i"], int64(goroutines*updates))
			for g := range goroutines {
				sameValue(t, fmt.Sprintf("w%d", g), got[fmt.Sprintf("w%d", g)], int64(updates-1))
			}
			t.Logf("%s: %d updates, %d gave up with ErrConflict", design, len(all), conflicts.Load())
			if len(all)+int(conflicts.Load()) != goroutines*updates {
				t.Errorf("lost updates: %d + %d conflicts != %d", len(all), conflicts.Load(), goroutines*updates)
			}
		})
	}
}

func TestList(t *testing.T) {
	prefix := testenv.Unique("krules_list") + ":*?["
	b := openPrefix(t, prefix, redis.Config{})
	ctx := context.Background()
	names := []string{"user*1", "user?2", "user[3]", `user\4`, "order-1", "u"}
	for _, n := range names {
		mustSet(t, b, n, P("x"), 1)
	}
	// A key matching the unescaped pattern but outside the prefix, and a
	// non-hash key inside it, must not be listed.
	other := redis.New(b.Client(), redis.Config{Prefix: prefix[:len(prefix)-3] + "XYZ"})
	t.Cleanup(func() { other.Flush(ctx, "user-x") })
	mustSet(t, other, "user-x", P("x"), 1)
	if err := b.Client().Set(ctx, b.Key("user-string"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	collect := func(p string) []string {
		var out []string
		for n, err := range b.List(ctx, p) {
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, n)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	for p, want := range map[string][]string{
		"":      {"order-1", "u", "user*1", `user\4`, "user?2", "user[3]"},
		"user":  {"user*1", `user\4`, "user?2", "user[3]"},
		"user*": {"user*1"},
		"user?": {"user?2"},
		"user[": {"user[3]"},
		`user\`: {`user\4`},
		"nope":  nil,
	} {
		slices.Sort(want)
		if got := collect(p); !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", p, got, want)
		}
	}
	// Stopping early is fine.
	for range b.List(ctx, "") {
		break
	}
}

func TestContextCancelled(t *testing.T) {
	b := open(t, redis.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := b.Set(ctx, "s", P("x"), storage.Mutation{Value: int64(1)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Set: %v, want context.Canceled", err)
	}
	if err := b.Store(ctx, "s", storage.Batch{Puts: []storage.Write{{Key: P("x"), Value: int64(1)}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Store: %v, want context.Canceled", err)
	}
	if n, _ := b.Client().Exists(context.Background(), b.Key("s")).Result(); n != 0 {
		t.Error("a call with a cancelled context wrote")
	}
}

// TestUpdateFuncStaleHint: a goroutine that waited for another update of the
// same property starts from the value its predecessor wrote; when another
// writer changed it meanwhile, the function is called again with the stored
// value, also when the stale value made it fail or left the value unchanged.
func TestUpdateFuncStaleHint(t *testing.T) {
	for _, mode := range []string{"conflict", "error", "unchanged"} {
		t.Run(mode, func(t *testing.T) {
			b := open(t, redis.Config{})
			ctx := context.Background()
			raw := b.Client()
			entered, proceed := make(chan struct{}), make(chan struct{})
			first := make(chan error, 1)
			go func() {
				_, _, err := b.Set(ctx, "s", P("n"), storage.Mutation{Func: func(any, bool) (any, error) {
					close(entered)
					<-proceed
					return int64(1), nil
				}})
				first <- err
			}()
			<-entered
			type result struct {
				nv, old any
				err     error
				calls   []any
			}
			second := make(chan result, 1)
			go func() {
				var calls []any
				nv, old, err := b.Set(ctx, "s", P("n"), storage.Mutation{Func: func(old any, _ bool) (any, error) {
					calls = append(calls, old)
					if len(calls) == 1 {
						// Another process writes after the first update.
						if err := raw.HSet(ctx, b.Key("s"), "pn", "50").Err(); err != nil {
							return nil, err
						}
					}
					n := old.(int64)
					switch mode {
					case "error":
						if n < 10 {
							return nil, errors.New("too small")
						}
					case "unchanged":
						if n < 10 {
							return n, nil
						}
					}
					return n + 1, nil
				}})
				second <- result{nv, old, err, calls}
			}()
			for redis.LockRefs(b, "s", P("n")) < 2 {
				runtime.Gosched()
			}
			close(proceed)
			if err := <-first; err != nil {
				t.Fatal(err)
			}
			r := <-second
			if r.err != nil {
				t.Fatal(r.err)
			}
			if len(r.calls) != 2 || r.calls[0] != int64(1) || r.calls[1] != int64(50) {
				t.Errorf("function called with %v, want [1 50]", r.calls)
			}
			sameValue(t, "old", r.old, int64(50))
			sameValue(t, "new", r.nv, int64(51))
			if v, _ := b.Get(ctx, "s", P("n")); v != int64(51) {
				t.Errorf("stored %v, want 51", v)
			}
			if n := redis.LockRefs(b, "s", P("n")); n != 0 {
				t.Errorf("lock entry left with %d refs", n)
			}
		})
	}
}
