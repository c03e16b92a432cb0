package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/krules-go/krules/storage"
)

// Change feed (Config.ChangeFeed). Every write transaction that changes a
// default property (Set, Delete, Store) or flushes a subject also puts a
// change record into the bucket "\x00feed" and bumps the subject's version
// in the bucket "\x00fseq", in the same transaction: the records are
// committed (and fsynced) with the data or not at all. Like the other
// internal buckets their names start with NUL, which no subject name can
// contain, and List skips them.
//
// Feed keys are 8-byte big-endian numbers from the bucket's sequence
// (bbolt's NextSequence), so the key order is the commit order of the
// serialised write transactions, for every subject at once. A record value
// is a small envelope of length-prefixed chunks (uvarint length, bytes):
//
//	version byte (feedVersion)
//	chunk head   JSON {"id","t","s","q","tm"[,"p","x"]}: id, type (c changed,
//	             d deleted, f subject deleted), subject, version, unix nanos,
//	             property and extended flag
//	chunk meta   JSON {"extra","depth","tp","ts"} (empty when there is none)
//	chunk old    empty (was missing) or '=' + the old JSON text
//	chunk new    empty or '=' + the new JSON text
//	chunk props  the subject record (record.go) of a deleted subject's last
//	             content (type f), empty otherwise
//
// Versions are 8-byte big-endian counters per subject; a Flush leaves them,
// so a subject's versions are never reused.
const feedVersion = 1

var (
	feedBucket = []byte("\x00feed")
	seqBucket  = []byte("\x00fseq")
)

var (
	_ storage.ChangeFeeder = (*Backend)(nil)
	_ storage.FeedStore    = (*Backend)(nil)
)

// ErrFeedOff is returned by the storage.FeedStore methods of a Backend
// opened without Config.ChangeFeed. Test it with errors.Is.
var ErrFeedOff = errors.New("bolt: change feed not enabled (Config.ChangeFeed)")

// feedState is the in-process side of the feed: the wake-up of blocked
// readers and the relay lease.
type feedState struct {
	mu    sync.Mutex
	wake  chan struct{} // closed and replaced after a commit that wrote records
	owner string
	until time.Time
}

func newFeedState() *feedState { return &feedState{wake: make(chan struct{})} }

// notify wakes the readers blocked in ReadChanges.
func (f *feedState) notify() {
	f.mu.Lock()
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

func (f *feedState) waiter() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wake
}

// ChangeFeed implements storage.ChangeFeeder: Config.ChangeFeed.
func (b *Backend) ChangeFeed() bool { return b.feed != nil }

// feedMeta is the encoded metadata of a write: muted (no record) or the
// meta chunk.
type feedMeta struct {
	muted bool
	text  []byte
}

// encodeMeta encodes m (nil: no metadata). Extra must be in the value
// model (storage.Normalize); otherwise the write is refused before
// anything is written.
func encodeMeta(m *storage.ChangeMeta) (feedMeta, error) {
	if m != nil && m.Muted {
		return feedMeta{muted: true}, nil
	}
	data, err := storage.EncodeChangeMeta(m)
	return feedMeta{text: data}, err
}

// feedMetas is the metadata of one call: the outer one and, for a Store
// batch, one per default property with options of its own.
type feedMetas struct {
	base  feedMeta
	props map[string]feedMeta
}

func (f *feedMetas) forProp(name string) feedMeta {
	if m, ok := f.props[name]; ok {
		return m
	}
	return f.base
}

// metas encodes the metadata ctx carries; nil when the feed is off.
func (b *Backend) metas(ctx context.Context) (*feedMetas, error) {
	if b.feed == nil {
		return nil, nil
	}
	m := storage.ChangeFrom(ctx)
	base, err := encodeMeta(m)
	if err != nil {
		return nil, err
	}
	out := &feedMetas{base: base}
	if m != nil && len(m.Props) > 0 {
		out.props = make(map[string]feedMeta, len(m.Props))
		for name, p := range m.Props {
			if p == nil {
				continue
			}
			pm, err := encodeMeta(p)
			if err != nil {
				return nil, fmt.Errorf("property %q: %w", name, err)
			}
			out.props[name] = pm
		}
	}
	return out, nil
}

// feedRec is one change record to write.
type feedRec struct {
	typ      byte // 'c', 'd' or 'f'
	prop     string
	ext      bool
	old, new []byte // nil: absent
	content  []byte // type f: the subject record
}

// addRecord writes one record of subject into tx: the subject's next
// version and the record under the feed's next key.
func addRecord(tx *bbolt.Tx, subject string, m feedMeta, r feedRec) error {
	seqs, err := tx.CreateBucketIfNotExists(seqBucket)
	if err != nil {
		return err
	}
	var seq uint64
	if v := seqs.Get([]byte(subject)); len(v) == 8 {
		seq = binary.BigEndian.Uint64(v)
	}
	seq++
	var sv [8]byte
	binary.BigEndian.PutUint64(sv[:], seq)
	if err := seqs.Put([]byte(subject), sv[:]); err != nil {
		return err
	}
	fb, err := tx.CreateBucketIfNotExists(feedBucket)
	if err != nil {
		return err
	}
	n, err := fb.NextSequence()
	if err != nil {
		return err
	}
	head := map[string]any{
		"id": storage.NewChangeID(), "t": string(r.typ), "s": subject,
		"q": int64(seq), "tm": time.Now().UnixNano(),
	}
	if r.typ != 'f' {
		head["p"] = r.prop
		if r.ext {
			head["x"] = true
		}
	}
	h, err := storage.Marshal(head)
	if err != nil {
		return err
	}
	val := make([]byte, 1, 1+5*binary.MaxVarintLen64+len(h)+len(m.text)+len(r.old)+len(r.new)+len(r.content)+2)
	val[0] = feedVersion
	val = appendChunk(val, h)
	val = appendChunk(val, m.text)
	val = appendValue(val, r.old)
	val = appendValue(val, r.new)
	val = appendChunk(val, r.content)
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], n)
	return fb.Put(key[:], val)
}

func appendChunk(dst, c []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(c)))
	return append(dst, c...)
}

func appendValue(dst, v []byte) []byte {
	if v == nil {
		return binary.AppendUvarint(dst, 0)
	}
	dst = binary.AppendUvarint(dst, uint64(len(v)+1))
	return append(append(dst, '='), v...)
}

// decodeChange decodes a feed record.
func decodeChange(data []byte) (storage.Change, error) {
	var c storage.Change
	if len(data) == 0 || data[0] != feedVersion {
		return c, errors.New("unknown record version")
	}
	p := data[1:]
	var chunks [5][]byte
	for i := range chunks {
		var ok bool
		if chunks[i], p, ok = chunk(p); !ok {
			return c, fmt.Errorf("truncated record (chunk %d)", i)
		}
	}
	if len(p) != 0 {
		return c, fmt.Errorf("%d trailing bytes", len(p))
	}
	hv, err := storage.Unmarshal(chunks[0])
	if err != nil {
		return c, fmt.Errorf("head: %w", err)
	}
	h, ok := hv.(map[string]any)
	if !ok {
		return c, errors.New("head is not a JSON object")
	}
	c.ID, _ = h["id"].(string)
	c.Subject, _ = h["s"].(string)
	c.Seq, _ = h["q"].(int64)
	if tm, ok := h["tm"].(int64); ok {
		c.Time = time.Unix(0, tm).UTC()
	}
	if c.ID == "" || c.Subject == "" || c.Seq <= 0 {
		return c, errors.New("missing id, subject or version")
	}
	if len(chunks[1]) > 0 {
		if err := storage.DecodeChangeMeta(chunks[1], &c); err != nil {
			return c, fmt.Errorf("metadata: %w", err)
		}
	}
	value := func(b []byte) (any, error) {
		if len(b) == 0 {
			return nil, nil
		}
		if b[0] != '=' {
			return nil, errors.New("bad value chunk")
		}
		return storage.Unmarshal(b[1:])
	}
	t, _ := h["t"].(string)
	switch t {
	case "c", "d":
		c.Property, _ = h["p"].(string)
		c.Extended, _ = h["x"].(bool)
		if c.Property == "" {
			return c, errors.New("missing property")
		}
		if c.Old, err = value(chunks[2]); err != nil {
			return c, fmt.Errorf("old value: %w", err)
		}
		c.Type = storage.ChangePropertyDeleted
		if t == "c" {
			c.Type = storage.ChangePropertyChanged
			if c.New, err = value(chunks[3]); err != nil {
				return c, fmt.Errorf("new value: %w", err)
			}
		}
	case "f":
		c.Type = storage.ChangeSubjectDeleted
		r, err := decodeRecord(chunks[4])
		if err != nil {
			return c, fmt.Errorf("content: %w", err)
		}
		c.Props, c.ExtProps = map[string]any{}, map[string]any{}
		for s, dst := range [2]map[string]any{c.Props, c.ExtProps} {
			for _, e := range r.sets[s] {
				v, err := storage.Unmarshal(e.val)
				if err != nil {
					return c, fmt.Errorf("content of %q: %w", e.name, err)
				}
				dst[string(e.name)] = v
			}
		}
	default:
		return c, fmt.Errorf("unknown type %q", t)
	}
	return c, nil
}

// prior is the stored text of a default property before a batch (nil:
// missing), copied out of the page.
type prior struct {
	name string
	val  []byte
}

// feedBefore returns the stored texts of the default properties batch
// touches, in first-touch order (deletes, then puts).
func feedBefore(r *record, batch storage.Batch) []prior {
	var out []prior
	seen := map[string]bool{}
	note := func(k storage.Key) {
		if k.Kind != storage.Default || seen[k.Name] {
			return
		}
		seen[k.Name] = true
		var v []byte
		if i := r.find(0, k.Name); i >= 0 {
			v = bytes.Clone(r.sets[0][i].val)
		}
		out = append(out, prior{name: k.Name, val: v})
	}
	for _, k := range batch.Deletes {
		note(k)
	}
	for _, w := range batch.Puts {
		note(w.Key)
	}
	return out
}

// feedStore writes the records of a batch's effective changes (r is the
// record after the batch) and returns how many it wrote.
func feedStore(tx *bbolt.Tx, subject string, fm *feedMetas, r *record, before []prior) (int, error) {
	n := 0
	for _, p := range before {
		m := fm.forProp(p.name)
		if m.muted {
			continue
		}
		var after []byte
		if i := r.find(0, p.name); i >= 0 {
			after = r.sets[0][i].val
		}
		switch {
		case after != nil && (p.val == nil || !bytes.Equal(p.val, after)):
			if err := addRecord(tx, subject, m, feedRec{typ: 'c', prop: p.name, old: p.val, new: after}); err != nil {
				return n, err
			}
			n++
		case after == nil && p.val != nil:
			if err := addRecord(tx, subject, m, feedRec{typ: 'd', prop: p.name, old: p.val}); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// feedFlush writes the records of a Flush of the subject whose record is r
// (empty for an unknown subject): a deletion per property, default then
// extended in insertion order, then the subject deletion with the content.
func feedFlush(tx *bbolt.Tx, subject string, m feedMeta, r *record) error {
	if m.muted {
		return nil
	}
	for s := 0; s < 2; s++ {
		for _, e := range r.sets[s] {
			if err := addRecord(tx, subject, m, feedRec{typ: 'd', prop: string(e.name), ext: s == 1, old: e.val}); err != nil {
				return err
			}
		}
	}
	return addRecord(tx, subject, m, feedRec{typ: 'f', content: r.encode()})
}

func (b *Backend) feedOn() error {
	if b.feed == nil {
		return ErrFeedOff
	}
	return nil
}

// ReadChanges implements storage.FeedStore: the oldest max records (in
// commit order) in one read transaction. When there is none it waits up to
// wait for a commit of this Backend that writes one: the writers notify
// the waiting readers in the process (no polling). Records are only ever
// written by this process, since the file is locked by it.
func (b *Backend) ReadChanges(ctx context.Context, max int, wait time.Duration) ([]storage.PendingChange, error) {
	if err := b.feedOn(); err != nil {
		return nil, err
	}
	if max <= 0 {
		max = 1
	}
	var timer *time.Timer
	for {
		if err := b.check(ctx); err != nil {
			return nil, err
		}
		w := b.feed.waiter() // before the read: a commit after it closes w
		var out []storage.PendingChange
		err := b.view(func(bk subjects) error {
			fb := bk.tx.Bucket(feedBucket)
			if fb == nil {
				return nil
			}
			c := fb.Cursor()
			for k, v := c.First(); k != nil && len(out) < max; k, v = c.Next() {
				ref := "?"
				if len(k) == 8 {
					ref = strconv.FormatUint(binary.BigEndian.Uint64(k), 10)
				}
				ch, err := decodeChange(v)
				if err != nil {
					err = fmt.Errorf("bolt: change record %s: %w", ref, err)
				}
				out = append(out, storage.PendingChange{Ref: ref, Change: ch, Err: err})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("bolt: read change feed: %w", err)
		}
		if len(out) > 0 || wait <= 0 {
			return out, nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		}
		select {
		case <-w:
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// AckChanges implements storage.FeedStore: the records are deleted in one
// write transaction. Unknown refs are ignored.
func (b *Backend) AckChanges(ctx context.Context, refs []string) error {
	if err := b.feedOn(); err != nil {
		return err
	}
	if len(refs) == 0 {
		return nil
	}
	if err := b.check(ctx); err != nil {
		return err
	}
	err := b.update(func(bk subjects) error {
		fb := bk.tx.Bucket(feedBucket)
		if fb == nil {
			return nil
		}
		var key [8]byte
		for _, r := range refs {
			n, err := strconv.ParseUint(r, 10, 64)
			if err != nil {
				continue
			}
			binary.BigEndian.PutUint64(key[:], n)
			if err := fb.Delete(key[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bolt: remove %d change records: %w", len(refs), err)
	}
	return nil
}

// FeedLease implements storage.FeedStore with a lease inside the process:
// only this process can open the file, so the relays of a bolt store all
// run in the process that writes it, and the lease only makes one of them
// (one per Backend) active. It is held for ttl and renewed by its owner; a
// relay whose Run ended releases it. It never fails on an open Backend.
func (b *Backend) FeedLease(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	if err := b.feedOn(); err != nil {
		return false, err
	}
	if err := b.check(ctx); err != nil {
		return false, err
	}
	f := b.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.owner == owner || f.owner == "" || !now.Before(f.until) {
		f.owner, f.until = owner, now.Add(ttl)
		return true, nil
	}
	return false, nil
}

// ReleaseFeedLease implements storage.FeedStore.
func (b *Backend) ReleaseFeedLease(_ context.Context, owner string) error {
	if err := b.feedOn(); err != nil {
		return err
	}
	f := b.feed
	f.mu.Lock()
	if f.owner == owner {
		f.owner = ""
	}
	f.mu.Unlock()
	return nil
}
