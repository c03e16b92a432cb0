package storagetest

import (
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/krules-go/krules/storage"
)

// sameTypeEqual reports whether a and b are the same value with the same Go
// types all the way down: int64 is not float64, a nil slice or map is not an
// empty one. It is stricter than storage.Equal on purpose: a handler must see
// the same types whatever the backend.
func sameTypeEqual(a, b any) bool {
	return reflect.DeepEqual(a, b)
}

// describe formats a value with its Go types, for failure messages.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "nil"
	case []any:
		if x == nil {
			return "[]any(nil)"
		}
		s := "[]any{"
		for i, e := range x {
			if i > 0 {
				s += ", "
			}
			s += describe(e)
		}
		return s + "}"
	case map[string]any:
		if x == nil {
			return "map[string]any(nil)"
		}
		s := "map[string]any{"
		i := 0
		for _, k := range sortedKeys(x) {
			if i > 0 {
				s += ", "
			}
			s += fmt.Sprintf("%q: %s", k, describe(x[k]))
			i++
		}
		return s + "}"
	}
	return fmt.Sprintf("%T(%#v)", v, v)
}

func propMap(ps []storage.Property) map[string]any {
	m := make(map[string]any, len(ps))
	for _, p := range ps {
		m[p.Name] = p.Value
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
