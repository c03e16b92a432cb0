package storage_test

import (
	"errors"
	"testing"

	"github.com/krules-go/krules/storage"
)

type deepStruct struct {
	Next any `json:"next"`
}

// A value built partly of structs (normalised through JSON) must respect the
// nesting limit as a whole, so everything Normalize accepts loads back.
func TestNestingLimitAcrossJSONPath(t *testing.T) {
	build := func(lists, structs int) any {
		var inner any = int64(1)
		for i := 0; i < structs; i++ {
			inner = deepStruct{Next: inner}
		}
		for i := 0; i < lists; i++ {
			inner = []any{inner}
		}
		return inner
	}
	_, err := storage.Normalize(build(300, 300))
	if !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("600-deep value: err = %v, want ErrInvalidValue", err)
	}
	v, err := storage.Normalize(build(200, 200))
	if err != nil {
		t.Fatalf("400-deep value refused: %v", err)
	}
	data, err := storage.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	back, err := storage.Unmarshal(data)
	if err != nil || !storage.Equal(back, v) {
		t.Fatalf("round trip: %v", err)
	}
}
