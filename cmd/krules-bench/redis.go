package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
)

// Redis rows: krules Subjects on storage/redis against raw go-redis calls
// doing the same work on the same layout (hash s:{prefix}{subject}, fields
// p<name>, JSON values), each side with its own client built from
// KRULES_REDIS_URL with the same options. set, get, update and inc go
// through NoCache Subjects (every call reaches Redis); store-100 is 100
// cached Sets on a fresh WriteOnly handle (no load before the writes) plus
// Store, load-100 a fresh handle's first read; the -backend rows measure
// these two at the storage.Backend level. set-writeonly is one Set + Store
// on a WriteOnly, Muted handle (a blind HSET: no old value is read, unlike
// set); set-blind one Set on a WriteOnly, NoCache, Muted handle (the same
// HSET, without the cache). The -c16 rows run 16 goroutines
// on ONE subject and property. Every key lives under a prefix of this run,
// removed afterwards.
func init() {
	register(Group{
		Name:    "redis",
		Enabled: func() bool { return os.Getenv("KRULES_REDIS_URL") != "" },
		Setup:   redisSetup,
	})
}

// rawIncScript is the raw baseline of Inc: the obvious one-script increment
// returning the old and the new value.
var rawIncScript = goredis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = tonumber(old or '0') + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], new)
return {old, new}
`)

func redisSetup() ([]Row, func(), error) {
	ctx := context.Background()
	url := os.Getenv("KRULES_REDIS_URL")
	prefix := fmt.Sprintf("krules-bench-%d:", os.Getpid())
	backend, err := redis.Open(ctx, url, redis.Config{Prefix: prefix})
	if err != nil {
		return nil, nil, err
	}
	opts, err := goredis.ParseURL(url)
	if err != nil {
		backend.Close()
		return nil, nil, err
	}
	opts.ContextTimeoutEnabled = true
	raw := goredis.NewClient(opts)
	done := func() {
		it := raw.Scan(context.Background(), 0, "s:"+prefix+"*", 1000).Iterator()
		for it.Next(context.Background()) {
			raw.Del(context.Background(), it.Val())
		}
		if err := it.Err(); err != nil {
			fmt.Fprintf(os.Stderr, "krules-bench: redis cleanup: %v\n", err)
		}
		backend.Close()
		raw.Close()
	}
	app := krules.New(krules.WithStorage(backend))
	key := backend.Key

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
	fixtures := func() error {
		for _, s := range []string{"k-get", "k-func", "k-inc", "raw-get", "raw-func", "raw-inc"} {
			if _, _, err := app.Subject(s, krules.NoCache()).Set(ctx, "n", 0, krules.Muted()); err != nil {
				return err
			}
		}
		for _, s := range []string{"k-load-100", "raw-load-100"} {
			sub := app.Subject(s)
			for i, p := range props {
				if _, _, err := sub.Set(ctx, p, values[i], krules.Muted()); err != nil {
					return err
				}
			}
			if err := sub.Store(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	if err := fixtures(); err != nil {
		done()
		return nil, nil, err
	}

	incFunc := krules.Update(func(n int64) int64 { return n + 1 })
	// rawWatch is Python KRules' update: WATCH, HGET, compute, MULTI/HSET/EXEC,
	// retried on a conflict.
	rawWatch := func(subject string) error {
		k := key(subject)
		for {
			err := raw.Watch(ctx, func(tx *goredis.Tx) error {
				text, err := tx.HGet(ctx, k, "pn").Result()
				if err != nil {
					return err
				}
				var n int64
				if err := json.Unmarshal([]byte(text), &n); err != nil {
					return err
				}
				nv, _ := json.Marshal(n + 1)
				_, err = tx.TxPipelined(ctx, func(p goredis.Pipeliner) error {
					p.HSet(ctx, k, "pn", nv)
					return nil
				})
				return err
			}, k)
			if !errors.Is(err, goredis.TxFailedErr) {
				return err
			}
		}
	}
	rawStore100 := func(subject string) error {
		args := make([]any, 0, 2*len(props))
		for j, p := range props {
			v, err := json.Marshal(values[j])
			if err != nil {
				return err
			}
			args = append(args, "p"+p, v)
		}
		return raw.HSet(ctx, key(subject), args...).Err()
	}
	rawLoad100 := func() error {
		m, err := raw.HGetAll(ctx, key("raw-load-100")).Result()
		if err != nil {
			return err
		}
		out := make(map[string]any, len(m))
		for f, text := range m {
			var v any
			if err := json.Unmarshal([]byte(text), &v); err != nil {
				return err
			}
			out[f[1:]] = v
		}
		if len(out) != len(props) {
			return fmt.Errorf("loaded %d fields", len(out))
		}
		return nil
	}
	const loadBaseline = "go-redis HGETALL + json.Unmarshal of each value"
	const storeBaseline = "go-redis HSET of 100 fields (json.Marshal of each value)"

	rawSetKey, rawGetKey := key("raw-set"), key("raw-get")
	getSub := app.Subject("k-get", krules.NoCache())
	setSub := app.Subject("k-set", krules.NoCache())
	blindSub := app.Subject("k-set-blind", krules.WriteOnly(), krules.NoCache(), krules.Muted())
	funcSub := app.Subject("k-func", krules.NoCache())
	inc16Sub := app.Subject("k-inc", krules.NoCache())
	rawIncKey := key("raw-inc")
	rows := []Row{
		{
			Name: "redis/set",
			Op: func(i int) error {
				_, _, err := setSub.Set(ctx, "n", i)
				return err
			},
			Baseline: "go-redis HSET (json.Marshal)",
			BaseOp: func(i int) error {
				v, _ := json.Marshal(i)
				return raw.HSet(ctx, rawSetKey, "pn", v).Err()
			},
		},
		{
			// The same krules Set against the raw way to do the same job:
			// a Set returns the old value, atomically with the write, which
			// go-redis does with a MULTI/EXEC of HGET + HSET (one round
			// trip). redis/set's bare HSET reads nothing.
			Name: "redis/set-atomic",
			Op: func(i int) error {
				_, _, err := setSub.Set(ctx, "n", i)
				return err
			},
			Baseline: "go-redis MULTI HGET+HSET EXEC",
			BaseOp: func(i int) error {
				v, _ := json.Marshal(i)
				_, err := raw.TxPipelined(ctx, func(p goredis.Pipeliner) error {
					p.HGet(ctx, rawSetKey, "pn")
					p.HSet(ctx, rawSetKey, "pn", v)
					return nil
				})
				if errors.Is(err, goredis.Nil) {
					err = nil // the first HGET of a missing field
				}
				return err
			},
		},
		{
			// The blind write a user can choose: no old value is read
			// (a WriteOnly, Muted handle: one cached Set, then Store = HSET).
			Name: "redis/set-writeonly",
			Op: func(i int) error {
				s := app.Subject("k-set-wo", krules.WriteOnly(), krules.Muted())
				if _, _, err := s.Set(ctx, "n", i); err != nil {
					return err
				}
				return s.Store(ctx)
			},
			Baseline: "go-redis HSET (json.Marshal)",
			BaseOp: func(i int) error {
				v, _ := json.Marshal(i)
				return raw.HSet(ctx, rawSetKey, "pn", v).Err()
			},
		},
		{
			// The blind NoCache write a user can choose: a WriteOnly,
			// NoCache, Muted handle's Set reads no old value (one HSET).
			Name: "redis/set-blind",
			Op: func(i int) error {
				_, _, err := blindSub.Set(ctx, "n", i)
				return err
			},
			Baseline: "go-redis HSET (json.Marshal)",
			BaseOp: func(i int) error {
				v, _ := json.Marshal(i)
				return raw.HSet(ctx, rawSetKey, "pn", v).Err()
			},
		},
		{
			Name: "redis/get-nocache",
			Op: func(int) error {
				_, err := getSub.Get(ctx, "n")
				return err
			},
			Baseline: "go-redis HGET + json.Unmarshal",
			BaseOp: func(int) error {
				text, err := raw.HGet(ctx, rawGetKey, "pn").Result()
				if err != nil {
					return err
				}
				var v any
				return json.Unmarshal([]byte(text), &v)
			},
		},
		{
			Name: "redis/update-func-c1",
			Op: func(int) error {
				_, _, err := funcSub.Set(ctx, "n", incFunc)
				return err
			},
			Baseline: "go-redis WATCH/HGET/MULTI-HSET-EXEC retry loop",
			BaseOp:   func(int) error { return rawWatch("raw-func") },
		},
		{
			Name:     "redis/update-func-c16",
			Op16:     func() error { _, _, err := funcSub.Set(ctx, "n", incFunc); return err },
			Baseline: "go-redis WATCH/HGET/MULTI-HSET-EXEC retry loop, 16 goroutines",
			BaseOp16: func() error { return rawWatch("raw-func") },
		},
		{
			Name:     "redis/inc-c16",
			Op16:     func() error { _, _, err := inc16Sub.Set(ctx, "n", krules.Inc(1)); return err },
			Baseline: "go-redis EVALSHA increment script, 16 goroutines",
			BaseOp16: func() error { return rawIncScript.Run(ctx, raw, []string{rawIncKey}, "pn", 1).Err() },
		},
		{
			Name: "redis/store-100",
			Op: func(i int) error {
				s := app.Subject("k-store-100-"+strconv.Itoa(i), krules.WriteOnly())
				for j, p := range props {
					if _, _, err := s.Set(ctx, p, values[j], krules.Muted()); err != nil {
						return err
					}
				}
				return s.Store(ctx)
			},
			Baseline: storeBaseline,
			BaseOp:   func(i int) error { return rawStore100("raw-store-100-" + strconv.Itoa(i)) },
		},
		{
			Name: "redis/store-100-backend",
			Op: func(i int) error {
				batch := storage.Batch{Puts: make([]storage.Write, len(props))}
				for j, p := range props {
					batch.Puts[j] = storage.Write{Key: storage.Key{Kind: storage.Default, Name: p}, Value: values[j]}
				}
				return backend.Store(ctx, "kb-store-100-"+strconv.Itoa(i), batch)
			},
			Baseline: storeBaseline,
			BaseOp:   func(i int) error { return rawStore100("rawb-store-100-" + strconv.Itoa(i)) },
		},
		{
			Name: "redis/load-100",
			Op: func(int) error {
				v, err := app.Subject("k-load-100").Get(ctx, "prop-0")
				if err == nil && v != int64(0) {
					err = fmt.Errorf("prop-0 = %v", v)
				}
				return err
			},
			Baseline: loadBaseline,
			BaseOp:   func(int) error { return rawLoad100() },
		},
		{
			Name: "redis/load-100-backend",
			Op: func(int) error {
				snap, err := backend.Load(ctx, "k-load-100")
				if err == nil && len(snap.Props) != len(props) {
					err = fmt.Errorf("loaded %d properties", len(snap.Props))
				}
				return err
			},
			Baseline: loadBaseline,
			BaseOp:   func(int) error { return rawLoad100() },
		},
	}
	return rows, done, nil
}
