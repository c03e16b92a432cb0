package storagetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/krules-go/krules/storage"
)

// RunIdempotency runs the conformance tests of idempotency keys
// (storage.WithIdempotencyKey) as subtests of t, on a backend that
// implements storage.Idempotent (the test fails otherwise). newBackend is as
// for Run. It checks that a keyed Set (plain value, Op) or Delete is applied
// once and a retry returns the first result, marked replayed; that 16
// goroutines retrying the same 50 keys add exactly 50; that different keys
// and other subjects apply; that a key reused for another property, kind,
// operation or value is refused with storage.ErrIdempotencyKeyReused and
// writes nothing; that a failed call records nothing; and that an update
// function with a key is refused with storage.ErrIdempotencyUnsupported.
func RunIdempotency(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	t.Helper()
	for _, tc := range idempotencyTests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSuite(t, newBackend)
			if _, ok := s.b.(storage.Idempotent); !ok {
				t.Fatalf("backend %T does not implement storage.Idempotent", s.b)
			}
			tc.fn(t, s)
		})
	}
}

var idempotencyTests = []suiteTest{
	{"Idempotency/RetryAppliesOnce", testIdemRetry},
	{"Idempotency/DeleteRetry", testIdemDelete},
	{"Idempotency/ConcurrentRetriesExactCount", testIdemConcurrent},
	{"Idempotency/DifferentKeysApply", testIdemDifferentKeys},
	{"Idempotency/ReuseRefused", testIdemReuse},
	{"Idempotency/FailedCallRecordsNothing", testIdemFailed},
	{"Idempotency/UpdateFuncRefused", testIdemFunc},
}

func (s *suite) inc(n int64) storage.Mutation {
	op, err := storage.NewOp(storage.OpInc, n)
	if err != nil {
		s.t.Fatal(err)
	}
	return storage.Mutation{Op: op}
}

// keyedSet is one keyed Set; it returns the values, the error and whether
// the call was replayed.
func (s *suite) keyedSet(key, subj string, k storage.Key, m storage.Mutation) (nv, old any, replayed bool, err error) {
	ctx := storage.WithIdempotencyKey(s.ctx, key)
	nv, old, err = s.b.Set(ctx, subj, k, m)
	return nv, old, storage.Replayed(ctx), err
}

func testIdemRetry(t *testing.T, s *suite) {
	subj := s.subject("idem-retry")
	k := pkey("n")
	// The first call's answer is lost (as after a timeout); the caller
	// retries with the same key: the write is not applied again.
	for i := range 3 {
		nv, old, replayed, err := s.keyedSet("req-1", subj, k, s.inc(5))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if !sameTypeEqual(nv, int64(5)) || old != nil {
			t.Errorf("call %d returned (%s, %s), want the first result (int64(5), nil)", i, describe(nv), describe(old))
		}
		if replayed != (i > 0) {
			t.Errorf("call %d: Replayed = %v, want %v", i, replayed, i > 0)
		}
	}
	s.expectValue(subj, k, int64(5))

	// A plain value, with a later change by someone else: the retry returns
	// the first result and does not overwrite the newer value.
	v := pkey("v")
	if _, _, _, err := s.keyedSet("req-2", subj, v, storage.Mutation{Value: "a"}); err != nil {
		t.Fatal(err)
	}
	s.set(subj, v, "b")
	nv, old, replayed, err := s.keyedSet("req-2", subj, v, storage.Mutation{Value: "a"})
	if err != nil || !replayed || nv != "a" || old != nil {
		t.Errorf("retry = (%s, %s, replayed %v, %v), want (\"a\", nil, replayed, nil)", describe(nv), describe(old), replayed, err)
	}
	s.expectValue(subj, v, "b")

	// Append: the retry returns the first result.
	l := pkey("l")
	app, _ := storage.NewOp(storage.OpAppend, []any{int64(1)})
	for i := range 2 {
		nv, _, _, err := s.keyedSet("req-3", subj, l, storage.Mutation{Op: app})
		if err != nil || !sameTypeEqual(nv, []any{int64(1)}) {
			t.Errorf("Append call %d = (%s, %v), want [1]", i, describe(nv), err)
		}
	}
	s.expectValue(subj, l, []any{int64(1)})
}

func testIdemDelete(t *testing.T, s *suite) {
	subj := s.subject("idem-delete")
	k := pkey("x")
	s.set(subj, k, "gone")
	s.set(subj, pkey("keep"), true)
	for i := range 2 {
		ctx := storage.WithIdempotencyKey(s.ctx, "del-1")
		old, err := s.b.Delete(ctx, subj, k)
		if err != nil || old != "gone" {
			t.Errorf("Delete call %d = (%s, %v), want (\"gone\", nil)", i, describe(old), err)
		}
		if storage.Replayed(ctx) != (i > 0) {
			t.Errorf("Delete call %d: Replayed = %v", i, storage.Replayed(ctx))
		}
	}
	s.expectMissing(subj, k)
	// A retry does not delete a property set again since.
	s.set(subj, k, "back")
	if old, err := s.b.Delete(storage.WithIdempotencyKey(s.ctx, "del-1"), subj, k); err != nil || old != "gone" {
		t.Errorf("Delete retry = (%s, %v), want the first result", describe(old), err)
	}
	s.expectValue(subj, k, "back")
	// A Delete whose key was used by a Set is refused.
	if _, _, _, err := s.keyedSet("del-2", subj, pkey("keep"), storage.Mutation{Value: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.b.Delete(storage.WithIdempotencyKey(s.ctx, "del-2"), subj, pkey("keep")); !errors.Is(err, storage.ErrIdempotencyKeyReused) {
		t.Errorf("Delete with a Set's key: %v, want ErrIdempotencyKeyReused", err)
	}
	s.expectValue(subj, pkey("keep"), false)
}

func testIdemConcurrent(t *testing.T, s *suite) {
	subj := s.subject("idem-concurrent")
	k := pkey("n")
	const workers, keys = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var mu sync.Mutex
	applied := 0
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range keys {
				key := fmt.Sprintf("k-%d", (i+w)%keys) // every worker retries every key
				nv, old, replayed, err := s.keyedSet(key, subj, k, s.inc(1))
				if err != nil {
					errs <- err
					return
				}
				o, _ := old.(int64)
				if nv != o+1 {
					errs <- fmt.Errorf("key %s returned (%s, %s), not old+1", key, describe(nv), describe(old))
					return
				}
				if !replayed {
					mu.Lock()
					applied++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s.expectValue(subj, k, int64(keys))
	if applied != keys {
		t.Errorf("%d calls were not replayed, want %d", applied, keys)
	}
}

func testIdemDifferentKeys(t *testing.T, s *suite) {
	subj, other := s.subject("idem-keys"), s.subject("idem-keys-other")
	k := pkey("n")
	for _, key := range []string{"a", "b", "c"} {
		if _, _, replayed, err := s.keyedSet(key, subj, k, s.inc(1)); err != nil || replayed {
			t.Fatalf("key %s: replayed %v, %v", key, replayed, err)
		}
	}
	s.expectValue(subj, k, int64(3))
	// Keys are scoped to the subject: the same key applies on another one.
	if _, _, replayed, err := s.keyedSet("a", other, k, s.inc(1)); err != nil || replayed {
		t.Fatalf("key a on another subject: replayed %v, %v", replayed, err)
	}
	s.expectValue(other, k, int64(1))
	// Without a key, nothing is deduplicated.
	s.set(subj, k, 0)
	for range 2 {
		if _, _, err := s.b.Set(s.ctx, subj, k, s.inc(1)); err != nil {
			t.Fatal(err)
		}
	}
	s.expectValue(subj, k, int64(2))
}

func testIdemReuse(t *testing.T, s *suite) {
	subj := s.subject("idem-reuse")
	if _, _, _, err := s.keyedSet("r", subj, pkey("a"), s.inc(1)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		k    storage.Key
		m    storage.Mutation
	}{
		{"another property", pkey("b"), s.inc(1)},
		{"another kind", ekey("a"), s.inc(1)},
		{"another argument", pkey("a"), s.inc(2)},
		{"a plain value", pkey("a"), storage.Mutation{Value: int64(1)}},
	} {
		if _, _, _, err := s.keyedSet("r", subj, c.k, c.m); !errors.Is(err, storage.ErrIdempotencyKeyReused) {
			t.Errorf("%s: %v, want ErrIdempotencyKeyReused", c.name, err)
		}
	}
	if _, err := s.b.Delete(storage.WithIdempotencyKey(s.ctx, "r"), subj, pkey("a")); !errors.Is(err, storage.ErrIdempotencyKeyReused) {
		t.Errorf("Delete: %v, want ErrIdempotencyKeyReused", err)
	}
	s.expectSnapshot(subj, map[string]any{"a": int64(1)}, map[string]any{})
}

func testIdemFailed(t *testing.T, s *suite) {
	subj := s.subject("idem-failed")
	k := pkey("n")
	s.set(subj, k, "text")
	if _, _, _, err := s.keyedSet("f", subj, k, s.inc(1)); !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("Inc on a string: %v, want ErrInvalidValue", err)
	}
	s.set(subj, k, 1)
	if nv, _, replayed, err := s.keyedSet("f", subj, k, s.inc(1)); err != nil || replayed || !sameTypeEqual(nv, int64(2)) {
		t.Errorf("retry after a failure = (%s, replayed %v, %v), want a fresh write (int64(2))", describe(nv), replayed, err)
	}
	// Deleting a missing property fails and records nothing.
	d := pkey("d")
	if _, err := s.b.Delete(storage.WithIdempotencyKey(s.ctx, "g"), subj, d); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Delete of a missing property: %v, want ErrNotFound", err)
	}
	s.set(subj, d, true)
	if old, err := s.b.Delete(storage.WithIdempotencyKey(s.ctx, "g"), subj, d); err != nil || old != true {
		t.Errorf("Delete retry after a failure = (%s, %v), want (true, nil)", describe(old), err)
	}
	s.expectMissing(subj, d)
}

func testIdemFunc(t *testing.T, s *suite) {
	subj := s.subject("idem-func")
	k := pkey("n")
	f := storage.Mutation{Func: func(old any, exists bool) (any, error) { return int64(1), nil }}
	ctx := storage.WithIdempotencyKey(context.WithoutCancel(s.ctx), "u")
	if _, _, err := s.b.Set(ctx, subj, k, f); !errors.Is(err, storage.ErrIdempotencyUnsupported) {
		t.Errorf("update function with a key: %v, want ErrIdempotencyUnsupported", err)
	}
	s.expectMissing(subj, k)
}
