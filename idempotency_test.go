package krules_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

func TestIdempotencyKeySetAndDelete(t *testing.T) {
	app := krules.New(krules.WithStorage(memory.New()))
	var rec recorder
	app.On("*").Do(rec.handler)
	ctx := context.Background()
	s := app.Subject("idem")
	for i := range 3 {
		nv, old, err := s.Set(ctx, "n", krules.Inc(1), krules.NoCache(), krules.IdempotencyKey("req-42"))
		if err != nil || nv != int64(1) || old != nil {
			t.Fatalf("Set call %d = (%v, %v, %v), want the first result (1, nil, nil)", i, nv, old, err)
		}
	}
	for i := range 2 {
		if err := s.Delete(ctx, "n", krules.NoCache(), krules.IdempotencyKey("del-42")); err != nil {
			t.Fatalf("Delete call %d: %v", i, err)
		}
	}
	evs := rec.snapshot()
	if len(evs) != 2 || evs[0].Type != krules.PropertyChanged || evs[1].Type != krules.PropertyDeleted {
		t.Fatalf("events %v, want one PropertyChanged and one PropertyDeleted", evs)
	}
	// A handler's ctx does not carry the caller's key.
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		if _, ok := storage.IdempotencyKeyFrom(ctx); ok {
			t.Error("handler ctx carries the idempotency key")
		}
		return nil
	})
	if _, _, err := s.Set(ctx, "m", 1, krules.NoCache(), krules.IdempotencyKey("req-43")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Set(ctx, "other", 1, krules.NoCache(), krules.IdempotencyKey("req-43")); !errors.Is(err, krules.ErrIdempotencyKeyReused) {
		t.Errorf("key reused for another property: %v, want ErrIdempotencyKeyReused", err)
	}
}

// noIdem hides the backend's Idempotent implementation.
type noIdem struct{ storage.Backend }

func TestIdempotencyKeyRefused(t *testing.T) {
	ctx := context.Background()
	s := krules.New(krules.WithStorage(memory.New())).Subject("idem")
	plain := krules.New(krules.WithStorage(noIdem{memory.New()})).Subject("idem")
	for _, c := range []struct {
		name string
		err  error
		call func() error
	}{
		{"cached Set", krules.ErrIdempotencyUnsupported, func() error {
			_, _, err := s.Set(ctx, "n", 1, krules.IdempotencyKey("k"))
			return err
		}},
		{"cached Delete", krules.ErrIdempotencyUnsupported, func() error {
			return s.Delete(ctx, "n", krules.IdempotencyKey("k"))
		}},
		{"update function", krules.ErrIdempotencyUnsupported, func() error {
			_, _, err := s.Set(ctx, "n", krules.Update(func(n int) int { return n + 1 }), krules.NoCache(), krules.IdempotencyKey("k"))
			return err
		}},
		{"backend without keys", krules.ErrIdempotencyUnsupported, func() error {
			_, _, err := plain.Set(ctx, "n", 1, krules.NoCache(), krules.IdempotencyKey("k"))
			return err
		}},
		{"empty key", krules.ErrInvalidName, func() error {
			_, _, err := s.Set(ctx, "n", 1, krules.NoCache(), krules.IdempotencyKey(""))
			return err
		}},
		{"key too long", krules.ErrInvalidName, func() error {
			_, _, err := s.Set(ctx, "n", 1, krules.NoCache(), krules.IdempotencyKey(string(make([]byte, storage.MaxIdempotencyKeyLen+1))))
			return err
		}},
	} {
		if err := c.call(); !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
		}
	}
	for _, sub := range []*krules.Subject{s, plain} {
		if ok, err := sub.Has(ctx, "n"); err != nil || ok {
			t.Errorf("a refused call wrote: Has = %v, %v", ok, err)
		}
	}
}

func ExampleIdempotencyKey() {
	ctx := context.Background()
	counter := krules.New().Subject("counter")
	// The first attempt timed out after the store applied it; the retry
	// carries the same key and is not applied again.
	counter.Set(ctx, "n", krules.Inc(1), krules.NoCache(), krules.IdempotencyKey("req-42"))
	nv, old, err := counter.Set(ctx, "n", krules.Inc(1), krules.NoCache(), krules.IdempotencyKey("req-42"))
	fmt.Println(nv, old, err)
	// Output: 1 <nil> <nil>
}
