package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A subject is stored as one value (key "r") in a top-level bucket named by
// the subject. The value is a small binary envelope around the JSON text of
// each property (storage.Marshal), in insertion order:
//
//	version byte (recordVersion)
//	uvarint  number of default properties
//	         per property: uvarint len(name) | name | uvarint len(json) | json
//	uvarint  number of extended properties
//	         per property: same
//
// Property values stay JSON text (the format of the Redis and PostgreSQL
// backends and of Python KRules); only the envelope is binary, so a write
// re-encodes the envelope without decoding the other values.
const recordVersion = 1

var errCorrupt = errors.New("corrupt subject record")

// entry is one property inside a record. name and val may alias the bbolt
// page they were read from: they are only valid inside the transaction.
type entry struct {
	name []byte
	val  []byte
}

// record is a decoded subject: sets[0] default, sets[1] extended properties.
type record struct {
	sets [2][]entry
}

func kindIndex(ext bool) int {
	if ext {
		return 1
	}
	return 0
}

// decodeRecord parses data without copying; nil or empty data is an empty
// record.
func decodeRecord(data []byte) (record, error) {
	var r record
	if len(data) == 0 {
		return r, nil
	}
	if data[0] != recordVersion {
		return r, fmt.Errorf("%w: unknown record version %d", errCorrupt, data[0])
	}
	p := data[1:]
	for s := 0; s < 2; s++ {
		n, k := binary.Uvarint(p)
		if k <= 0 || n > uint64(len(p)) {
			return r, fmt.Errorf("%w: bad property count", errCorrupt)
		}
		p = p[k:]
		es := make([]entry, 0, n)
		for i := uint64(0); i < n; i++ {
			var name, val []byte
			var ok bool
			if name, p, ok = chunk(p); !ok {
				return r, fmt.Errorf("%w: truncated property name", errCorrupt)
			}
			if val, p, ok = chunk(p); !ok {
				return r, fmt.Errorf("%w: truncated value of property %q", errCorrupt, name)
			}
			es = append(es, entry{name: name, val: val})
		}
		r.sets[s] = es
	}
	if len(p) != 0 {
		return r, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(p))
	}
	return r, nil
}

func chunk(p []byte) (c, rest []byte, ok bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, false
	}
	end := k + int(n)
	return p[k:end:end], p[end:], true
}

// find returns the index of the named property in set s, or -1.
func (r *record) find(s int, name string) int {
	for i, e := range r.sets[s] {
		if string(e.name) == name {
			return i
		}
	}
	return -1
}

// put replaces the value of a property or appends it (insertion order).
func (r *record) put(s int, name string, val []byte) {
	if i := r.find(s, name); i >= 0 {
		r.sets[s][i].val = val
		return
	}
	r.sets[s] = append(r.sets[s], entry{name: []byte(name), val: val})
}

// del removes a property keeping the order of the others; it reports
// whether the property existed.
func (r *record) del(s int, name string) bool {
	i := r.find(s, name)
	if i < 0 {
		return false
	}
	r.sets[s] = append(r.sets[s][:i:i], r.sets[s][i+1:]...)
	return true
}

// encode returns a freshly allocated value (bbolt keeps the slice passed to
// Put until the transaction ends, so it must never be reused).
func (r *record) encode() []byte {
	size := 1
	for s := 0; s < 2; s++ {
		size += binary.MaxVarintLen64
		for _, e := range r.sets[s] {
			size += 2*binary.MaxVarintLen64 + len(e.name) + len(e.val)
		}
	}
	out := make([]byte, 1, size)
	out[0] = recordVersion
	for s := 0; s < 2; s++ {
		out = binary.AppendUvarint(out, uint64(len(r.sets[s])))
		for _, e := range r.sets[s] {
			out = binary.AppendUvarint(out, uint64(len(e.name)))
			out = append(out, e.name...)
			out = binary.AppendUvarint(out, uint64(len(e.val)))
			out = append(out, e.val...)
		}
	}
	return out
}
