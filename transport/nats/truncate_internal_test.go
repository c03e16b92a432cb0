package nats

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// The dead-letter error header is cut at a rune boundary, never inside a
// multi-byte UTF-8 sequence.
func TestTruncateUTF8(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"aé", 2, "a"},   // é is 2 bytes: not split
		{"a€b", 3, "a"},  // € is 3 bytes
		{"a€b", 4, "a€"}, // exactly after €
		{"😀x", 3, ""},    // 4-byte rune
		{"", 0, ""},
	} {
		if got := truncateUTF8(tc.in, tc.n); got != tc.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	long := "x" + strings.Repeat("é", 2000) // odd offset: a byte cut splits a rune
	got := truncateUTF8(long, maxDeadErrorBytes)
	if !utf8.ValidString(got) || len(got) > maxDeadErrorBytes || len(got) < maxDeadErrorBytes-3 {
		t.Errorf("cut to %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
	}
}
