package krules

import (
	"fmt"

	"github.com/krules-go/krules/storage"
)

// readable returns a copy of a cached property's value for Get, or, for a
// stored value outside the value model (a storage.Invalid kept in place by a
// tolerant load), an error wrapping ErrInvalidValue that names the subject
// and the property. Keys, Has, Dict and ExtProps list such a property with
// its storage.Invalid value; it can be overwritten (Set), deleted and
// flushed, and Store never rewrites it unless it was changed.
func (s *Subject) readable(k storage.Kind, prop string, v any) (any, error) {
	switch v.(type) {
	case map[string]any, []any, storage.Invalid:
		return s.readableSlow(k, prop, v)
	}
	return v, nil // scalars need no copy
}

func (s *Subject) readableSlow(k storage.Kind, prop string, v any) (any, error) {
	if x, ok := v.(storage.Invalid); ok {
		return nil, fmt.Errorf("krules: get %s %q of subject %q: %w", what(k), prop, s.name, x.Err)
	}
	return storage.Clone(v), nil
}
