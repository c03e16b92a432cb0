package memory_test

import (
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestConformance runs the storage conformance suite on the memory backend.
// Contention is not run: the memory store is private to its process.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return memory.New() })
}

// TestIdempotencyConformance runs the idempotency-key conformance tests.
func TestIdempotencyConformance(t *testing.T) {
	storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend { return memory.New() })
}
