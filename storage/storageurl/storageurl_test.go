package storageurl_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/storageurl"
)

func TestOpenMemory(t *testing.T) {
	ctx := context.Background()
	b, err := storageurl.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Capabilities().Persistent {
		t.Fatal("memory:// claims persistence")
	}
	if _, ok := b.(storage.Lister); !ok {
		t.Fatal("memory:// backend lost its List method")
	}
}

func TestOpenBoltPersists(t *testing.T) {
	ctx := context.Background()
	u := "bolt://" + filepath.Join(t.TempDir(), "x.db") + "?timeout=2s"
	b, err := storageurl.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*bolt.Backend); !ok {
		t.Fatalf("bolt URL opened %T", b)
	}
	k := storage.Key{Kind: storage.Default, Name: "n"}
	if _, _, err := b.Set(ctx, "s", k, storage.Mutation{Value: int64(7)}); err != nil {
		t.Fatal(err)
	}
	// Locked while open.
	if _, err := storageurl.Open(ctx, u[:len(u)-len("?timeout=2s")]+"?timeout=1ns"); !errors.Is(err, bolt.ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	b.Close()
	b, err = storageurl.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if v, err := b.Get(ctx, "s", k); err != nil || v != int64(7) {
		t.Fatalf("after reopen: %v, %v", v, err)
	}
}

func TestFromEnv(t *testing.T) {
	ctx := context.Background()
	t.Setenv(storageurl.EnvVar, "")
	if got := storageurl.URLFromEnv(); got != storageurl.DefaultURL {
		t.Fatalf("URLFromEnv() = %q", got)
	}
	b, err := storageurl.FromEnv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	path := filepath.Join(t.TempDir(), "env.db")
	t.Setenv(storageurl.EnvVar, "bolt://"+path)
	b, err = storageurl.FromEnv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if bb, ok := b.(*bolt.Backend); !ok || bb.Path() != path {
		t.Fatalf("FromEnv opened %T", b)
	}
	t.Setenv(storageurl.EnvVar, "nope://")
	if _, err := storageurl.FromEnv(ctx); !errors.Is(err, storageurl.ErrBadURL) {
		t.Fatalf("bad env URL: %v", err)
	}
}
