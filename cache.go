package krules

import "github.com/krules-go/krules/storage"

// propCache is one kind's part of a Subject's write cache: an
// insertion-ordered map plus the changes Store must write.
type propCache struct {
	names   []string
	values  map[string]any
	dirty   map[string]struct{} // to put on Store
	deleted map[string]struct{} // to delete on Store
}

func newPropCache(props []storage.Property) propCache {
	c := propCache{names: make([]string, 0, len(props)), values: make(map[string]any, len(props))}
	for _, p := range props {
		if _, dup := c.values[p.Name]; !dup {
			c.names = append(c.names, p.Name)
		}
		c.values[p.Name] = p.Value
	}
	return c
}

func (c *propCache) get(name string) (any, bool) {
	v, ok := c.values[name]
	return v, ok
}

// put stores a value; dirty says whether Store must write it.
func (c *propCache) put(name string, v any, dirty bool) {
	if _, ok := c.values[name]; !ok {
		c.names = append(c.names, name)
	}
	c.values[name] = v
	delete(c.deleted, name)
	if dirty {
		if c.dirty == nil {
			c.dirty = make(map[string]struct{})
		}
		c.dirty[name] = struct{}{}
	} else {
		delete(c.dirty, name)
	}
}

// remove drops a value; pending says whether Store must delete it.
func (c *propCache) remove(name string, pending bool) {
	if _, ok := c.values[name]; ok {
		delete(c.values, name)
		for i, n := range c.names {
			if n == name {
				c.names = append(c.names[:i:i], c.names[i+1:]...)
				break
			}
		}
	}
	delete(c.dirty, name)
	if pending {
		if c.deleted == nil {
			c.deleted = make(map[string]struct{})
		}
		c.deleted[name] = struct{}{}
	} else {
		delete(c.deleted, name)
	}
}

func (c *propCache) batch(kind storage.Kind, b *storage.Batch) {
	for name := range c.deleted {
		b.Deletes = append(b.Deletes, storage.Key{Kind: kind, Name: name})
	}
	for _, name := range c.names {
		if _, ok := c.dirty[name]; ok {
			b.Puts = append(b.Puts, storage.Write{Key: storage.Key{Kind: kind, Name: name}, Value: c.values[name]})
		}
	}
}

func (c *propCache) toMap() map[string]any {
	m := make(map[string]any, len(c.names))
	for _, n := range c.names {
		m[n] = storage.Clone(c.values[n])
	}
	return m
}

// pending reports whether the cache holds changes Store has not written.
func (c *propCache) pending() bool { return len(c.dirty) > 0 || len(c.deleted) > 0 }

// isPending reports whether name has an unsaved change (put or delete).
func (c *propCache) isPending(name string) bool {
	if _, ok := c.dirty[name]; ok {
		return true
	}
	_, ok := c.deleted[name]
	return ok
}
