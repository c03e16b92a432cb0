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
