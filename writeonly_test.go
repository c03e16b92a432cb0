package krules_test

import (
	"context"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// loadCounter counts the Loads that reach the backend.
type loadCounter struct {
	storage.Backend
	loads atomic.Int64
}

func (l *loadCounter) Load(ctx context.Context, name string) (storage.Snapshot, error) {
	l.loads.Add(1)
	return l.Backend.Load(ctx, name)
}

func TestWriteOnlyStoresWithoutLoad(t *testing.T) {
	lc := &loadCounter{Backend: memory.New()}
	app, _ := newApp(t, krules.WithStorage(lc))
	if _, _, err := app.Subject("w").Set(ctx, "keep", "old", krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	s := app.Subject("w", krules.WriteOnly())
	for i, p := range []string{"a", "b", "a"} {
		nv, old, err := s.Set(ctx, p, i, krules.Muted())
		if err != nil {
			t.Fatal(err)
		}
		wantOld := any(nil)
		if i == 2 {
			wantOld = int64(0) // this handle's own earlier write of "a"
		}
		if nv != int64(i) || old != wantOld {
			t.Fatalf("Set %s = %v, %v; want %v, %v", p, nv, old, i, wantOld)
		}
	}
	if _, _, err := s.SetExt(ctx, "e", true); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if n := lc.loads.Load(); n != 0 {
		t.Fatalf("WriteOnly Set+Store made %d loads, want 0", n)
	}
	d, err := app.Subject("w").Dict(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"name": "w", "keep": "old", "a": int64(2), "b": int64(1), "ext": map[string]any{"e": true}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("stored %v, want %v", d, want)
	}
}

func TestWriteOnlyReadsMergeUnsavedWrites(t *testing.T) {
	app, _ := newApp(t)
	base := app.Subject("w")
	base.Set(ctx, "x", 1)
	base.Set(ctx, "y", 2)
	if err := base.Store(ctx); err != nil {
		t.Fatal(err)
	}
	s := app.Subject("w", krules.WriteOnly())
	if _, _, err := s.Set(ctx, "y", 20); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Set(ctx, "z", 30); err != nil {
		t.Fatal(err)
	}
	// An Op needs the stored value: it loads, with the unsaved writes on top.
	if nv, old, err := s.Set(ctx, "x", krules.Inc(5)); err != nil || nv != int64(6) || old != int64(1) {
		t.Fatalf("Inc = %v, %v, %v", nv, old, err)
	}
	keys, err := s.Keys(ctx)
	if err != nil || !reflect.DeepEqual(keys, []string{"x", "y", "z"}) {
		t.Fatalf("keys = %v, %v", keys, err)
	}
	if v, _ := s.Get(ctx, "y"); v != int64(20) {
		t.Fatalf("y = %v, want the unsaved 20", v)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	d, _ := app.Subject("w").Dict(ctx)
	want := map[string]any{"name": "w", "x": int64(6), "y": int64(20), "z": int64(30), "ext": map[string]any{}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("stored %v, want %v", d, want)
	}
}

func TestWriteOnlyEvents(t *testing.T) {
	app, _ := newApp(t)
	var got []string
	app.On(krules.PropertyChanged).Do(func(_ context.Context, ev *krules.Event) error {
		got = append(got, ev.PropertyName+"="+storageString(ev.NewValue)+" old="+storageString(ev.OldValue))
		return nil
	})
	app.Subject("w").Set(ctx, "a", "stored", krules.NoCache(), krules.Muted())
	s := app.Subject("w", krules.WriteOnly())
	s.Set(ctx, "a", "x") // the stored value is unknown: old is nil
	s.Set(ctx, "a", "x") // equal to this handle's write: no event
	s.Set(ctx, "a", "y")
	want := []string{"a=x old=<nil>", "a=y old=x"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestWriteOnlyNoCacheWriteSupersedesUnsaved(t *testing.T) {
	app, _ := newApp(t)
	s := app.Subject("w", krules.WriteOnly())
	s.Set(ctx, "a", "unsaved")
	if _, _, err := s.Set(ctx, "a", "direct", krules.NoCache()); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := app.Subject("w").Get(ctx, "a"); v != "direct" {
		t.Fatalf("a = %v, want the later NoCache write", v)
	}
}

func storageString(v any) string {
	if v == nil {
		return "<nil>"
	}
	return v.(string)
}
