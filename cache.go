package krules

import (
	"iter"

	"github.com/krules-go/krules/storage"
)

// entry states of a propCache.
const (
	stClean   uint8 = iota // as loaded (or as written by Store / NoCache)
	stDirty                // to put on Store
	stDeleted              // tombstone: to delete on Store
	stHole                 // unused slot (removed, or moved to the end)
)

// entry is one property of a propCache: its name, value, whether Store
// must write it, and for a pending entry the handle's write clock when the
// cached write was made (Subject.dseq; 0 for entries not written by a
// cached write).
type entry struct {
	name  string
	v     any
	gen   uint64
	state uint8
}

// propCache is one kind's part of a Subject's write cache. The entries are
// kept in insertion order in a slice, and a map gives each name's index, so
// a write to a cached property is one map lookup and a store into the
// slice; a new property adds one map insertion.
type propCache struct {
	idx     map[string]int32
	ents    []entry
	live    int // entries in state stClean or stDirty
	pending int // entries in state stDirty or stDeleted
	holes   int // entries in state stHole
}

func newPropCache(props []storage.Property) propCache {
	c := propCache{idx: make(map[string]int32, len(props)), ents: make([]entry, 0, len(props))}
	for _, p := range props {
		if i, dup := c.idx[p.Name]; dup {
			c.ents[i].v = p.Value
			continue
		}
		c.idx[p.Name] = int32(len(c.ents))
		c.ents = append(c.ents, entry{name: p.Name, v: p.Value})
		c.live++
	}
	return c
}

// find returns the index of name's entry (live or tombstone), or -1.
func (c *propCache) find(name string) int {
	if i, ok := c.idx[name]; ok {
		return int(i)
	}
	return -1
}

// at returns the value at index i (from find) and whether it is live.
func (c *propCache) at(i int) (any, bool) {
	if i < 0 || c.ents[i].state == stDeleted {
		return nil, false
	}
	return c.ents[i].v, true
}

func (c *propCache) get(name string) (any, bool) { return c.at(c.find(name)) }

// put stores a value; dirty says whether Store must write it, gen is the
// write clock of a dirty write (0 otherwise).
func (c *propCache) put(name string, v any, dirty bool, gen uint64) {
	c.putAt(c.find(name), name, v, dirty, gen)
}

// putAt stores a value for name, whose index (from find) is i.
func (c *propCache) putAt(i int, name string, v any, dirty bool, gen uint64) {
	st := stClean
	if dirty {
		st = stDirty
		c.pending++
	}
	if i >= 0 {
		e := &c.ents[i]
		if e.state != stDeleted {
			if e.state == stDirty {
				c.pending--
			}
			e.v, e.state, e.gen = v, st, gen
			return
		}
		// A property added back after a delete goes to the end, as new.
		c.pending--
		*e = entry{state: stHole}
		c.holes++
	}
	if c.idx == nil {
		c.idx = make(map[string]int32)
	}
	c.idx[name] = int32(len(c.ents))
	c.ents = append(c.ents, entry{name: name, v: v, gen: gen, state: st})
	c.live++
	c.compact()
}

// remove drops a value; pending says whether Store must delete it, gen is
// the write clock of a pending delete (0 otherwise).
func (c *propCache) remove(name string, pending bool, gen uint64) {
	i := c.find(name)
	if i < 0 {
		if pending {
			if c.idx == nil {
				c.idx = make(map[string]int32)
			}
			c.idx[name] = int32(len(c.ents))
			c.ents = append(c.ents, entry{name: name, gen: gen, state: stDeleted})
			c.pending++
		}
		return
	}
	e := &c.ents[i]
	if e.state != stDeleted {
		c.live--
	}
	if e.state != stClean {
		c.pending--
	}
	if pending {
		*e = entry{name: name, gen: gen, state: stDeleted}
		c.pending++
		return
	}
	*e = entry{state: stHole}
	c.holes++
	delete(c.idx, name)
	c.compact()
}

// compact drops the holes once they are most of the entries.
func (c *propCache) compact() {
	if c.holes < 16 || c.holes < len(c.ents)/2 {
		return
	}
	out := c.ents[:0]
	for _, e := range c.ents {
		if e.state != stHole {
			c.idx[e.name] = int32(len(out))
			out = append(out, e)
		}
	}
	clear(c.ents[len(out):])
	c.ents, c.holes = out, 0
}

// all yields the live properties in insertion order.
func (c *propCache) all() iter.Seq2[string, any] {
	return func(yield func(string, any) bool) {
		for i := range c.ents {
			if e := &c.ents[i]; e.state == stClean || e.state == stDirty {
				if !yield(e.name, e.v) {
					return
				}
			}
		}
	}
}

// names returns the live property names in insertion order.
func (c *propCache) names() []string {
	out := make([]string, 0, c.live)
	for n := range c.all() {
		out = append(out, n)
	}
	return out
}

func (c *propCache) batch(kind storage.Kind, b *storage.Batch) {
	if c.pending == 0 {
		return
	}
	for i := range c.ents {
		switch e := &c.ents[i]; e.state {
		case stDeleted:
			b.Deletes = append(b.Deletes, storage.Key{Kind: kind, Name: e.name})
		case stDirty:
			b.Puts = append(b.Puts, storage.Write{Key: storage.Key{Kind: kind, Name: e.name}, Value: e.v})
		}
	}
}

func (c *propCache) toMap() map[string]any {
	m := make(map[string]any, c.live)
	for n, v := range c.all() {
		m[n] = storage.Clone(v)
	}
	return m
}

// pendingOnly returns a cache of c's unsaved changes only (puts and
// deletes, with their stamps), in c's order.
func (c *propCache) pendingOnly() propCache {
	var out propCache
	for i := range c.ents {
		switch e := &c.ents[i]; e.state {
		case stDirty:
			out.put(e.name, e.v, true, e.gen)
		case stDeleted:
			out.remove(e.name, true, e.gen)
		}
	}
	return out
}

// hasPending reports whether the cache holds changes Store has not written.
func (c *propCache) hasPending() bool { return c.pending > 0 }

// isPending reports whether name has an unsaved change (put or delete).
func (c *propCache) isPending(name string) bool {
	i := c.find(name)
	return i >= 0 && (c.ents[i].state == stDirty || c.ents[i].state == stDeleted)
}

// pendingAfter reports whether name has an unsaved change made by a cached
// write later than write clock value gen.
func (c *propCache) pendingAfter(name string, gen uint64) bool {
	i := c.find(name)
	return i >= 0 && (c.ents[i].state == stDirty || c.ents[i].state == stDeleted) && c.ents[i].gen > gen
}
