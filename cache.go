package krules

import "github.com/krules-go/krules/storage"

// entry states of a propCache.
const (
	stClean   uint8 = iota // as loaded (or as written by Store / NoCache)
	stDirty                // to put on Store
	stDeleted              // tombstone: to delete on Store
)

// entry is one property of a propCache: its value and whether Store must
// write it. One map entry per property, so a cached write is one lookup and
// one assignment.
type entry struct {
	v     any
	state uint8
}

// propCache is one kind's part of a Subject's write cache: the properties
// in insertion order plus the changes Store must write.
type propCache struct {
	names   []string // live (not deleted) properties, insertion order
	m       map[string]entry
	pending int // entries in state stDirty or stDeleted
}

func newPropCache(props []storage.Property) propCache {
	c := propCache{names: make([]string, 0, len(props)), m: make(map[string]entry, len(props))}
	for _, p := range props {
		if _, dup := c.m[p.Name]; !dup {
			c.names = append(c.names, p.Name)
		}
		c.m[p.Name] = entry{v: p.Value}
	}
	return c
}

func (c *propCache) get(name string) (any, bool) {
	e, ok := c.m[name]
	if !ok || e.state == stDeleted {
		return nil, false
	}
	return e.v, true
}

// put stores a value; dirty says whether Store must write it.
func (c *propCache) put(name string, v any, dirty bool) {
	e, ok := c.m[name]
	if !ok || e.state == stDeleted {
		c.names = append(c.names, name)
	}
	if ok && e.state != stClean {
		c.pending--
	}
	st := stClean
	if dirty {
		st = stDirty
		c.pending++
	}
	if c.m == nil {
		c.m = make(map[string]entry)
	}
	c.m[name] = entry{v: v, state: st}
}

// remove drops a value; pending says whether Store must delete it.
func (c *propCache) remove(name string, pending bool) {
	e, ok := c.m[name]
	if ok && e.state != stDeleted {
		for i, n := range c.names {
			if n == name {
				c.names = append(c.names[:i:i], c.names[i+1:]...)
				break
			}
		}
	}
	if ok && e.state != stClean {
		c.pending--
	}
	if pending {
		if c.m == nil {
			c.m = make(map[string]entry)
		}
		c.m[name] = entry{state: stDeleted}
		c.pending++
	} else if ok {
		delete(c.m, name)
	}
}

func (c *propCache) batch(kind storage.Kind, b *storage.Batch) {
	if c.pending == 0 {
		return
	}
	for name, e := range c.m {
		if e.state == stDeleted {
			b.Deletes = append(b.Deletes, storage.Key{Kind: kind, Name: name})
		}
	}
	for _, name := range c.names {
		if e := c.m[name]; e.state == stDirty {
			b.Puts = append(b.Puts, storage.Write{Key: storage.Key{Kind: kind, Name: name}, Value: e.v})
		}
	}
}

func (c *propCache) toMap() map[string]any {
	m := make(map[string]any, len(c.names))
	for _, n := range c.names {
		m[n] = storage.Clone(c.m[n].v)
	}
	return m
}

// hasPending reports whether the cache holds changes Store has not written.
func (c *propCache) hasPending() bool { return c.pending > 0 }

// isPending reports whether name has an unsaved change (put or delete).
func (c *propCache) isPending(name string) bool {
	e, ok := c.m[name]
	return ok && e.state != stClean
}
