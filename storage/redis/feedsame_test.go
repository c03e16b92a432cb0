package redis_test

import (
	"context"
	"testing"

	"github.com/krules-go/krules/feed/feedtest"
	"github.com/krules-go/krules/storage"
)

// TestFeedEffectiveChangeByValue: in feed mode a write records a change
// exactly when storage.Equal (the App's rule for emitting
// subject-property-changed) says the stored value changed, also when the
// stored text is not the one Go writes (Python KRules' json.dumps output,
// other number spellings, escapes, key order). The expected answer of every
// case comes from storage.Equal on the decoded stored text, so the test
// fails if the script's comparison and the Go rule disagree. Each case runs
// through Set, through a Store batch, through an update function (the
// compare-and-set script) and, for numbers, through Inc(0) where the
// stored text is a number.
func TestFeedEffectiveChangeByValue(t *testing.T) {
	ctx := context.Background()
	b := openFeed(t)
	cases := []struct {
		raw string // stored text, as another writer left it
		nv  any    // value written by krules
	}{
		{`1.0`, int64(1)},
		{`1e2`, int64(100)},
		{`-0`, int64(0)},
		{`0.0`, int64(0)},
		{`2.5`, 2.5},
		{`2.50`, 2.5},
		{`1`, int64(2)},
		{`1.5`, int64(2)},
		{`9007199254740993`, int64(9007199254740992)},
		{`9007199254740992.0`, int64(9007199254740992)},
		{`9007199254740993.0`, int64(9007199254740993)},
		{`1.`, int64(1)},
		{`0x1`, int64(1)},
		{`01`, int64(1)},
		{` 1`, int64(1)},
		{`"caf\u00e9"`, "café"},
		{`"caf\u00e9"`, "cafe"},
		{`"a\/b"`, "a/b"},
		{`"x"`, "y"},
		{`"1"`, int64(1)},
		{`true`, true},
		{`true`, false},
		{`null`, nil},
		{`{"b": 1, "a": [1, 2.0]}`, map[string]any{"a": []any{int64(1), int64(2)}, "b": int64(1)}},
		{`{"b": 1, "a": [1, 2.5]}`, map[string]any{"a": []any{int64(1), int64(2)}, "b": int64(1)}},
		{`{"a": {"x": "caf\u00e9", "n": null}}`, map[string]any{"a": map[string]any{"x": "café", "n": nil}}},
		{`{"a": {"x": 1, "n": null}}`, map[string]any{"a": map[string]any{"x": int64(1)}}},
		{`[1, 2]`, []any{int64(1), int64(2)}},
		{`[2, 1]`, []any{int64(1), int64(2)}},
		{`{"1": 5}`, []any{int64(5)}},
		{`{"a": {}}`, map[string]any{"a": []any{}}},
		{`[1, 12345678901234567]`, []any{int64(1), int64(12345678901234568)}},
		{``, ""},
	}
	paths := []struct {
		name  string
		write func(subject string, k storage.Key, nv any) error
	}{
		{"set", func(s string, k storage.Key, nv any) error {
			_, _, err := b.Set(ctx, s, k, storage.Mutation{Value: nv})
			return err
		}},
		{"store", func(s string, k storage.Key, nv any) error {
			return b.Store(ctx, s, storage.Batch{Puts: []storage.Write{{Key: k, Value: nv}}})
		}},
		{"update", func(s string, k storage.Key, nv any) error {
			_, _, err := b.Set(ctx, s, k, storage.Mutation{Func: func(any, bool) (any, error) { return nv, nil }})
			return err
		}},
	}
	for i, c := range cases {
		old := storage.UnmarshalProperty([]byte(c.raw))
		want := !storage.Equal(old, c.nv)
		_, invalid := old.(storage.Invalid)
		for _, p := range paths {
			if invalid && p.name == "update" {
				continue // an update function cannot read text outside the value model
			}
			subject := "s" + string(rune('a'+i)) + p.name
			k := P("v")
			if err := b.Client().HSet(ctx, b.Key(subject), "pv", c.raw).Err(); err != nil {
				t.Fatal(err)
			}
			feedtest.Drain(t, b)
			if err := p.write(subject, k, c.nv); err != nil {
				t.Fatalf("%s %q -> %#v: %v", p.name, c.raw, c.nv, err)
			}
			got := feedtest.Drain(t, b)
			if (len(got) == 1) != want || len(got) > 1 {
				t.Errorf("%s: stored %q, wrote %#v: %d records, want a record: %v (storage.Equal says old %#v %s)",
					p.name, c.raw, c.nv, len(got), want, old, map[bool]string{true: "differs", false: "is equal"}[want])
			}
		}
	}
	// Inc(0) of a number spelt otherwise rewrites the text, not the value.
	for _, raw := range []string{`1.0`, `2.5`, `1e2`} {
		if err := b.Client().HSet(ctx, b.Key("inc0"), "pv", raw).Err(); err != nil {
			t.Fatal(err)
		}
		feedtest.Drain(t, b)
		if _, _, err := b.Set(ctx, "inc0", P("v"), storage.Mutation{Op: &storage.Op{Kind: storage.OpInc, Arg: int64(0)}}); err != nil {
			t.Fatal(err)
		}
		if got := feedtest.Drain(t, b); len(got) != 0 {
			t.Errorf("Inc(0) of stored %q recorded %+v", raw, got)
		}
	}
}
