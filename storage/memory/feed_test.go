package memory_test

import (
	"testing"

	"github.com/krules-go/krules/feed/feedtest"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/storagetest"
)

func TestFeedRecords(t *testing.T) {
	feedtest.Records(t, memory.New(memory.WithChangeFeed()), false)
}

// The data behaviour is the same with the feed on.
func TestFeedConformance(t *testing.T) {
	storagetest.Run(t, func(*testing.T) storage.Backend { return memory.New(memory.WithChangeFeed()) })
}

func TestFeedIdempotent(t *testing.T) {
	feedtest.Idempotent(t, memory.New(memory.WithChangeFeed()))
}

func TestFeedCursor(t *testing.T) {
	feedtest.Cursor(t, memory.New(memory.WithChangeFeed()))
}
