//go:build !race

package postgres_test

import (
	"testing"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestFeedConformance: the data behaviour is the same with the feed on. It
// is built without -race only: the suite takes minutes under the race
// detector on PostgreSQL, and the feed code paths it covers run in the
// package's other feed tests under -race too.
func TestFeedConformance(t *testing.T) {
	testenv.PostgresURL(t)
	storagetest.RunConfig(t, storagetest.Config{
		Parallel: 4, // each subtest has its own tables and pool
		New:      func(t *testing.T) storage.Backend { return newFeedBackend(t) },
	})
}
