package storage_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/krules-go/krules/storage"
)

func TestChangeMetaRoundTrip(t *testing.T) {
	for _, m := range []*storage.ChangeMeta{nil, {}, {Muted: true}} {
		if text, err := storage.EncodeChangeMeta(m); err != nil || text != nil {
			t.Errorf("EncodeChangeMeta(%+v) = %q, %v; want nil, nil", m, text, err)
		}
	}
	m := &storage.ChangeMeta{
		Extra:       map[string]any{"who": "a", "n": int64(2), "l": []any{true, nil}},
		Depth:       3,
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		TraceState:  "k=v",
	}
	text, err := storage.EncodeChangeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	var c storage.Change
	if err := storage.DecodeChangeMeta(text, &c); err != nil {
		t.Fatalf("DecodeChangeMeta(%s): %v", text, err)
	}
	if !reflect.DeepEqual(c.Extra, m.Extra) || c.Depth != 3 || c.TraceParent != m.TraceParent || c.TraceState != "k=v" {
		t.Errorf("round trip of %s gave %+v", text, c)
	}

	if _, err := storage.EncodeChangeMeta(&storage.ChangeMeta{Extra: map[string]any{"ch": make(chan int)}}); !errors.Is(err, storage.ErrInvalidValue) {
		t.Errorf("Extra with a chan: err = %v, want ErrInvalidValue", err)
	}
	for _, bad := range []string{`[1]`, `{"extra":1}`, `{`} {
		if err := storage.DecodeChangeMeta([]byte(bad), &storage.Change{}); err == nil {
			t.Errorf("DecodeChangeMeta(%s): no error", bad)
		}
	}
}
