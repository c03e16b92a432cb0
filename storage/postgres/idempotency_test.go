package postgres_test

import (
	"testing"
	"time"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestIdempotencyConformance runs the idempotency-key conformance tests,
// each on a table of its own with its key table.
func TestIdempotencyConformance(t *testing.T) {
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
		pool := testPool(t)
		table := testenv.Unique("krules_test")
		dropTable(t, pool, "", table)
		dropTable(t, pool, "", table+"_idempotency")
		b, err := postgres.New(t.Context(), pool, postgres.Config{Table: table, IdempotencyWindow: time.Hour})
		if err != nil {
			t.Fatalf("postgres.New: %v", err)
		}
		t.Cleanup(b.Close)
		return b
	})
}
