//go:build unix

package custombackend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/krules-go/krules/storage"
)

// Backend keeps every subject in a JSON file of its own in one directory.
// It is safe for concurrent use by the goroutines of a process and by
// several processes opening the same directory on one machine: every write
// is a read-modify-write under an exclusive lock.
type Backend struct {
	dir    string
	mu     sync.Mutex // orders this process's writers (step 3)
	closed atomic.Bool
}

// The compiler checks the contract (step 1).
var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// Open opens the store in dir, creating the directory when missing.
func Open(dir string) (*Backend, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("custombackend: %w", err)
	}
	return &Backend{dir: dir}, nil
}

// Close makes every later call fail with storage.ErrClosed.
func (b *Backend) Close() error {
	b.closed.Store(true)
	return nil
}

// Capabilities: the files outlive the process (Persistent), and several
// processes may share the directory (Shared). Built-in operations are
// computed in Go by Mutation.Apply, so ServerSideOps is false.
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{Persistent: true, Shared: true}
}

// ---- step 2: values and files ----

// doc is one subject's file: its name and the two property maps, in the
// value model of package storage (storage.Unmarshal reads an integral
// number as an int64, where encoding/json alone would give a float64).
type doc struct {
	name       string
	props, ext map[string]any
	existed    bool // the file existed when read
}

func (d *doc) kind(k storage.Kind) map[string]any {
	if k == storage.Extended {
		return d.ext
	}
	return d.props
}

// path is the file of a subject. Subject names may hold any character
// ('/', ':', '*', ...) and be long, so the file is named by a hash and the
// name is kept inside.
func (b *Backend) path(subject string) string {
	sum := sha256.Sum256([]byte(subject))
	return filepath.Join(b.dir, hex.EncodeToString(sum[:16])+".json")
}

func (b *Backend) read(subject string) (*doc, error) {
	d := &doc{name: subject, props: map[string]any{}, ext: map[string]any{}}
	raw, err := os.ReadFile(b.path(subject))
	if errors.Is(err, os.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, err
	}
	v, err := storage.Unmarshal(raw)
	if err != nil {
		return nil, err
	}
	m, _ := v.(map[string]any)
	if m["name"] != subject {
		return nil, fmt.Errorf("file %s holds subject %q", b.path(subject), m["name"])
	}
	d.props, _ = m["props"].(map[string]any)
	d.ext, _ = m["ext"].(map[string]any)
	if d.props == nil || d.ext == nil {
		return nil, fmt.Errorf("file %s is not a subject document", b.path(subject))
	}
	d.existed = true
	return d, nil
}

// write replaces the subject's file atomically: a reader sees the old file
// or the new one, never half of it. (A production backend would also fsync
// the file and the directory; see storage/bolt.)
func (b *Backend) write(d *doc) error {
	raw, err := storage.Marshal(map[string]any{"name": d.name, "props": d.props, "ext": d.ext})
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(b.dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(raw)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), b.path(d.name))
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func sorted(m map[string]any) []storage.Property {
	out := make([]storage.Property, 0, len(m))
	for name, v := range m {
		out = append(out, storage.Property{Name: name, Value: v})
	}
	slices.SortFunc(out, func(a, b storage.Property) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ---- step 3: atomicity ----

// update runs fn on the subject's document under both locks: the mutex
// orders this process's goroutines, flock(2) on a lock file orders the
// processes. fn reports whether to write the document back. The context is
// checked before anything is written, so a cancelled call writes nothing.
func (b *Backend) update(ctx context.Context, subject string, fn func(d *doc) (write bool, err error)) error {
	if err := b.check(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	lf, err := os.OpenFile(filepath.Join(b.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close() // closing the file releases the lock
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil { // cancelled while waiting for the lock
		return err
	}
	d, err := b.read(subject)
	if err != nil {
		return err
	}
	write, err := fn(d)
	if err != nil || !write {
		return err
	}
	return b.write(d)
}

func (b *Backend) check(ctx context.Context) error {
	if b.closed.Load() {
		return storage.ErrClosed
	}
	return ctx.Err()
}

// ---- step 1: the methods of storage.Backend ----

// Load returns every property of the subject; an unknown subject is empty.
func (b *Backend) Load(ctx context.Context, subject string) (storage.Snapshot, error) {
	if err := b.check(ctx); err != nil {
		return storage.Snapshot{}, wrap("load", subject, "", err)
	}
	d, err := b.read(subject)
	if err != nil {
		return storage.Snapshot{}, wrap("load", subject, "", err)
	}
	return storage.Snapshot{Props: sorted(d.props), Ext: sorted(d.ext)}, nil
}

// Get returns one property, or an error wrapping storage.ErrNotFound.
func (b *Backend) Get(ctx context.Context, subject string, k storage.Key) (any, error) {
	if err := b.check(ctx); err != nil {
		return nil, wrap("get", subject, k.Name, err)
	}
	d, err := b.read(subject)
	if err != nil {
		return nil, wrap("get", subject, k.Name, err)
	}
	v, ok := d.kind(k.Kind)[k.Name]
	if !ok {
		return nil, wrap("get", subject, k.Name, storage.ErrNotFound)
	}
	return v, nil
}

// ExtProps returns the extended properties of the subject.
func (b *Backend) ExtProps(ctx context.Context, subject string) ([]storage.Property, error) {
	snap, err := b.Load(ctx, subject)
	return snap.Ext, err
}

// Set replaces one property with the mutation's result, atomically, and
// returns the new and the old value. Mutation.Apply computes the plain
// value, a built-in operation or an update function; when it fails,
// nothing is written.
func (b *Backend) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (newValue, oldValue any, err error) {
	err = b.update(ctx, subject, func(d *doc) (bool, error) {
		props := d.kind(k.Kind)
		old, exists := props[k.Name]
		arg := old
		if m.Func != nil && exists {
			arg = storage.Clone(old) // the function may change its argument
		}
		nv, err := m.Apply(arg, exists)
		if err != nil {
			return false, err
		}
		props[k.Name] = nv
		newValue, oldValue = nv, old
		return true, nil
	})
	if err != nil {
		return nil, nil, wrap("set", subject, k.Name, err)
	}
	return newValue, oldValue, nil
}

// Delete removes one property and returns its last value, or an error
// wrapping storage.ErrNotFound.
func (b *Backend) Delete(ctx context.Context, subject string, k storage.Key) (any, error) {
	var old any
	err := b.update(ctx, subject, func(d *doc) (bool, error) {
		props := d.kind(k.Kind)
		v, ok := props[k.Name]
		if !ok {
			return false, storage.ErrNotFound
		}
		delete(props, k.Name)
		old = v
		return true, nil
	})
	if err != nil {
		return nil, wrap("delete", subject, k.Name, err)
	}
	return old, nil
}

// Store applies the batch atomically: deletes (a missing property is
// ignored), then puts. A batch that changes nothing writes nothing.
func (b *Backend) Store(ctx context.Context, subject string, batch storage.Batch) error {
	if batch.Empty() {
		return b.check(ctx)
	}
	err := b.update(ctx, subject, func(d *doc) (bool, error) {
		for _, k := range batch.Deletes {
			delete(d.kind(k.Kind), k.Name)
		}
		for _, w := range batch.Puts {
			d.kind(w.Kind)[w.Name] = w.Value
		}
		// Deleting from an unknown subject must not create it.
		return d.existed || len(batch.Puts) > 0, nil
	})
	if err != nil {
		return wrap("store", subject, "", err)
	}
	return nil
}

// Flush removes the subject's file; an unknown subject is not an error.
func (b *Backend) Flush(ctx context.Context, subject string) error {
	err := b.update(ctx, subject, func(*doc) (bool, error) {
		err := os.Remove(b.path(subject))
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		return false, err
	})
	if err != nil {
		return wrap("flush", subject, "", err)
	}
	return nil
}

// ---- step 4 (optional): storage.Lister ----

// List yields the names of the stored subjects that start with prefix, in
// byte order.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if err := b.check(ctx); err != nil {
			yield("", fmt.Errorf("custombackend: list: %w", err))
			return
		}
		files, err := filepath.Glob(filepath.Join(b.dir, "*.json"))
		if err != nil {
			yield("", fmt.Errorf("custombackend: list: %w", err))
			return
		}
		var names []string
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if errors.Is(err, os.ErrNotExist) { // flushed meanwhile
				continue
			}
			var v any
			if err == nil {
				v, err = storage.Unmarshal(raw)
			}
			if err != nil {
				yield("", fmt.Errorf("custombackend: list: %s: %w", f, err))
				return
			}
			if name, _ := v.(map[string]any)["name"].(string); strings.HasPrefix(name, prefix) {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		for _, n := range names {
			if err := ctx.Err(); err != nil {
				yield("", fmt.Errorf("custombackend: list: %w", err))
				return
			}
			if !yield(n, nil) {
				return
			}
		}
	}
}

// wrap names the backend, the operation, the subject and the property in an
// error, keeping the sentinel (storage.ErrNotFound, context.Canceled, ...)
// reachable with errors.Is.
func wrap(op, subject, prop string, err error) error {
	if prop != "" {
		return fmt.Errorf("custombackend: %s property %q of subject %q: %w", op, prop, subject, err)
	}
	return fmt.Errorf("custombackend: %s subject %q: %w", op, subject, err)
}
