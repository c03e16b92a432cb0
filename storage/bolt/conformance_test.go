package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return open(t, filepath.Join(t.TempDir(), "conformance.db"))
	})
}

// NoSync changes only bbolt's fsync; its data survives a clean reopen.
func TestNoSyncReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nosync.db")
	b, err := bolt.Open(path, bolt.Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	k := storage.Key{Kind: storage.Default, Name: "n"}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: int64(3)}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = open(t, path)
	if v, err := b.Get(ctx, "s", k); err != nil || v != int64(3) {
		t.Fatalf("after reopen: %v %v", v, err)
	}
}
