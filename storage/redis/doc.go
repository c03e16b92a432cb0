// Package redis is the Redis storage backend of krules, built on
// github.com/redis/go-redis/v9 and data-compatible with Python KRules.
//
// # Getting started
//
// Open connects with a redis:// or rediss:// URL and owns the client:
//
//	backend, err := redis.Open(ctx, "redis://127.0.0.1:6379/0", redis.Config{Prefix: "myapp:"})
//	if err != nil {
//		return err
//	}
//	defer backend.Close()
//	app := krules.New(krules.WithStorage(backend))
//
//	user := app.Subject("user-123")
//	user.Set(ctx, "name", "John Doe")
//	user.Set(ctx, "age", 30)
//	err = user.Store(ctx) // one HSET
//
//	logins := app.Subject("user-123", krules.NoCache())
//	logins.Set(ctx, "logins", krules.Inc(1)) // one script call, atomic across processes
//
// New wraps a client you own and configure (Close leaves it open): a
// Sentinel-backed FailoverClient, a ClusterClient or a Ring work the same
// way. Set ContextTimeoutEnabled in its options so that context deadlines
// bound network waits (Open does this for you):
//
//	client := goredis.NewClusterClient(&goredis.ClusterOptions{
//		Addrs:                 []string{"10.0.0.1:6379", "10.0.0.2:6379"},
//		ContextTimeoutEnabled: true,
//	})
//	backend := redis.New(client, redis.Config{Prefix: "myapp:"})
//
// # Layout (shared with Python KRules)
//
// Each subject is one hash at "s:" + Config.Prefix + subject name. Default
// properties are fields "p" + name, extended properties "e" + name, and
// every value is its compact JSON text:
//
//	HGETALL s:myapp:user-123
//	1) "pname"    2) "\"John Doe\""
//	3) "page"     4) "30"
//	5) "eorigin"  6) "{\"source\":\"import\"}"
//
// A subject written by Python KRules (create_redis_storage with the same
// redis_prefix) loads here with the value model's Go types, and what this
// package writes loads in Python. Deleting the last property removes the
// hash; an empty subject and an unknown one are the same thing.
//
// # Operations and their cost
//
//	Load         one HGETALL (properties sorted by name)
//	Store        one HSET, one HDEL, or both in MULTI/EXEC
//	Get          one HGET
//	Set value    one script call (HGET + HSET: the old value comes back atomically)
//	Set Op       one script call computing Inc / Append / Max / Min on the server
//	Set func     HGET, the function in Go, a compare-and-set script; retried on conflict
//	SetBlind     one HINCRBY for an integer Inc (else as Set Op), no old value
//	Delete       one script call (HGET + HDEL)
//	Flush        one DEL
//	ExtProps     one script call returning only the "e" fields
//	List         SCAN ... MATCH ... TYPE hash
//
// A script call costs the server more than a bare command: on Redis 7.0 the
// value Set's script takes about 10 µs of server time against 2 µs for an
// HSET, which puts a NoCache Set of a value at 1.2-1.3x the latency of a raw
// HSET on a local server (the redis/set row of cmd/krules-bench). When the
// old value is not needed, write through a WriteOnly, Muted handle and Store:
// that is one bare HSET (the redis/set-writeonly and redis/store-100 rows);
// on a WriteOnly, NoCache handle a Set of a value is one HSET and an Inc one
// HINCRBY (Backend.SetBlind; the redis/set-blind row).
//
// Every command of one subject touches only that subject's key, so the
// backend runs unchanged on Redis Cluster (put a {hash tag} in subject names
// if you need several subjects in one slot for your own scripts). It needs
// Redis 6.0 or later (SCAN ... TYPE).
//
// Built-in operations never use cjson: numbers stay JSON text. Integer Inc
// is exact over the whole int64 range (HINCRBY); Max and Min of integers
// compare the decimal texts exactly; other arithmetic uses IEEE doubles and
// stores the shortest text that reads back as the same double. Append
// splices the JSON texts without re-encoding the stored list.
//
// # Update functions
//
// An update function (func(old any) any, krules.Update, ...) is Go code and
// cannot run in Redis, so Set reads the property, calls the function, and
// writes the result with a compare-and-set script that succeeds only when the
// property still holds the text that was read. Writers of other properties
// of the same subject never cause a retry (unlike Python's WATCH on the
// whole hash). On a conflict the script returns the current value and the
// function runs again on it, with jittered backoff, up to Config.MaxRetries
// (default 100) times; then Set returns an error wrapping
// storage.ErrConflict and has written nothing. The function may therefore
// run more than once: keep it free of side effects.
//
// Calls on the same property from one Backend take turns in the process, so
// they never conflict with each other, and a waiting call starts from the
// value its predecessor wrote, saving a read. Under contention this is far
// faster than Python KRules' WATCH/MULTI/EXEC loop (see the redis rows of
// cmd/krules-bench and BenchmarkUpdateFunc in this package).
//
// # Errors and faults
//
// Invalid values are refused with storage.ErrInvalidValue before anything is
// sent. Server and network errors are wrapped with the operation, subject and
// property in the message (test them with errors.Is / errors.As, e.g.
// context.DeadlineExceeded or goredis.Error). A script that writes is never
// re-sent by go-redis after a network error, so an Inc is never applied twice
// by a retry; its outcome is then unknown, as with any write whose reply was
// lost. To retry such a write safely, give it an idempotency key
// (krules.IdempotencyKey, storage.WithIdempotencyKey): the keyed script
// checks and writes a key record ("{s:<prefix><subject>}:idem:<key>", in
// the subject's Cluster slot, SET NX PX Config.IdempotencyWindow, default
// 24h) in the same call as the write, so a retry after a lost reply returns
// the first result and writes nothing. Scripts are run with EVALSHA and
// loaded again automatically after a server restart or failover.
//
// # Logging
//
// go-redis logs some events itself, such as "connection pool: failed to
// dial after 5 attempts" during an outage. The first New or Open routes
// those lines to slog.Default() at Debug level (dropped by the default
// handler) instead of go-redis's own stderr logger; SetLogger sends them to
// another logger at Warn level (component=go-redis), or discards them. The
// go-redis logger is global to the process (see SetLogger).
package redis
