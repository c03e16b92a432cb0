package storagetest

import (
	"testing"

	"github.com/krules-go/krules/storage"
)

// runSubjectTests runs the Subject-level tests (through a krules App).
func runSubjectTests(t *testing.T, newBackend func(t *testing.T) storage.Backend) {}
