package redis

import (
	"testing"

	"github.com/krules-go/krules/storage"
)

// TestEncodeMetaMatchesStorage: encodeMeta's shortcut for empty metadata
// gives what storage.EncodeChangeMeta gives, and an empty but non-nil Extra
// is still recorded.
func TestEncodeMetaMatchesStorage(t *testing.T) {
	for _, m := range []*storage.ChangeMeta{
		nil,
		{},
		{Props: map[string]*storage.ChangeMeta{"x": {Depth: 2}}},
		{Extra: map[string]any{}},
		{Extra: map[string]any{"a": int64(1)}},
		{Depth: 3},
		{TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{TraceState: "k=v"},
	} {
		got, err := encodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		want, err := storage.EncodeChangeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("encodeMeta(%+v) = %q, want %q", m, got, want)
		}
	}
	if got, _ := encodeMeta(&storage.ChangeMeta{Muted: true, Depth: 1}); got != "!" {
		t.Errorf("muted: %q", got)
	}
	if got, _ := encodeMeta(&storage.ChangeMeta{Extra: map[string]any{}}); got != `{"extra":{}}` {
		t.Errorf("empty extra: %q", got)
	}
}
