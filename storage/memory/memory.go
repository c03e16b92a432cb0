// Package memory is the in-memory storage backend, the default of krules.New.
//
// It is a real store: every Subject handle of an App (and every App given the
// same Backend) sees what another stored. It is safe for concurrent use; each
// subject has its own lock, so Set, Delete and Store are atomic per subject
// and subjects never contend with each other. Properties keep their insertion
// order. Values are deep-copied on the way in and out, so callers can never
// alias stored data. Nothing survives the process: use storage/bolt for an
// embedded persistent store.
package memory

import (
	"context"
	"fmt"
	"iter"
	"sort"
	"strings"
	"sync"

	"github.com/krules-go/krules/storage"
)

// Backend is the in-memory store. The zero value is not usable; call New.
type Backend struct {
	mu       sync.RWMutex
	subjects map[string]*subject
	feed     *memFeed // change feed (feed.go); nil when off
	idem     idemStore
}

// New returns an empty in-memory store. Options: WithChangeFeed,
// WithIdempotencyWindow.
func New(opts ...Option) *Backend {
	b := &Backend{subjects: make(map[string]*subject)}
	b.idem.window = storage.DefaultIdempotencyWindow
	for _, o := range opts {
		if o != nil {
			o(b)
		}
	}
	return b
}

var _ storage.Backend = (*Backend)(nil)
var _ storage.Lister = (*Backend)(nil)

type subject struct {
	mu    sync.Mutex
	props propSet
	ext   propSet
	gone  bool // removed from the map (Flush, or left empty); callers must re-resolve
}

// propSet is an insertion-ordered map: the entries in insertion order and
// a map from name to index, so reading or replacing a property is one map
// lookup. Deleted entries leave holes (dead), compacted once they are most
// of the slice.
type propSet struct {
	idx   map[string]int32
	ents  []prop
	holes int
}

type prop struct {
	name string
	v    any
	dead bool
}

// find returns the index of name's entry, or -1.
func (p *propSet) find(name string) int {
	if i, ok := p.idx[name]; ok {
		return int(i)
	}
	return -1
}

func (p *propSet) get(name string) (any, bool) {
	if i := p.find(name); i >= 0 {
		return p.ents[i].v, true
	}
	return nil, false
}

func (p *propSet) put(name string, v any) { p.putAt(p.find(name), name, v) }

// putAt stores v for name, whose index (from find) is i.
func (p *propSet) putAt(i int, name string, v any) {
	if i >= 0 {
		p.ents[i].v = v
		return
	}
	if p.idx == nil {
		p.idx = make(map[string]int32)
	}
	p.idx[name] = int32(len(p.ents))
	p.ents = append(p.ents, prop{name: name, v: v})
}

func (p *propSet) del(name string) (any, bool) {
	i := p.find(name)
	if i < 0 {
		return nil, false
	}
	v := p.ents[i].v
	delete(p.idx, name)
	p.ents[i] = prop{dead: true}
	p.holes++
	if p.len() == 0 {
		p.ents, p.holes = p.ents[:0], 0
	} else if p.holes >= 16 && p.holes >= len(p.ents)/2 {
		out := p.ents[:0]
		for _, e := range p.ents {
			if !e.dead {
				p.idx[e.name] = int32(len(out))
				out = append(out, e)
			}
		}
		clear(p.ents[len(out):])
		p.ents, p.holes = out, 0
	}
	return v, true
}

// len returns the number of properties.
func (p *propSet) len() int { return len(p.ents) - p.holes }

// all yields the properties in insertion order.
func (p *propSet) all() iter.Seq2[string, any] {
	return func(yield func(string, any) bool) {
		for i := range p.ents {
			if e := &p.ents[i]; !e.dead && !yield(e.name, e.v) {
				return
			}
		}
	}
}

func (p *propSet) snapshot() []storage.Property {
	out := make([]storage.Property, 0, p.len())
	for n, v := range p.all() {
		out = append(out, storage.Property{Name: n, Value: storage.Clone(v)})
	}
	return out
}

// release drops the data of a subject that is gone (locked): a Ref still
// pointing to the entry keeps only the empty entry, not the properties,
// until its next call resolves the name again.
func (s *subject) release() { s.props, s.ext = propSet{}, propSet{} }

func (s *subject) set(k storage.Kind) *propSet {
	if k == storage.Extended {
		return &s.ext
	}
	return &s.props
}

// lookup returns the subject's entry, locked; create makes it if missing.
// A nil result (create false) means the subject does not exist.
func (b *Backend) lookup(name string, create bool) *subject {
	for {
		b.mu.RLock()
		s := b.subjects[name]
		b.mu.RUnlock()
		if s == nil {
			if !create {
				return nil
			}
			b.mu.Lock()
			s = b.subjects[name]
			if s == nil {
				s = &subject{}
				b.subjects[name] = s
			}
			b.mu.Unlock()
		}
		s.mu.Lock()
		if !s.gone {
			return s
		}
		s.mu.Unlock() // flushed meanwhile: retry with the new entry
	}
}

func checkKey(k storage.Key) error {
	if !k.Kind.Valid() {
		return badKind(k)
	}
	return nil
}

func badKind(k storage.Key) error {
	return fmt.Errorf("memory: %w: unknown property kind %v", storage.ErrInvalidName, k.Kind)
}

// Load implements storage.Backend.
func (b *Backend) Load(ctx context.Context, name string) (storage.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return storage.Snapshot{}, err
	}
	s := b.lookup(name, false)
	if s == nil {
		return storage.Snapshot{}, nil
	}
	defer s.mu.Unlock()
	return storage.Snapshot{Props: s.props.snapshot(), Ext: s.ext.snapshot()}, nil
}

// Store implements storage.Backend.
func (b *Backend) Store(ctx context.Context, name string, batch storage.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, k := range batch.Deletes {
		if err := checkKey(k); err != nil {
			return err
		}
	}
	for _, w := range batch.Puts {
		if err := checkKey(w.Key); err != nil {
			return err
		}
	}
	if batch.Empty() {
		return nil
	}
	s := b.lookup(name, true)
	defer s.mu.Unlock()
	before := b.feedBefore(s, batch) // change feed hook
	for _, k := range batch.Deletes {
		s.set(k.Kind).del(k.Name)
	}
	for _, w := range batch.Puts {
		s.set(w.Kind).put(w.Name, storage.Clone(w.Value))
	}
	b.feedStore(ctx, name, s, before) // change feed hook
	b.dropIfEmpty(name, s)
	return nil
}

// Set implements storage.Backend. Update functions run under the subject's
// lock, exactly once.
func (b *Backend) Set(ctx context.Context, name string, k storage.Key, m storage.Mutation) (any, any, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := checkKey(k); err != nil {
		return nil, nil, err
	}
	return b.set(ctx, name, b.lookup(name, true), k, m)
}

// set is Set on s, the subject's entry, locked; it unlocks it.
func (b *Backend) set(ctx context.Context, name string, s *subject, k storage.Key, m storage.Mutation) (any, any, error) {
	var ic *idemCall
	if key, ok := storage.IdempotencyKeyFrom(ctx); ok {
		var rec *idemRecord
		var err error
		ic, rec, err = b.idem.beginKey(ctx, key, name, "set", k, &m)
		if rec != nil || err != nil {
			b.dropIfEmpty(name, s)
			s.mu.Unlock()
			if err != nil {
				return nil, nil, fmt.Errorf("memory: set %q of subject %q: %w", k.Name, name, err)
			}
			return rec.nv, rec.old, nil
		}
	}
	var err error
	ps := s.set(k.Kind)
	i := ps.find(k.Name)
	var old, nv any
	exists := i >= 0
	if exists {
		old = ps.ents[i].v
	}
	if m.Op == nil && m.Func == nil {
		nv = m.Value // a plain value: normalised by the caller
	} else {
		arg := old
		if exists && m.Func != nil {
			// Update functions get their own copy: they may mutate it.
			// Built-in ops do not alias it.
			arg = storage.Clone(old)
		}
		nv, err = m.Apply(arg, exists)
		if err != nil {
			b.dropIfEmpty(name, s)
			s.mu.Unlock()
			return nil, nil, fmt.Errorf("memory: set %q of subject %q: %w", k.Name, name, err)
		}
	}
	// The stored value is a copy (the caller keeps nv); scalars need none.
	stored := nv
	if isComposite(nv) {
		stored = storage.Clone(nv)
	}
	ps.putAt(i, k.Name, stored)
	if b.feed != nil && k.Kind == storage.Default && (!exists || !storage.Equal(old, nv)) { // change feed hook
		b.feed.add(ctx, storage.Change{Type: storage.ChangePropertyChanged, Subject: name, Property: k.Name, Old: old, New: storage.Clone(nv)}, k.Name)
	}
	if ic != nil {
		b.idem.commit(ic, nv, old)
	}
	s.mu.Unlock()
	return nv, old, nil
}

// isComposite reports whether v is a list or a map (the values Clone copies).
func isComposite(v any) bool {
	switch v.(type) {
	case map[string]any, []any:
		return true
	}
	return false
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, name string, k storage.Key) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(k); err != nil {
		return nil, err
	}
	return get(name, b.lookup(name, false), k)
}

// get is Get on s, the subject's entry, locked (nil: no such subject); it
// unlocks it.
func get(name string, s *subject, k storage.Key) (any, error) {
	if s == nil {
		return nil, fmt.Errorf("memory: property %q of subject %q: %w", k.Name, name, storage.ErrNotFound)
	}
	defer s.mu.Unlock()
	v, ok := s.set(k.Kind).get(k.Name)
	if !ok {
		return nil, fmt.Errorf("memory: property %q of subject %q: %w", k.Name, name, storage.ErrNotFound)
	}
	return storage.Clone(v), nil
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, name string, k storage.Key) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(k); err != nil {
		return nil, err
	}
	return b.del(ctx, name, b.lookup(name, true), k) // a keyed retry may find the subject gone
}

// del is Delete on s, the subject's entry, locked; it unlocks it.
func (b *Backend) del(ctx context.Context, name string, s *subject, k storage.Key) (any, error) {
	defer s.mu.Unlock()
	ic, rec, err := b.idem.begin(ctx, name, "delete", k, nil)
	if rec != nil || err != nil {
		b.dropIfEmpty(name, s)
		if err != nil {
			return nil, fmt.Errorf("memory: delete %q of subject %q: %w", k.Name, name, err)
		}
		return rec.old, nil
	}
	v, ok := s.set(k.Kind).del(k.Name)
	if ok && b.feed != nil && k.Kind == storage.Default { // change feed hook
		b.feed.add(ctx, storage.Change{Type: storage.ChangePropertyDeleted, Subject: name, Property: k.Name, Old: storage.Clone(v)}, k.Name)
	}
	b.dropIfEmpty(name, s)
	if !ok {
		return nil, fmt.Errorf("memory: property %q of subject %q: %w", k.Name, name, storage.ErrNotFound)
	}
	b.idem.commit(ic, nil, v)
	return v, nil
}

// dropIfEmpty removes a subject left without properties (by a failed or
// deletes-only write, or its last Delete), so List never shows phantoms.
// s must be locked by the caller. Taking b.mu under s.mu is safe: no path
// holds b.mu while waiting for a subject's lock.
func (b *Backend) dropIfEmpty(name string, s *subject) {
	if s.props.len() > 0 || s.ext.len() > 0 {
		return
	}
	b.mu.Lock()
	if b.subjects[name] == s {
		delete(b.subjects, name)
	}
	b.mu.Unlock()
	s.gone = true
	s.release()
}

// Flush implements storage.Backend.
func (b *Backend) Flush(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The subject's lock is held while it leaves the map, so a concurrent
	// write either comes before (and is flushed) or after (a new entry);
	// the change feed records them in that order.
	s := b.lookup(name, false)
	if s == nil {
		b.feedFlush(ctx, name, nil) // change feed hook
		return nil
	}
	b.mu.Lock()
	if b.subjects[name] == s {
		delete(b.subjects, name)
	}
	b.mu.Unlock()
	s.gone = true
	b.feedFlush(ctx, name, s) // change feed hook
	s.release()
	s.mu.Unlock()
	return nil
}

// ExtProps implements storage.Backend.
func (b *Backend) ExtProps(ctx context.Context, name string) ([]storage.Property, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := b.lookup(name, false)
	if s == nil {
		return []storage.Property{}, nil
	}
	defer s.mu.Unlock()
	return s.ext.snapshot(), nil
}

// Capabilities implements storage.Backend: not persistent, not shared between
// processes, operations computed in process under the subject lock.
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{ServerSideOps: true}
}

// List implements storage.Lister; names come sorted. A subject whose last
// property is deleted is gone, as on Redis.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if err := ctx.Err(); err != nil {
			yield("", err)
			return
		}
		b.mu.RLock()
		names := make([]string, 0, len(b.subjects))
		for n := range b.subjects {
			if strings.HasPrefix(n, prefix) {
				names = append(names, n)
			}
		}
		b.mu.RUnlock()
		sort.Strings(names)
		for _, n := range names {
			if !yield(n, nil) {
				return
			}
		}
	}
}
