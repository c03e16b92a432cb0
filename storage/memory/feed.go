package memory

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/krules-go/krules/storage"
)

// Option configures a Backend (New).
type Option func(*Backend)

// WithChangeFeed turns on the change feed: every committed effective change
// of a default property (Set, Delete, Store) and every Flush also appends a
// change record (storage.Change) under the same subject lock, so a
// subject's records are in commit order. Records stay in memory until a
// relay (package feed) removes them with AckChanges; the backend then also
// implements storage.FeedStore. For tests and single-process use: the feed
// lives and dies with the process.
func WithChangeFeed() Option {
	return func(b *Backend) { b.feed = &memFeed{seq: map[string]int64{}, wake: make(chan struct{})} }
}

var (
	_ storage.ChangeFeeder = (*Backend)(nil)
	_ storage.FeedStore    = (*Backend)(nil)
	_ storage.FeedCursor   = (*Backend)(nil)
)

// ChangeFeed implements storage.ChangeFeeder.
func (b *Backend) ChangeFeed() bool { return b.feed != nil }

type memFeed struct {
	mu      sync.Mutex
	seq     map[string]int64 // per-subject version, never reset
	pending []storage.PendingChange
	next    uint64
	wake    chan struct{} // closed and replaced when a record is added

	owner string
	until time.Time
}

// add appends a record; the caller holds the subject's lock. prop selects
// the per-property metadata of a Store batch.
func (f *memFeed) add(ctx context.Context, c storage.Change, prop string) {
	m := storage.ChangeFrom(ctx).For(prop)
	if m.Muted {
		return
	}
	c.ID = storage.NewChangeID()
	c.Extra = m.Extra
	c.Depth = m.Depth
	c.TraceParent, c.TraceState = m.TraceParent, m.TraceState
	c.Time = time.Now().UTC()
	f.mu.Lock()
	f.seq[c.Subject]++
	c.Seq = f.seq[c.Subject]
	f.next++
	f.pending = append(f.pending, storage.PendingChange{Ref: strconv.FormatUint(f.next, 10), Change: c})
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

type prior struct {
	name   string
	v      any
	exists bool
}

// feedBefore returns the stored values of the default properties a batch
// touches (nil when the feed is off). s is locked.
func (b *Backend) feedBefore(s *subject, batch storage.Batch) []prior {
	if b.feed == nil {
		return nil
	}
	var out []prior
	seen := map[string]bool{}
	note := func(k storage.Key) {
		if k.Kind != storage.Default || seen[k.Name] {
			return
		}
		seen[k.Name] = true
		v, ok := s.props.get(k.Name)
		out = append(out, prior{name: k.Name, v: v, exists: ok})
	}
	for _, k := range batch.Deletes {
		note(k)
	}
	for _, w := range batch.Puts {
		note(w.Key)
	}
	return out
}

// feedStore records the effective changes of a batch. s is locked.
func (b *Backend) feedStore(ctx context.Context, name string, s *subject, before []prior) {
	if b.feed == nil {
		return
	}
	for _, p := range before {
		v, ok := s.props.get(p.name)
		switch {
		case ok && (!p.exists || !storage.Equal(p.v, v)):
			b.feed.add(ctx, storage.Change{Type: storage.ChangePropertyChanged, Subject: name, Property: p.name, Old: p.v, New: storage.Clone(v)}, p.name)
		case !ok && p.exists:
			b.feed.add(ctx, storage.Change{Type: storage.ChangePropertyDeleted, Subject: name, Property: p.name, Old: p.v}, p.name)
		}
	}
}

// feedFlush records a Flush: one deletion per property (default first,
// then extended, insertion order) and the subject deletion with the last
// content. s (nil for an unknown subject) is locked.
func (b *Backend) feedFlush(ctx context.Context, name string, s *subject) {
	if b.feed == nil {
		return
	}
	props, ext := map[string]any{}, map[string]any{}
	if s != nil {
		for n, v := range s.props.all() {
			props[n] = storage.Clone(v)
			b.feed.add(ctx, storage.Change{Type: storage.ChangePropertyDeleted, Subject: name, Property: n, Old: storage.Clone(v)}, "")
		}
		for n, v := range s.ext.all() {
			ext[n] = storage.Clone(v)
			b.feed.add(ctx, storage.Change{Type: storage.ChangePropertyDeleted, Subject: name, Property: n, Extended: true, Old: storage.Clone(v)}, "")
		}
	}
	b.feed.add(ctx, storage.Change{Type: storage.ChangeSubjectDeleted, Subject: name, Props: props, ExtProps: ext}, "")
}

// ReadChanges implements storage.FeedStore.
func (b *Backend) ReadChanges(ctx context.Context, max int, wait time.Duration) ([]storage.PendingChange, error) {
	return b.ReadChangesAfter(ctx, "", max, wait)
}

// ReadChangesAfter implements storage.FeedCursor: refs are a counter that
// increases with every record, under the feed's lock. A ref that is not a
// number is an error.
func (b *Backend) ReadChangesAfter(ctx context.Context, after string, max int, wait time.Duration) ([]storage.PendingChange, error) {
	f := b.feed
	if f == nil {
		return nil, nil
	}
	if max <= 0 {
		max = 1
	}
	var from uint64
	if after != "" {
		n, err := strconv.ParseUint(after, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("memory: change feed cursor %q: %w", after, err)
		}
		from = n
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		f.mu.Lock()
		i := sort.Search(len(f.pending), func(i int) bool {
			n, _ := strconv.ParseUint(f.pending[i].Ref, 10, 64)
			return n > from
		})
		if n := min(max, len(f.pending)-i); n > 0 {
			out := append([]storage.PendingChange(nil), f.pending[i:i+n]...)
			f.mu.Unlock()
			return out, nil
		}
		w := f.wake
		f.mu.Unlock()
		select {
		case <-w:
		case <-t.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// AckChanges implements storage.FeedStore.
func (b *Backend) AckChanges(_ context.Context, refs []string) error {
	f := b.feed
	if f == nil {
		return nil
	}
	drop := make(map[string]bool, len(refs))
	for _, r := range refs {
		drop[r] = true
	}
	f.mu.Lock()
	keep := f.pending[:0]
	for _, p := range f.pending {
		if !drop[p.Ref] {
			keep = append(keep, p)
		}
	}
	clear(f.pending[len(keep):])
	f.pending = keep
	f.mu.Unlock()
	return nil
}

// FeedLease implements storage.FeedStore (a lease inside the process).
func (b *Backend) FeedLease(_ context.Context, owner string, ttl time.Duration) (bool, error) {
	f := b.feed
	if f == nil {
		return false, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.owner == owner || f.owner == "" || now.After(f.until) {
		f.owner, f.until = owner, now.Add(ttl)
		return true, nil
	}
	return false, nil
}

// ReleaseFeedLease implements storage.FeedStore.
func (b *Backend) ReleaseFeedLease(_ context.Context, owner string) error {
	if f := b.feed; f != nil {
		f.mu.Lock()
		if f.owner == owner {
			f.owner = ""
		}
		f.mu.Unlock()
	}
	return nil
}
