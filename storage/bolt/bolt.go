package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"sync/atomic"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/krules-go/krules/storage"
)

// DefaultTimeout is how long Open waits for the file lock when
// Config.Timeout is zero.
const DefaultTimeout = time.Second

// DefaultFileMode is the permission of a file created by Open when
// Config.FileMode is zero.
const DefaultFileMode os.FileMode = 0o600

// ErrLocked reports that another process (or another Backend in this process)
// holds the database file open. Test it with errors.Is.
var ErrLocked = errors.New("bolt: database file is locked by another process")

var (
	// metaBucket starts with NUL, which no subject name can contain.
	metaBucket = []byte("\x00meta")
	// recordKey is the key of the subject record inside a subject's bucket.
	recordKey   = []byte("r")
	formatKey   = []byte("format")
	formatValue = []byte("krules-bolt-1")
)

// Config tunes Open. The zero value is a durable store with the defaults
// stated on each field.
type Config struct {
	// Timeout bounds the wait for the exclusive file lock when another
	// process has the file open. Zero means DefaultTimeout (1s); a negative
	// value fails at once. Open then returns an error wrapping ErrLocked.
	Timeout time.Duration

	// NoSync skips the fsync after each commit. Writes become much faster,
	// and a crash of this process still loses nothing, but a crash of the
	// operating system or a power cut may lose recent writes or corrupt the
	// file. Default false (every Set, Delete, Store and Flush is durable when
	// it returns).
	NoSync bool

	// FileMode is the permission of a newly created file. Zero means
	// DefaultFileMode (0600).
	FileMode os.FileMode

	// IdempotencyWindow is how long an idempotency key is remembered (see
	// Backend.IdempotencyWindow). 0 means storage.DefaultIdempotencyWindow
	// (24 hours).
	IdempotencyWindow time.Duration

	// ChangeFeed turns on the change feed (see package feed): every write
	// transaction that changes a default property (Set, Delete, Store) or
	// flushes a subject also writes a change record (storage.Change) into a
	// feed bucket of the same file, in the same transaction, and the
	// Backend implements storage.FeedStore for a feed.Relay running in
	// this process. Default false: no record, and the file's subject layout
	// is the same either way.
	ChangeFeed bool
}

// Backend is a storage.Backend persisted in one bbolt file. Create it with
// Open and release it with Close. It is safe for concurrent use by many
// goroutines; see the package documentation for its limits.
type Backend struct {
	db     *bbolt.DB
	path   string
	closed atomic.Bool

	idemWindow time.Duration
	idemWrites atomic.Uint64

	feed *feedState // nil: Config.ChangeFeed off
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// Open opens (creating it if needed) the bbolt file at path. Only one
// process can have the file open: when another one holds it, Open waits
// cfg.Timeout and returns an error wrapping ErrLocked.
func Open(path string, cfg Config) (*Backend, error) {
	if path == "" {
		return nil, errors.New("bolt: empty file path")
	}
	timeout := cfg.Timeout
	switch {
	case timeout == 0:
		timeout = DefaultTimeout
	case timeout < 0:
		timeout = time.Nanosecond // bbolt: zero would wait forever
	}
	mode := cfg.FileMode
	if mode == 0 {
		mode = DefaultFileMode
	}
	db, err := bbolt.Open(path, mode, &bbolt.Options{
		Timeout:      timeout,
		NoSync:       cfg.NoSync,
		FreelistType: bbolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s (waited %v; only one process may open a bolt file at a time)", ErrLocked, path, timeout)
		}
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		switch f := meta.Get(formatKey); {
		case f == nil:
			if err := meta.Put(formatKey, formatValue); err != nil {
				return err
			}
		case !bytes.Equal(f, formatValue):
			return fmt.Errorf("unsupported data format %q (want %q)", f, formatValue)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	b := &Backend{db: db, path: path, idemWindow: cfg.IdempotencyWindow}
	if cfg.ChangeFeed {
		b.feed = newFeedState()
	}
	return b, nil
}

// Path returns the file the backend was opened on.
func (b *Backend) Path() string { return b.path }

// Close releases the file and its lock. Calls after Close fail with an error
// wrapping storage.ErrClosed; closing twice is not an error.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("bolt: close %s: %w", b.path, err)
	}
	return nil
}

// Capabilities implements storage.Backend: persistent, not shared between
// processes (the file is locked by one process), operations computed inside
// the single write transaction (no optimistic retries).
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{Persistent: true, ServerSideOps: true}
}

func (b *Backend) check(ctx context.Context) error {
	if b.closed.Load() {
		return fmt.Errorf("bolt: %s: %w", b.path, storage.ErrClosed)
	}
	return ctx.Err()
}

func checkKind(k storage.Kind) error {
	if !k.Valid() {
		return fmt.Errorf("bolt: %w: unknown property kind %v", storage.ErrInvalidName, k)
	}
	return nil
}

// checkSubject refuses names a write cannot use: invalid names (a NUL byte
// could reach the meta bucket) and names over bbolt's key size limit.
func checkSubject(subject string) error {
	if err := storage.ValidateName("subject", subject); err != nil {
		return fmt.Errorf("bolt: %w", err)
	}
	if len(subject) > bbolt.MaxKeySize {
		return fmt.Errorf("bolt: %w: subject name longer than %d bytes", storage.ErrInvalidName, bbolt.MaxKeySize)
	}
	return nil
}

// txErr maps bbolt errors raised by a closed database to storage.ErrClosed.
func (b *Backend) txErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("bolt: %s: %w", b.path, storage.ErrClosed)
	}
	return err
}

// subjects is the file's set of subjects inside one transaction: a
// top-level bucket per subject, named by the subject, holding its record.
type subjects struct{ tx *bbolt.Tx }

// Get returns the record of subject (nil when unknown); it aliases the
// mmap and is valid only inside the transaction.
func (s subjects) Get(subject []byte) []byte {
	bk := s.tx.Bucket(subject)
	if bk == nil {
		return nil
	}
	return bk.Get(recordKey)
}

// Put stores the record of subject, creating its bucket.
func (s subjects) Put(subject, record []byte) error {
	bk, err := s.tx.CreateBucketIfNotExists(subject)
	if err != nil {
		return err
	}
	return bk.Put(recordKey, record)
}

// Delete removes subject; an unknown subject is not an error.
func (s subjects) Delete(subject []byte) error {
	if err := s.tx.DeleteBucket(subject); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
		return err
	}
	return nil
}

// Cursor iterates the top-level names: the subjects, and the meta bucket
// (which sorts first and starts with NUL).
func (s subjects) Cursor() *bbolt.Cursor { return s.tx.Cursor() }

func (b *Backend) view(fn func(bk subjects) error) error {
	return b.txErr(b.db.View(func(tx *bbolt.Tx) error { return fn(subjects{tx}) }))
}

func (b *Backend) update(fn func(bk subjects) error) error {
	return b.txErr(b.db.Update(func(tx *bbolt.Tx) error { return fn(subjects{tx}) }))
}

func corrupt(subject string, err error) error {
	return fmt.Errorf("bolt: subject %q: %w", subject, err)
}

// unmarshal decodes a stored value tolerantly: text outside the value model
// becomes a storage.Invalid (see storage.Invalid).
func unmarshal(val []byte) any { return storage.UnmarshalProperty(val) }

func props(es []entry) []storage.Property {
	out := make([]storage.Property, len(es))
	for i, e := range es {
		out[i] = storage.LoadedProperty(string(e.name), e.val)
	}
	return out
}

// Load implements storage.Backend: one read transaction, one key.
func (b *Backend) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	if err := b.check(ctx); err != nil {
		return storage.Snapshot{}, err
	}
	var snap storage.Snapshot
	err := b.view(func(bk subjects) error {
		r, err := decodeRecord(bk.Get([]byte(subject)))
		if err != nil {
			return corrupt(subject, err)
		}
		snap.Props, snap.Ext = props(r.sets[0]), props(r.sets[1])
		return nil
	})
	if err != nil {
		return storage.Snapshot{}, err
	}
	return snap, nil
}

// ExtProps implements storage.Backend.
func (b *Backend) ExtProps(ctx context.Context, subject string) ([]storage.Property, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	var out []storage.Property
	err := b.view(func(bk subjects) error {
		r, err := decodeRecord(bk.Get([]byte(subject)))
		if err != nil {
			return corrupt(subject, err)
		}
		out = props(r.sets[1])
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func notFound(subject string, k storage.Key) error {
	return fmt.Errorf("bolt: %s property %q of subject %q: %w", k.Kind, k.Name, subject, storage.ErrNotFound)
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	if err := checkKind(k.Kind); err != nil {
		return nil, err
	}
	var v any
	err := b.view(func(bk subjects) error {
		r, err := decodeRecord(bk.Get([]byte(subject)))
		if err != nil {
			return corrupt(subject, err)
		}
		s := kindIndex(k.Kind == storage.Extended)
		i := r.find(s, k.Name)
		if i < 0 {
			return notFound(subject, k)
		}
		if v, err = storage.StoredValue(unmarshal(r.sets[s][i].val)); err != nil {
			return fmt.Errorf("bolt: %s property %q of subject %q: %w", k.Kind, k.Name, subject, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Set implements storage.Backend. The read, the mutation and the write run in
// one bbolt write transaction; bbolt serialises writers, so an update
// function runs exactly once and sees the latest value. It runs while the
// database's single write lock is held: keep it short.
func (b *Backend) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (newValue, oldValue any, err error) {
	if err := b.check(ctx); err != nil {
		return nil, nil, err
	}
	if err := checkKind(k.Kind); err != nil {
		return nil, nil, err
	}
	if err := checkSubject(subject); err != nil {
		return nil, nil, err
	}
	// A plain value is encoded before taking the write lock.
	var plain []byte
	if m.Func == nil && m.Op == nil {
		if plain, err = storage.Marshal(m.Value); err != nil {
			return nil, nil, fmt.Errorf("bolt: set %q of subject %q: %w", k.Name, subject, err)
		}
	}
	key := []byte(subject)
	s := kindIndex(k.Kind == storage.Extended)
	fm, err := b.metas(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("bolt: set %q of subject %q: %w", k.Name, subject, err)
	}
	replayed, recorded := false, false
	err = b.update(func(bk subjects) error {
		ic, replay, rnv, rold, err := idemBegin(ctx, bk.tx, subject, "set", k, &m)
		if err != nil || replay {
			newValue, oldValue, replayed = rnv, rold, replay
			return err
		}
		r, err := decodeRecord(bk.Get(key))
		if err != nil {
			return corrupt(subject, err)
		}
		i := r.find(s, k.Name)
		var old any
		if i >= 0 {
			old = unmarshal(r.sets[s][i].val)
		}
		enc := plain
		nv := m.Value
		if plain == nil {
			arg := old
			if m.Func != nil {
				arg = storage.Clone(old) // the function may mutate its argument
			}
			if nv, err = m.Apply(arg, i >= 0); err != nil {
				return fmt.Errorf("bolt: set %q of subject %q: %w", k.Name, subject, err)
			}
			if enc, err = storage.Marshal(nv); err != nil {
				return fmt.Errorf("bolt: set %q of subject %q: %w", k.Name, subject, err)
			}
		}
		if fm != nil && k.Kind == storage.Default && !fm.base.muted && (i < 0 || !bytes.Equal(r.sets[s][i].val, enc)) {
			var oldEnc []byte
			if i >= 0 {
				oldEnc = r.sets[s][i].val
			}
			if err := addRecord(bk.tx, subject, fm.base, feedRec{typ: 'c', prop: k.Name, old: oldEnc, new: enc}); err != nil {
				return fmt.Errorf("bolt: set %q of subject %q: change record: %w", k.Name, subject, err)
			}
			recorded = true
		}
		if i >= 0 {
			r.sets[s][i].val = enc
		} else {
			r.sets[s] = append(r.sets[s], entry{name: []byte(k.Name), val: enc})
		}
		if err := bk.Put(key, r.encode()); err != nil {
			return fmt.Errorf("bolt: set %q of subject %q: %w", k.Name, subject, err)
		}
		if err := ic.commit(bk.tx, b, nv, old); err != nil {
			return fmt.Errorf("bolt: set %q of subject %q: %w", k.Name, subject, err)
		}
		newValue, oldValue = nv, old
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if recorded {
		b.feed.notify()
	}
	if replayed {
		storage.MarkReplayed(ctx)
	}
	return newValue, oldValue, nil
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	if err := checkKind(k.Kind); err != nil {
		return nil, err
	}
	key := []byte(subject)
	var old any
	fm, err := b.metas(ctx)
	if err != nil {
		return nil, fmt.Errorf("bolt: delete %q of subject %q: %w", k.Name, subject, err)
	}
	replayed, recorded := false, false
	err = b.update(func(bk subjects) error {
		ic, replay, _, rold, err := idemBegin(ctx, bk.tx, subject, "delete", k, nil)
		if err != nil || replay {
			old, replayed = rold, replay
			return err
		}
		r, err := decodeRecord(bk.Get(key))
		if err != nil {
			return corrupt(subject, err)
		}
		s := kindIndex(k.Kind == storage.Extended)
		i := r.find(s, k.Name)
		if i < 0 {
			return notFound(subject, k)
		}
		old = unmarshal(r.sets[s][i].val)
		if fm != nil && k.Kind == storage.Default && !fm.base.muted {
			if err := addRecord(bk.tx, subject, fm.base, feedRec{typ: 'd', prop: k.Name, old: r.sets[s][i].val}); err != nil {
				return fmt.Errorf("bolt: delete %q of subject %q: change record: %w", k.Name, subject, err)
			}
			recorded = true
		}
		r.del(s, k.Name)
		if err := bk.Put(key, r.encode()); err != nil {
			return fmt.Errorf("bolt: delete %q of subject %q: %w", k.Name, subject, err)
		}
		if err := ic.commit(bk.tx, b, nil, old); err != nil {
			return fmt.Errorf("bolt: delete %q of subject %q: %w", k.Name, subject, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if recorded {
		b.feed.notify()
	}
	if replayed {
		storage.MarkReplayed(ctx)
	}
	return old, nil
}

// Store implements storage.Backend: the whole batch is one write
// transaction, so it is applied entirely or not at all, and it is durable
// when Store returns (unless Config.NoSync).
func (b *Backend) Store(ctx context.Context, subject string, batch storage.Batch) error {
	if err := b.check(ctx); err != nil {
		return err
	}
	for _, k := range batch.Deletes {
		if err := checkKind(k.Kind); err != nil {
			return err
		}
	}
	for _, w := range batch.Puts {
		if err := checkKind(w.Kind); err != nil {
			return err
		}
	}
	if batch.Empty() {
		return nil
	}
	if err := checkSubject(subject); err != nil {
		return err
	}
	// Encode every value before taking the write lock.
	vals := make([][]byte, len(batch.Puts))
	for i, w := range batch.Puts {
		v, err := storage.Marshal(w.Value)
		if err != nil {
			return fmt.Errorf("bolt: store %q of subject %q: %w", w.Name, subject, err)
		}
		vals[i] = v
	}
	key := []byte(subject)
	fm, err := b.metas(ctx)
	if err != nil {
		return fmt.Errorf("bolt: store subject %q: %w", subject, err)
	}
	var recorded bool
	err = b.update(func(bk subjects) error {
		raw := bk.Get(key)
		if raw == nil && len(batch.Puts) == 0 {
			return nil // only deletes on an unknown subject: nothing to write, no empty record
		}
		r, err := decodeRecord(raw)
		if err != nil {
			return corrupt(subject, err)
		}
		var before []prior
		if fm != nil {
			before = feedBefore(&r, batch)
		}
		for _, k := range batch.Deletes {
			r.del(kindIndex(k.Kind == storage.Extended), k.Name)
		}
		var idx [2]map[string]int
		for i, w := range batch.Puts {
			s := kindIndex(w.Kind == storage.Extended)
			if len(batch.Puts) <= 8 {
				r.put(s, w.Name, vals[i])
				continue
			}
			// Large batches: index the set once instead of scanning it per put.
			if idx[s] == nil {
				idx[s] = make(map[string]int, len(r.sets[s])+len(batch.Puts))
				for j, e := range r.sets[s] {
					idx[s][string(e.name)] = j
				}
			}
			if j, ok := idx[s][w.Name]; ok {
				r.sets[s][j].val = vals[i]
			} else {
				idx[s][w.Name] = len(r.sets[s])
				r.sets[s] = append(r.sets[s], entry{name: []byte(w.Name), val: vals[i]})
			}
		}
		if fm != nil {
			n, err := feedStore(bk.tx, subject, fm, &r, before)
			if err != nil {
				return fmt.Errorf("bolt: store subject %q: change record: %w", subject, err)
			}
			recorded = n > 0
		}
		if err := bk.Put(key, r.encode()); err != nil {
			return fmt.Errorf("bolt: store subject %q: %w", subject, err)
		}
		return nil
	})
	if err == nil && recorded {
		b.feed.notify()
	}
	return err
}

// Flush implements storage.Backend: the subject's record is removed in one
// write transaction.
func (b *Backend) Flush(ctx context.Context, subject string) error {
	if err := b.check(ctx); err != nil {
		return err
	}
	if err := checkSubject(subject); err != nil {
		return err
	}
	fm, err := b.metas(ctx)
	if err != nil {
		return fmt.Errorf("bolt: flush subject %q: %w", subject, err)
	}
	err = b.update(func(bk subjects) error {
		if fm != nil {
			r, err := decodeRecord(bk.Get([]byte(subject)))
			if err != nil {
				return corrupt(subject, err)
			}
			if err := feedFlush(bk.tx, subject, fm.base, &r); err != nil {
				return fmt.Errorf("bolt: flush subject %q: change record: %w", subject, err)
			}
		}
		if err := bk.Delete([]byte(subject)); err != nil {
			return fmt.Errorf("bolt: flush subject %q: %w", subject, err)
		}
		return nil
	})
	if err == nil && fm != nil && !fm.base.muted {
		b.feed.notify()
	}
	return err
}

// listChunk is how many names List reads per read transaction.
const listChunk = 256

// List implements storage.Lister. Names come in byte order. The names are
// read in chunks of a few hundred, each in its own short read transaction,
// so the consumer may write to the backend while iterating (no read
// transaction is held across a yield) and memory stays bounded. A subject
// written or flushed during the iteration may or may not be seen. Subjects
// whose properties were all deleted are listed until flushed.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		pfx := []byte(prefix)
		var after []byte // last name yielded
		for {
			if err := b.check(ctx); err != nil {
				yield("", err)
				return
			}
			names := make([]string, 0, listChunk)
			err := b.view(func(bk subjects) error {
				c := bk.Cursor()
				var k []byte
				if after == nil {
					k, _ = c.Seek(pfx)
				} else if k, _ = c.Seek(after); k != nil && bytes.Equal(k, after) {
					k, _ = c.Next()
				}
				for ; k != nil && bytes.HasPrefix(k, pfx) && len(names) < listChunk; k, _ = c.Next() {
					if k[0] != 0 { // not the meta bucket
						names = append(names, string(k))
					}
				}
				return nil
			})
			if err != nil {
				yield("", fmt.Errorf("bolt: list %q: %w", prefix, err))
				return
			}
			for _, n := range names {
				if !yield(n, nil) {
					return
				}
			}
			if len(names) < listChunk {
				return
			}
			after = []byte(names[len(names)-1])
		}
	}
}
