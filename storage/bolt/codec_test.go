package bolt

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/krules-go/krules/storage"
)

var codecSeeds = []string{
	`null`, `true`, `false`, `0`, `-0`, `12`, `-12`, `9223372036854775807`, `9223372036854775808`,
	`-9223372036854775808`, `-9223372036854775809`, `1.5`, `-0.25`, `1e3`, `1E-3`, `2.0`, `1e400`,
	`01`, `1.`, `.5`, `-`, `1e`, `"plain"`, `""`, `"caf\u00e9"`, `"café"`, `"a\"b"`, `"a\\b"`, "\"a\x01b\"",
	`"\u0000"`, "\"\xff\"", `[]`, `[1,"a",[true,null],{}]`, `{"n":1,"ok":true}`, `{"a":{"b":[1.5,2]}}`,
	`{"a":1,"a":2}`, ` [ 1 , 2 ] `, `[1,]`, `{"a":}`, `{"a" 1}`, `{1:2}`, `[1 2]`, `tru`, `nul`, `"unterminated`,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
	`1 2`, `{"k":"v"} x`, "\"\u2028\"", `"<&>"`,
}

func FuzzDecodeValue(f *testing.F) {
	for _, s := range codecSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantErr := storage.Unmarshal(bytes.Clone(data))
		got, gotErr := decodeValue(data)
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("%q: error %v, storage.Unmarshal error %v", data, gotErr, wantErr)
		}
		if wantErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: got %#v, storage.Unmarshal gives %#v", data, got, want)
		}
	})
}

func FuzzEncodeValue(f *testing.F) {
	for _, s := range codecSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := storage.Unmarshal(data)
		if err != nil {
			return
		}
		for _, x := range []any{v, string(data)} {
			nx, err := storage.Normalize(x)
			if err != nil {
				continue
			}
			want, wantErr := storage.Marshal(nx)
			got, gotErr := encodeValue(nx)
			if (wantErr != nil) != (gotErr != nil) || !bytes.Equal(got, want) {
				t.Fatalf("%#v: encodeValue %q, %v; storage.Marshal %q, %v", nx, got, gotErr, want, wantErr)
			}
		}
	})
}
