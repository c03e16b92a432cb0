package krules

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidStringMatchesReference(t *testing.T) {
	ref := func(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }
	base := []string{"", "a", "status", "exactly8", "longer than eight bytes", "héllo wörld, more than 8", "\xff", "\x00", "abcdefg\x00", "abcdefgh\x00", "abcdefghijklmno\x80", "日本語の文字列です", strings.Repeat("x", 63) + "\x00"}
	for _, s := range base {
		for cut := 0; cut <= len(s); cut++ {
			for _, v := range []string{s[:cut], s[cut:], "pad" + s[cut:]} {
				if got, want := validString(v), ref(v); got != want {
					t.Errorf("validString(%q) = %v, want %v", v, got, want)
				}
			}
		}
	}
}

func TestIntAsInt64(t *testing.T) {
	// big is 1<<40 on 64-bit platforms and 1<<30 on 32-bit ones (the test
	// compiles on both: GOARCH=386 go vet).
	const big = 1 << (30 + 10*(^uint(0)>>63))
	for _, n := range []int{0, 1, -1, 255, 256, big, -big * 2, int(^uint(0) >> 1), -int(^uint(0)>>1) - 1} {
		var v any = n
		got := intAsInt64(v)
		if x, ok := got.(int64); !ok || x != int64(n) {
			t.Fatalf("intAsInt64(%d) = %#v", n, got)
		}
		if got != any(int64(n)) {
			t.Fatalf("intAsInt64(%d) is not == int64(%d) as an interface", n, n)
		}
		if v.(int) != n {
			t.Fatalf("the int box changed: %v", v)
		}
	}
	m, err := mutation(big)
	if err != nil || m.Value != any(int64(big)) {
		t.Fatalf("mutation(int) = %#v, %v; want an int64", m.Value, err)
	}
}
