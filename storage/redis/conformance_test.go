package redis_test

import (
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/storage/storagetest"
)

func TestConformance(t *testing.T) {
	testenv.RedisURL(t)
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return open(t, redis.Config{})
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
