package postgres

import (
	"encoding/json"

	"github.com/krules-go/krules/storage"
)

// maxDepth is the nesting limit of the value model (storage.Normalize).
const maxDepth = 512

// exactFloat is 2^53: every integral float64 below it in magnitude is the
// exact value of the decimal text it was parsed from.
const exactFloat = 1 << 53

// unmarshal decodes JSONB text into the value model, with the result of
// storage.Unmarshal. The text comes from PostgreSQL, so it is one valid JSON
// value of valid UTF-8 without NUL characters; the common case is decoded
// with encoding/json straight into float64 numbers, which are exact for
// integers below 2^53. Text holding a number beyond that, nesting deeper
// than the model allows, or failing to decode goes through storage.Unmarshal,
// which parses numbers exactly and reports errors.
func unmarshal(raw []byte) (any, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err == nil {
		if nv, ok := fixNumbers(v, 0); ok {
			return nv, nil
		}
	}
	return storage.Unmarshal(raw)
}

// fixNumbers turns integral float64 numbers into int64, in place. It
// reports false when the value needs exact decoding.
func fixNumbers(v any, depth int) (any, bool) {
	if depth > maxDepth {
		return nil, false
	}
	switch x := v.(type) {
	case float64:
		if x >= exactFloat || x <= -exactFloat {
			return nil, false
		}
		if i := int64(x); float64(i) == x {
			return i, true
		}
		return x, true
	case []any:
		for i, e := range x {
			n, ok := fixNumbers(e, depth+1)
			if !ok {
				return nil, false
			}
			x[i] = n
		}
	case map[string]any:
		for k, e := range x {
			switch e.(type) {
			case float64, []any, map[string]any:
				n, ok := fixNumbers(e, depth+1)
				if !ok {
					return nil, false
				}
				x[k] = n
			}
		}
	}
	return v, true
}
