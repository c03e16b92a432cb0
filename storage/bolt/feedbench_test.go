package bolt_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
)

// BenchmarkFeedSet: a backend Set of a changing value with the feed off
// and on, without fsync (the commit's page writes dominate) and with it.
func BenchmarkFeedSet(b *testing.B) {
	for _, mode := range []struct{ on, sync bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		on, sync := mode.on, mode.sync
		name := "off"
		if on {
			name = "on"
		}
		if sync {
			name += "-fsync"
		}
		b.Run(name, func(b *testing.B) {
			be, err := bolt.Open(filepath.Join(b.TempDir(), "bench.db"), bolt.Config{NoSync: !sync, ChangeFeed: on})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			ctx := context.Background()
			k := storage.Key{Kind: storage.Default, Name: "n"}
			for i := 0; b.Loop(); i++ {
				if _, _, err := be.Set(ctx, "s", k, storage.Mutation{Value: int64(i)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
