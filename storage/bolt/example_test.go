package bolt_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
)

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "krules-bolt-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "krules.db")

	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		log.Fatal(err)
	}
	b.Store(ctx, "user-1", storage.Batch{Puts: []storage.Write{
		{Key: storage.Key{Kind: storage.Default, Name: "name"}, Value: "John"},
		{Key: storage.Key{Kind: storage.Default, Name: "age"}, Value: int64(30)},
	}})
	inc, _ := storage.NewOp(storage.OpInc, 1)
	newV, oldV, _ := b.Set(ctx, "user-1", storage.Key{Kind: storage.Default, Name: "age"}, storage.Mutation{Op: inc})
	fmt.Println("age:", oldV, "->", newV)
	b.Close()

	// Reopen: the data is still there, in insertion order.
	b, err = bolt.Open(path, bolt.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	snap, _ := b.Load(ctx, "user-1")
	for _, p := range snap.Props {
		fmt.Printf("%s = %v\n", p.Name, p.Value)
	}
	// Output:
	// age: 30 -> 31
	// name = John
	// age = 31
}
