package postgres

import (
	"fmt"
	"strings"
	"testing"

	"github.com/krules-go/krules/storage"
)

// The fast decoder must give exactly what storage.Unmarshal gives (same Go
// types and values) on JSON as PostgreSQL prints it.
var decodeSeeds = []string{
	`null`, `true`, `false`, `0`, `-0`, `1`, `-1`, `1.0`, `75000.0`, `0.25`, `-2.5`, `1e2`,
	`255`, `256`, `4503599627370495.5`, `4503599627370496.4`, `9007199254740991`, `9007199254740992`,
	`9007199254740993`, `-9007199254740993`, `9223372036854775807`, `9223372036854775808`,
	`-9223372036854775808`, `18446744073709551616`, `1` + strings.Repeat("0", 300), `0.` + strings.Repeat("0", 320) + `5`,
	`0.1`, `0.30000000000000004`, `123456789.123456789`, `"x"`, `"ключ \" \\ \u00e9"`, `[]`, `{}`,
	`[1, 2.0, 2.5, "a", null, [9007199254740993], {"a": {"b": [1.0]}}]`,
	`{"age": 30, "salary": 75000.0, "big": 9007199254740993, "tags": ["a"], "m": {"x": 1.5}}`,
	strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600),
	strings.Repeat(`[`, 500) + `1.0` + strings.Repeat(`]`, 500),
}

func checkSameDecode(t *testing.T, raw string) {
	t.Helper()
	want, wantErr := storage.Unmarshal([]byte(raw))
	got, gotErr := unmarshal([]byte(raw))
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("unmarshal(%.80q): err %v, storage.Unmarshal err %v", raw, gotErr, wantErr)
	}
	if wantErr != nil {
		return
	}
	if g, w := fmt.Sprintf("%#v", got), fmt.Sprintf("%#v", want); g != w {
		t.Fatalf("unmarshal(%.80q) = %.200s, storage.Unmarshal = %.200s", raw, g, w)
	}
}

func TestUnmarshalMatchesStorage(t *testing.T) {
	for _, s := range decodeSeeds {
		checkSameDecode(t, s)
	}
}

func FuzzUnmarshalMatchesStorage(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		// PostgreSQL only ever prints valid JSON of valid UTF-8 without NUL.
		v, err := storage.Unmarshal([]byte(raw))
		if err != nil {
			return
		}
		if _, err := storage.Marshal(v); err != nil {
			return
		}
		checkSameDecode(t, raw)
	})
}
