package storage_test

import (
	"fmt"

	"github.com/krules-go/krules/storage"
)

func ExampleMarshal() {
	text, _ := storage.Marshal(map[string]any{"b": []any{int64(1), 2.5, 1e21}, "a": "<é>\n"})
	fmt.Println(string(text))
	// Output: {"a":"<é>\n","b":[1,2.5,1e+21]}
}

func ExampleUnmarshal() {
	v, _ := storage.Unmarshal([]byte(`{"n": 2.0, "big": 9007199254740993, "x": 0.5}`))
	m := v.(map[string]any)
	fmt.Printf("%T %v, %T %v, %T %v\n", m["n"], m["n"], m["big"], m["big"], m["x"], m["x"])
	// Output: int64 2, int64 9007199254740993, float64 0.5
}
