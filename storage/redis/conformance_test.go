package redis_test

import (
	"testing"
	"time"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/storage/storagetest"
)

// conformanceParallel is storagetest.Config.Parallel for the suites here:
// their time goes to round trips, and each subtest has its own prefix.
const conformanceParallel = 8

func TestConformance(t *testing.T) {
	testenv.RedisURL(t)
	storagetest.RunConfig(t, storagetest.Config{
		Parallel: conformanceParallel,
		New:      func(t *testing.T) storage.Backend { return open(t, redis.Config{}) },
		// Plants the text as Python KRules writes it: HSET of the field.
		RawPut: func(t *testing.T, b storage.Backend, subject string, k storage.Key, raw string) bool {
			rb := b.(*redis.Backend)
			if err := rb.Client().HSet(t.Context(), rb.Key(subject), string(rune(k.Kind))+k.Name, raw).Err(); err != nil {
				t.Fatal(err)
			}
			return true
		},
	})
}

// TestContention: 2 processes × 16 goroutines × 500 updates (100 under the
// race detector; the totals are exact either way) of one property with
// update functions and with Inc, beside writers of other properties.
func TestContention(t *testing.T) {
	url := testenv.RedisURL(t)
	updates := 500
	if testenv.Race {
		updates = 100
	}
	storagetest.Contention(t, storagetest.ContentionConfig{
		Procs: 2, Goroutines: 16, Updates: updates,
		// Only Close here: children run this too, and the suite's parent
		// flushes the one subject it uses when the test ends.
		Open: func(t testing.TB, namespace string) storage.Backend {
			b, err := redis.Open(t.Context(), url, redis.Config{Prefix: namespace + ":"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
	})
}

// TestIdempotencyConformance runs the idempotency-key conformance tests;
// the short window lets the test's key records expire.
func TestIdempotencyConformance(t *testing.T) {
	testenv.RedisURL(t)
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
		return open(t, redis.Config{IdempotencyWindow: time.Minute})
	})
}
