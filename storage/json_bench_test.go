package storage_test

import (
	"fmt"
	"testing"

	"github.com/krules-go/krules/storage"
)

// benchSubject is a subject-sized value: 100 properties of the mixed small
// shapes subjects hold (integers, floats, short strings, small objects and
// lists).
func benchSubject() map[string]any {
	m := make(map[string]any, 100)
	for i := range 100 {
		var v any
		switch i % 5 {
		case 0:
			v = int64(i * 1000)
		case 1:
			v = fmt.Sprintf("value-%d", i)
		case 2:
			v = map[string]any{"n": int64(i), "ok": true, "ratio": float64(i) / 8}
		case 3:
			v = []any{int64(i), "tag", nil, 2.5}
		case 4:
			v = fmt.Sprintf("naïve \"quoted\" line %d\n", i)
		}
		m[fmt.Sprintf("prop-%d", i)] = v
	}
	return m
}

var benchValues = []struct {
	name string
	v    any
}{
	{"int", int64(1234567)},
	{"string", "value-42"},
	{"subject100", benchSubject()},
}

// go test -run '^$' -bench . -benchtime 200ms ./storage/
func BenchmarkMarshal(b *testing.B) {
	for _, c := range benchValues {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := storage.Marshal(c.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	for _, c := range benchValues {
		text, err := storage.Marshal(c.v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				if _, err := storage.Unmarshal(text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
