package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/storage"
)

// Default values of [Config].
const (
	// DefaultMaxRetries is the default bound on the retries of an update
	// function after a conflict.
	DefaultMaxRetries = 100
	// DefaultMinBackoff is the default upper bound of the first random wait
	// between retries of an update function.
	DefaultMinBackoff = 50 * time.Microsecond
	// DefaultMaxBackoff is the default cap of the random wait between
	// retries of an update function.
	DefaultMaxBackoff = 5 * time.Millisecond
)

// Config tunes a [Backend]. The zero value is ready to use and gives the
// layout and key names of Python KRules with an empty prefix.
type Config struct {
	// Prefix goes between "s:" and the subject name: subject "user-1" with
	// Prefix "myapp:" lives in the hash "s:myapp:user-1". It is the
	// redis_prefix of Python's create_redis_storage. Default "".
	Prefix string

	// MaxRetries bounds how many times an update function is retried after
	// another writer changed the property between its read and its write.
	// When the bound is exhausted Set returns an error wrapping
	// storage.ErrConflict and writes nothing. 0 means DefaultMaxRetries (100);
	// a negative value means no retry at all (one attempt).
	MaxRetries int

	// MinBackoff and MaxBackoff shape the waits between retries of an update
	// function. A failed compare-and-set returns the current value, so the
	// retry after it runs at once; when that one fails too the writer waits a
	// random duration in [0, min(MaxBackoff, MinBackoff·2^n)) ("full
	// jitter"; n counts the earlier waits of the same call), then tries
	// again, and so on alternately. Zero values mean DefaultMinBackoff
	// (50µs) and DefaultMaxBackoff (5ms).
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// ChangeFeed turns on the change feed (see feed.go and package feed):
	// every committed effective change of a default property, and every
	// Flush, also appends a change record to the stream FeedKey() in the
	// same script call. It needs standalone Redis, or on Redis Cluster a
	// Prefix with a hash tag ("{myapp}:") so that every key is in one slot.
	// Default false.
	ChangeFeed bool
	// IdempotencyWindow is how long an idempotency key is remembered (see
	// Backend.IdempotencyWindow). 0 means storage.DefaultIdempotencyWindow
	// (24 hours).
	IdempotencyWindow time.Duration
}

func (c Config) withDefaults() Config {
	switch {
	case c.MaxRetries == 0:
		c.MaxRetries = DefaultMaxRetries
	case c.MaxRetries < 0:
		c.MaxRetries = 0
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	return c
}

// Backend stores subjects in Redis with the layout of Python KRules. It is
// safe for concurrent use by any number of goroutines and processes. Create
// it with [New] or [Open].
type Backend struct {
	client goredis.UniversalClient
	owned  bool
	cfg    Config
	closed atomic.Bool
	locks  keyLocks

	// feedKey and seqKeyName are FeedKey() and seqKey(), built once, and
	// boxed once for argument lists.
	feedKey, seqKeyName   string
	feedKeyArg, seqKeyArg any

	// watch selects the WATCH/MULTI/EXEC design for update functions instead
	// of read + compare-and-set; kept for the measurement in the tests.
	watch bool
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// New returns a Backend on a client the caller owns: Close does not close it.
// Unless [SetLogger] was called, the first New or Open keeps go-redis's own
// log lines off stderr (see SetLogger).
// Any go-redis client works (Client, ClusterClient, Ring, FailoverClient).
//
// Enable ContextTimeoutEnabled in the client's options so that a context
// deadline bounds every network wait; otherwise go-redis applies its own
// read and write timeouts (3s by default) and ignores the deadline while
// blocked on a socket.
//
// The first New or Open routes go-redis's own log lines to slog.Default()
// unless SetLogger was called (see SetLogger: process-wide).
func New(client goredis.UniversalClient, cfg Config) *Backend {
	installDefaultLogger()
	b := &Backend{client: client, cfg: cfg.withDefaults()}
	b.feedKey, b.seqKeyName = "f:"+b.cfg.Prefix+"changes", "f:"+b.cfg.Prefix+"seq"
	b.feedKeyArg, b.seqKeyArg = b.feedKey, b.seqKeyName
	return b
}

// Open connects to the Redis at url (redis://[user:pass@]host:port/db or
// rediss:// for TLS; see goredis.ParseURL for the query options), checks the
// connection with PING and returns a Backend that owns the client: Close
// closes it. Context deadlines bound every call of the returned backend.
func Open(ctx context.Context, url string, cfg Config) (*Backend, error) {
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis: open: %w", err)
	}
	opts.ContextTimeoutEnabled = true
	installDefaultLogger() // before the first dial
	client := goredis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redis: open %s: %w", opts.Addr, err)
	}
	b := New(client, cfg)
	b.owned = true
	return b, nil
}

// Close makes every later call fail with storage.ErrClosed and, when the
// Backend was made by Open, closes its client. Calls in flight finish.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	if b.owned {
		return b.client.Close()
	}
	return nil
}

// Client returns the go-redis client the Backend uses.
func (b *Backend) Client() goredis.UniversalClient { return b.client }

// Key returns the name of the Redis hash that holds subject:
// "s:" + Config.Prefix + subject.
func (b *Backend) Key(subject string) string { return "s:" + b.cfg.Prefix + subject }

// field returns the hash field of a property: 'p' or 'e' then the name.
func field(k storage.Key) string { return string(rune(k.Kind)) + k.Name }

// check refuses calls after Close, with a done context or an invalid kind.
func (b *Backend) check(ctx context.Context, k storage.Key) error {
	if err := b.open(ctx); err != nil {
		return err
	}
	if !k.Kind.Valid() {
		return fmt.Errorf("redis: %w: unknown property kind %v", storage.ErrInvalidName, k.Kind)
	}
	return nil
}

// open refuses calls after Close or with a done context.
func (b *Backend) open(ctx context.Context) error {
	if b.closed.Load() {
		return fmt.Errorf("redis: %w", storage.ErrClosed)
	}
	return ctx.Err()
}

// propErr wraps err with the operation, property and subject.
func propErr(op, subject string, k storage.Key, err error) error {
	kind := "property"
	if k.Kind == storage.Extended {
		kind = "extended property"
	}
	return fmt.Errorf("redis: %s %s %q of subject %q: %w", op, kind, k.Name, subject, err)
}

// decode reads a stored value (storage.Marshal's text, or Python KRules'
// json.dumps text) into the value model. Text outside the model becomes a
// storage.Invalid (tolerant loads, see storage.Invalid); it never fails.
func decode(text string) any { return storage.UnmarshalProperty([]byte(text)) }

// Load implements storage.Backend with one HGETALL. Redis keeps no insertion
// order for large hashes, so properties come sorted by name. Fields that are
// not in the KRules layout (no 'p' or 'e' prefix) are ignored.
func (b *Backend) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	if err := b.open(ctx); err != nil {
		return storage.Snapshot{}, err
	}
	m, err := b.client.HGetAll(ctx, b.Key(subject)).Result()
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("redis: load subject %q: %w", subject, err)
	}
	var snap storage.Snapshot
	for f, text := range m {
		if f == "" {
			continue
		}
		kind, name := storage.Kind(f[0]), f[1:]
		if !kind.Valid() || name == "" {
			continue // not a property field of this layout
		}
		p := storage.LoadedProperty(name, []byte(text))
		if kind == storage.Default {
			snap.Props = append(snap.Props, p)
		} else {
			snap.Ext = append(snap.Ext, p)
		}
	}
	sortProps(snap.Props)
	sortProps(snap.Ext)
	return snap, nil
}

func sortProps(ps []storage.Property) {
	slices.SortFunc(ps, func(a, b storage.Property) int { return strings.Compare(a.Name, b.Name) })
}

// Store implements storage.Backend: HDEL of the deletes then HSET of the
// puts, in one MULTI/EXEC transaction when both are present (a single HSET or
// HDEL is atomic on its own). Every value is encoded before anything is sent.
func (b *Backend) Store(ctx context.Context, subject string, batch storage.Batch) error {
	if err := b.open(ctx); err != nil {
		return err
	}
	var dels []string
	if len(batch.Deletes) > 0 {
		dels = make([]string, len(batch.Deletes))
		for i, k := range batch.Deletes {
			if err := b.check(ctx, k); err != nil {
				return err
			}
			dels[i] = field(k)
		}
	}
	var puts []any
	if len(batch.Puts) > 0 {
		puts = make([]any, 0, 2*len(batch.Puts))
		for _, w := range batch.Puts {
			if err := b.check(ctx, w.Key); err != nil {
				return err
			}
			text, err := storage.Marshal(w.Value)
			if err != nil {
				return propErr("store", subject, w.Key, err)
			}
			puts = append(puts, field(w.Key), text)
		}
	}
	key := b.Key(subject)
	var err error
	switch {
	case dels == nil && puts == nil:
		return nil
	case b.cfg.ChangeFeed && batch.HasDefault(): // change feed hook
		return b.feedStore(ctx, subject, dels, puts)
	case dels == nil:
		err = b.client.HSet(ctx, key, puts...).Err()
	case puts == nil:
		err = b.client.HDel(ctx, key, dels...).Err()
	default:
		_, err = b.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
			p.HDel(ctx, key, dels...)
			p.HSet(ctx, key, puts...)
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("redis: store subject %q (%d deletes, %d puts): %w", subject, len(dels), len(puts)/2, err)
	}
	return nil
}

// Get implements storage.Backend with one HGET.
func (b *Backend) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(ctx, k); err != nil {
		return nil, err
	}
	text, err := b.client.HGet(ctx, b.Key(subject), field(k)).Result()
	if err != nil {
		if errors.Is(err, goredis.Nil) {
			return nil, propErr("get", subject, k, storage.ErrNotFound)
		}
		return nil, propErr("get", subject, k, err)
	}
	v, err := storage.StoredValue(decode(text))
	if err != nil {
		return nil, propErr("get", subject, k, err)
	}
	return v, nil
}

// Delete implements storage.Backend: one script call reads and removes the
// field atomically. Deleting the last property removes the hash, so the
// subject no longer exists (as in Python KRules).
func (b *Backend) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(ctx, k); err != nil {
		return nil, err
	}
	res, err := b.runWrite(ctx, deleteScript, subject, k, field(k)) // change feed hook
	if err != nil {
		if errors.Is(err, goredis.Nil) {
			return nil, propErr("delete", subject, k, storage.ErrNotFound)
		}
		return nil, propErr("delete", subject, k, err)
	}
	text, _ := res.(string)
	return decode(text), nil
}

// Flush implements storage.Backend with one DEL.
func (b *Backend) Flush(ctx context.Context, subject string) error {
	if err := b.open(ctx); err != nil {
		return err
	}
	if b.cfg.ChangeFeed { // change feed hook
		return b.feedFlush(ctx, subject)
	}
	if err := b.client.Del(ctx, b.Key(subject)).Err(); err != nil {
		return fmt.Errorf("redis: flush subject %q: %w", subject, err)
	}
	return nil
}

// ExtProps implements storage.Backend: a script returns only the
// 'e' fields of the hash, atomically and in one round trip. Properties come
// sorted by name.
func (b *Backend) ExtProps(ctx context.Context, subject string) ([]storage.Property, error) {
	if err := b.open(ctx); err != nil {
		return nil, err
	}
	res, err := extScript.run(ctx, b.client, false, b.Key(subject))
	if err != nil {
		return nil, fmt.Errorf("redis: extended properties of subject %q: %w", subject, err)
	}
	flat, _ := res.([]any)
	out := make([]storage.Property, 0, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		f, _ := flat[i].(string)
		text, _ := flat[i+1].(string)
		out = append(out, storage.LoadedProperty(strings.TrimPrefix(f, "e"), []byte(text)))
	}
	sortProps(out)
	return out, nil
}

// Capabilities implements storage.Backend: persistent (as configured on the
// server), shared between processes, built-in operations server-side.
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{Persistent: true, Shared: true, ServerSideOps: true}
}

// Set implements storage.Backend.
//
//   - A plain value is written by one script call that returns the previous
//     value atomically.
//   - A built-in operation (Inc, Append, Max, Min) runs in one script call
//     on the server, without retries. Integer Inc is exact over the whole
//     int64 range (HINCRBY); a sum outside it fails with storage.ErrOverflow,
//     nothing written; Max and Min of integers compare exactly, other
//     arithmetic uses IEEE doubles (integers exact up to 2^53). A stored
//     value of the wrong type gives an error wrapping storage.ErrInvalidValue.
//   - An update function runs optimistically: read the field, call the
//     function in Go, then write with a compare-and-set script that succeeds
//     only when the field still holds the text that was read. Writes to other
//     properties of the subject never cause a retry. On a conflict the script
//     returns the current value and the function is called again with it
//     (with jittered waits as described at Config.MinBackoff), up to
//     Config.MaxRetries times; then the error wraps storage.ErrConflict and
//     nothing was written by this call. The function may therefore run more
//     than once and must be free of side effects. When it returns the value
//     it was given, nothing is written. Update functions of one property
//     from one Backend take turns, so they only conflict with writers
//     elsewhere, and a waiting call starts from the value written by the
//     one before it (verified by the compare-and-set, so never wrong).
func (b *Backend) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (any, any, error) {
	if err := b.check(ctx, k); err != nil {
		return nil, nil, err
	}
	switch {
	case m.Op != nil:
		return b.setOp(ctx, subject, k, m.Op)
	case m.Func != nil:
		if b.watch && !b.cfg.ChangeFeed { // change feed hook: the WATCH design writes no record
			return b.updateWatch(ctx, subject, k, m)
		}
		return b.update(ctx, subject, k, m)
	}
	text, err := storage.Marshal(m.Value)
	if err != nil {
		return nil, nil, propErr("set", subject, k, err)
	}
	var res any
	if _, keyed := storage.IdempotencyKeyFrom(ctx); !keyed && b.cfg.ChangeFeed && k.Kind == storage.Default {
		res, err = b.feedSet(ctx, subject, k, text) // change feed hook, the hot path
	} else {
		res, err = b.runWrite(ctx, setScript, subject, k, field(k), text) // change feed hook
	}
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, nil, propErr("set", subject, k, err)
	}
	var old any
	if s, ok := res.(string); ok {
		old = decode(s)
	}
	return m.Value, old, nil
}

// opNames are the script's operation names, boxed once (an argument list of
// go-redis is []any).
var opNames = [...]any{storage.OpInc: "inc", storage.OpAppend: "append", storage.OpMax: "max", storage.OpMin: "min"}

func (b *Backend) setOp(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, any, error) {
	if op.Kind < storage.OpInc || op.Kind > storage.OpMin {
		return nil, nil, propErr("set", subject, k, fmt.Errorf("%w: unknown operation %v", storage.ErrInvalidValue, op.Kind))
	}
	// Validate the argument (a hand-built Op may carry anything): applying
	// it to a missing value checks its type without touching the store.
	if _, err := op.Apply(nil, false); err != nil {
		return nil, nil, propErr(op.Kind.String(), subject, k, err)
	}
	arg, err := storage.Marshal(op.Arg)
	if err != nil {
		return nil, nil, propErr(op.Kind.String(), subject, k, err)
	}
	res, err := b.runWrite(ctx, opScript, subject, k, field(k), opNames[op.Kind], arg) // change feed hook
	if err != nil {
		return nil, nil, propErr(op.Kind.String(), subject, k, err)
	}
	reply, _ := res.([]any)
	status := ""
	if len(reply) > 0 {
		status, _ = reply[0].(string)
	}
	switch status {
	case "ok":
	case "type":
		what, want := "", "number"
		if len(reply) > 1 {
			what, _ = reply[1].(string)
		}
		if op.Kind == storage.OpAppend {
			want = "list"
		}
		return nil, nil, propErr(op.Kind.String(), subject, k,
			fmt.Errorf("%w: stored value is %s, not a %s", storage.ErrInvalidValue, what, want))
	case "check":
		return b.update(ctx, subject, k, storage.Mutation{Op: op})
	case "invalid":
		what := ""
		if len(reply) > 1 {
			what, _ = reply[1].(string)
		}
		return nil, nil, propErr(op.Kind.String(), subject, k, fmt.Errorf("%w: stored value is %s", storage.ErrInvalidValue, what))
	case "overflow":
		return nil, nil, propErr(op.Kind.String(), subject, k, storage.ErrOverflow)
	case "range":
		return nil, nil, propErr(op.Kind.String(), subject, k, fmt.Errorf("%w: result out of the float64 range", storage.ErrInvalidValue))
	default:
		return nil, nil, propErr(op.Kind.String(), subject, k, fmt.Errorf("unexpected script reply %v", res))
	}
	var old any
	exists := false
	if len(reply) > 1 {
		if s, ok := reply[1].(string); ok {
			exists = true
			old = decode(s)
		}
	}
	var nv any
	if len(reply) > 2 {
		s, _ := reply[2].(string)
		nv, err = storage.StoredValue(decode(s))
	} else {
		// append: the server spliced the texts; compute the same list here.
		nv, err = op.Apply(storage.Clone(old), exists)
	}
	if err != nil {
		return nil, nil, propErr(op.Kind.String(), subject, k, err)
	}
	return nv, old, nil
}

// update runs an update function with read + compare-and-set. Updates of
// the same property from this process take turns (see keyLocks), so they
// never conflict with each other, and each starts from the text its
// predecessor wrote; the compare-and-set still guards against every other
// writer.
func (b *Backend) update(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (any, any, error) {
	key, f := b.Key(subject), field(k)
	lockName := key + "\x00" + f
	l, err := b.locks.acquire(ctx, lockName)
	if err != nil {
		return nil, nil, propErr("update", subject, k, err)
	}
	defer b.locks.release(lockName, l)

	// fresh: cur was read from Redis during this call (not a hint), so a
	// decision taken without writing (unchanged value, function error)
	// reflects a value that was stored while the call ran.
	cur, exists, fresh := l.hint, l.hintExists, false
	l.hintOK, fresh = false, !l.hintOK
	immediate, sleeps := true, 0
	if fresh {
		if cur, exists, err = b.read(ctx, key, f); err != nil {
			return nil, nil, propErr("update", subject, k, err)
		}
	}
	for attempt := 0; ; attempt++ {
		old, nv, text, err := apply(m, cur, exists)
		if err == nil && exists && text == cur && !fresh {
			err = errStale // must confirm against Redis before returning
		}
		if err != nil {
			if fresh {
				return nil, nil, propErr("update", subject, k, err)
			}
			// Decided on a hint: read the stored value and decide again.
			if cur, exists, err = b.read(ctx, key, f); err != nil {
				return nil, nil, propErr("update", subject, k, err)
			}
			fresh = true
			attempt--
			continue
		}
		if exists && text == cur {
			l.hint, l.hintExists, l.hintOK = cur, true, true
			return nv, old, nil // unchanged: nothing to write
		}
		flag := "0"
		if exists {
			flag = "1"
		}
		res, err := b.runWrite(ctx, casScript, subject, k, f, flag, cur, text) // change feed hook
		if err != nil {
			return nil, nil, propErr("update", subject, k, err)
		}
		reply, conflict := res.([]any)
		if !conflict {
			l.hint, l.hintExists, l.hintOK = text, true, true
			return nv, old, nil
		}
		cur, exists, fresh = "", false, true
		if len(reply) > 0 {
			cur, exists = reply[0].(string)
		}
		l.hint, l.hintExists, l.hintOK = cur, exists, true
		if attempt >= b.cfg.MaxRetries {
			return nil, nil, propErr("update", subject, k,
				fmt.Errorf("%w (gave up after %d attempts)", storage.ErrConflict, attempt+1))
		}
		// The failed write returned the current value: retry at once with
		// it. Only when that retry fails too, wait; the attempt after the
		// wait (probably on a stale value by then) is again followed by an
		// immediate one. Sleeping before every retry would starve this
		// writer whenever another process writes continuously, as the value
		// it holds would always be stale by the time it wakes.
		if !immediate {
			if err := b.backoff(ctx, sleeps); err != nil {
				return nil, nil, propErr("update", subject, k, err)
			}
			sleeps++
		}
		immediate = !immediate
	}
}

var errStale = errors.New("decided on a cached value")

// read returns the text of one field (exists false when missing).
func (b *Backend) read(ctx context.Context, key, f string) (string, bool, error) {
	cur, err := b.client.HGet(ctx, key, f).Result()
	if err != nil {
		if errors.Is(err, goredis.Nil) {
			return "", false, nil
		}
		return "", false, err
	}
	return cur, true, nil
}

// apply decodes the stored text, runs the mutation on a private copy and
// encodes the result.
func apply(m storage.Mutation, cur string, exists bool) (old, nv any, text string, err error) {
	if exists {
		old = decode(cur)
	}
	nv, err = m.Apply(storage.Clone(old), exists)
	if err != nil {
		return nil, nil, "", err
	}
	t, err := storage.Marshal(nv)
	if err != nil {
		return nil, nil, "", err
	}
	return old, nv, string(t), nil
}

// backoff waits a random duration in [0, min(MaxBackoff, MinBackoff·2^n)),
// n being the number of earlier waits of the same update.
func (b *Backend) backoff(ctx context.Context, n int) error {
	ceil := b.cfg.MaxBackoff
	if n < 30 {
		if d := b.cfg.MinBackoff << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	t := time.NewTimer(rand.N(ceil) + 1)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// updateWatch runs an update function with WATCH/MULTI/EXEC, the design of
// Python KRules. It is slower under contention than update (see the package
// tests) and kept only to measure the two against each other.
func (b *Backend) updateWatch(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (any, any, error) {
	key, f := b.Key(subject), field(k)
	for attempt := 0; ; attempt++ {
		var old, nv any
		err := b.client.Watch(ctx, func(tx *goredis.Tx) error {
			cur, err := tx.HGet(ctx, key, f).Result()
			exists := err == nil
			if err != nil && !errors.Is(err, goredis.Nil) {
				return err
			}
			var text string
			old, nv, text, err = apply(m, cur, exists)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p goredis.Pipeliner) error {
				p.HSet(ctx, key, f, text)
				return nil
			})
			return err
		}, key)
		if err == nil {
			return nv, old, nil
		}
		if !errors.Is(err, goredis.TxFailedErr) {
			return nil, nil, propErr("update", subject, k, err)
		}
		if attempt >= b.cfg.MaxRetries {
			return nil, nil, propErr("update", subject, k,
				fmt.Errorf("%w (gave up after %d attempts)", storage.ErrConflict, attempt+1))
		}
		if err := b.backoff(ctx, attempt); err != nil {
			return nil, nil, propErr("update", subject, k, err)
		}
	}
}
