package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/bolt"
)

// Bolt rows: the krules App on storage/bolt against raw bbolt transactions
// doing the same work on the natural raw layout (a bucket per subject, one
// key per property, JSON values). Both files live in one temporary directory
// with default (durable, fsync per commit) options.
func init() {
	register(Group{Name: "bolt", Setup: boltSetup})
}

func boltSetup() ([]Row, func(), error) {
	dir, err := os.MkdirTemp("", "krules-bench-bolt")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	b, err := bolt.Open(filepath.Join(dir, "krules.db"), bolt.Config{})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	raw, err := bbolt.Open(filepath.Join(dir, "raw.db"), 0o600, &bbolt.Options{FreelistType: bbolt.FreelistMapType})
	if err != nil {
		b.Close()
		cleanup()
		return nil, nil, err
	}
	done := func() { b.Close(); raw.Close(); cleanup() }
	ctx := context.Background()
	app := krules.New(krules.WithStorage(b))

	// 100 properties with small mixed values, the same on both sides.
	props := make([]string, 100)
	values := make([]any, 100)
	for i := range props {
		props[i] = "prop-" + strconv.Itoa(i)
		switch i % 3 {
		case 0:
			values[i] = int64(i)
		case 1:
			values[i] = "value-" + strconv.Itoa(i)
		default:
			values[i] = map[string]any{"n": int64(i), "ok": true}
		}
	}

	// Fixture for load-100.
	loaded := app.Subject("load-100")
	for i, p := range props {
		if _, _, err := loaded.Set(ctx, p, values[i]); err != nil {
			done()
			return nil, nil, err
		}
	}
	if err := loaded.Store(ctx); err != nil {
		done()
		return nil, nil, err
	}
	if err := raw.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte("load-100"))
		if err != nil {
			return err
		}
		for i, p := range props {
			v, _ := json.Marshal(values[i])
			if err := bk.Put([]byte(p), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		done()
		return nil, nil, err
	}

	// Warm both files up the same way (file growth, freelist, page cache) so
	// that the first row measured does not pay for it alone.
	for i := 0; i < 300; i++ {
		if _, _, err := app.Subject("warm-up", krules.NoCache()).Set(ctx, "n", i); err != nil {
			done()
			return nil, nil, err
		}
		if err := raw.Update(func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("warm-up"))
			if err != nil {
				return err
			}
			return bk.Put([]byte("n"), []byte(strconv.Itoa(i)))
		}); err != nil {
			done()
			return nil, nil, err
		}
	}

	rows := []Row{
		{
			Name: "bolt/set-nocache",
			Run: func(b *testing.B) {
				s := app.Subject("set-nocache", krules.NoCache())
				for i := 0; b.Loop(); i++ {
					if _, _, err := s.Set(ctx, "n", i); err != nil {
						b.Fatal(err)
					}
				}
			},
			Baseline: "bbolt Update: get+unmarshal old, marshal+put new",
			Base: func(b *testing.B) {
				name := []byte("set-nocache")
				for i := 0; b.Loop(); i++ {
					err := raw.Update(func(tx *bbolt.Tx) error {
						bk, err := tx.CreateBucketIfNotExists(name)
						if err != nil {
							return err
						}
						var old any
						if v := bk.Get([]byte("n")); v != nil {
							if err := json.Unmarshal(v, &old); err != nil {
								return err
							}
						}
						nv, err := json.Marshal(i)
						if err != nil {
							return err
						}
						return bk.Put([]byte("n"), nv)
					})
					if err != nil {
						b.Fatal(err)
					}
				}
			},
		},
		{
			Name: "bolt/store-100",
			Run: func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					s := app.Subject("store-100-" + strconv.Itoa(i%64))
					for j, p := range props {
						if _, _, err := s.Set(ctx, p, values[j], krules.Muted()); err != nil {
							b.Fatal(err)
						}
					}
					if err := s.Store(ctx); err != nil {
						b.Fatal(err)
					}
				}
			},
			Baseline: "bbolt Update: 100 marshal+put",
			Base: func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					name := []byte("store-100-" + strconv.Itoa(i%64))
					err := raw.Update(func(tx *bbolt.Tx) error {
						bk, err := tx.CreateBucketIfNotExists(name)
						if err != nil {
							return err
						}
						for j, p := range props {
							v, err := json.Marshal(values[j])
							if err != nil {
								return err
							}
							if err := bk.Put([]byte(p), v); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
				}
			},
		},
		{
			Name: "bolt/load-100",
			Run: func(b *testing.B) {
				for b.Loop() {
					d, err := app.Subject("load-100").Dict(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if len(d) != len(props)+2 {
						b.Fatalf("loaded %d keys", len(d))
					}
				}
			},
			Baseline: "bbolt View: cursor over 100 keys, unmarshal each",
			Base: func(b *testing.B) {
				name := []byte("load-100")
				for b.Loop() {
					m := make(map[string]any, len(props))
					err := raw.View(func(tx *bbolt.Tx) error {
						c := tx.Bucket(name).Cursor()
						for k, v := c.First(); k != nil; k, v = c.Next() {
							var x any
							if err := json.Unmarshal(v, &x); err != nil {
								return err
							}
							m[string(k)] = x
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
					if len(m) != len(props) {
						b.Fatalf("loaded %d keys", len(m))
					}
				}
			},
		},
	}
	return rows, done, nil
}
