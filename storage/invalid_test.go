package storage_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/krules-go/krules/storage"
)

func TestUnmarshalPropertyTolerant(t *testing.T) {
	deep := strings.Repeat("[", 600) + strings.Repeat("]", 600)
	for _, raw := range []string{`NaN`, `Infinity`, `-Infinity`, `[1, NaN]`, `{"a": -Infinity}`, `"a\u0000b"`,
		`{"k\u0000": 1}`, deep, `1e400`, `not json`, `[1,`, ``, `NaNx`} {
		v := storage.UnmarshalProperty([]byte(raw))
		inv, ok := v.(storage.Invalid)
		if !ok || inv.Raw != raw || !errors.Is(inv.Err, storage.ErrInvalidValue) {
			t.Errorf("UnmarshalProperty(%.30q) = %.60v, want an Invalid holding the text and ErrInvalidValue", raw, v)
		}
	}
	for raw, want := range map[string]any{`1`: int64(1), `[1, 2.5]`: []any{int64(1), 2.5}, `"NaN"`: "NaN", `null`: nil} {
		if got := storage.UnmarshalProperty([]byte(raw)); !storage.Equal(got, want) {
			t.Errorf("UnmarshalProperty(%q) = %#v, want %#v", raw, got, want)
		}
	}
	// Strict Unmarshal is unchanged: NaN stays a syntax error.
	if _, err := storage.Unmarshal([]byte(`NaN`)); err == nil || errors.Is(err, storage.ErrInvalidValue) {
		t.Errorf("Unmarshal(NaN) = %v, want a syntax error", err)
	}
}

func TestUnmarshalObjectTolerant(t *testing.T) {
	deep := strings.Repeat("[", 600) + strings.Repeat("]", 600)
	raw := `{"b": NaN, "a": 1, "c": {"x\u0000": 1}, "d": ` + deep + `, "e": [1, Infinity], "f\u0000": 2, "g": 1, "g": "x\u0000", "h": "x\u0000", "h": 2}`
	props, err := storage.UnmarshalObject([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	var names []string
	for _, p := range props {
		got[p.Name] = p.Value
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "a,b,c,d,e,f\x00,g,h" {
		t.Fatalf("names = %q, want sorted a..h", names)
	}
	if got["a"] != int64(1) || got["h"] != int64(2) {
		t.Errorf("valid members: a = %#v, h = %#v", got["a"], got["h"])
	}
	wantRaw := map[string]string{"b": `NaN`, "c": `{"x\u0000": 1}`, "d": deep, "e": `[1, Infinity]`, "f\x00": `2`, "g": `"x\u0000"`}
	for name, w := range wantRaw {
		inv, ok := got[name].(storage.Invalid)
		if !ok || inv.Raw != w || !errors.Is(inv.Err, storage.ErrInvalidValue) {
			t.Errorf("member %q = %#v, want an Invalid with Raw %.30q", name, got[name], w)
		}
	}
	// A value exactly at the nesting limit loads inside an object too.
	limit := strings.Repeat("[", 512) + strings.Repeat("]", 512)
	props, err = storage.UnmarshalObject([]byte(`{"x":` + limit + `}`))
	if err != nil || len(props) != 1 {
		t.Fatalf("object with a 512-deep member: (%v, %v)", props, err)
	}
	if _, bad := props[0].Value.(storage.Invalid); bad {
		t.Errorf("a 512-deep member is Invalid; Normalize accepts it")
	}
	for _, bad := range []string{`[1]`, `{"a":1`, `{"a": tru}`, `{"a":1} x`, `{"a": NaNa}`} {
		if _, err := storage.UnmarshalObject([]byte(bad)); err == nil {
			t.Errorf("UnmarshalObject(%q): no error", bad)
		}
	}
}

func TestInvalidIsNotAValue(t *testing.T) {
	inv := storage.Invalid{Raw: "NaN", Err: fmt.Errorf("%w: NaN", storage.ErrInvalidValue)}
	for _, v := range []any{inv, []any{1, inv}, map[string]any{"a": inv}} {
		if _, err := storage.Normalize(v); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Normalize(%v) = %v, want ErrInvalidValue", v, err)
		}
		if _, err := storage.Marshal(v); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Marshal(%v) = %v, want ErrInvalidValue", v, err)
		}
	}
	inc, _ := storage.NewOp(storage.OpInc, 1)
	called := false
	for _, m := range []storage.Mutation{{Op: inc}, {Func: func(any, bool) (any, error) { called = true; return 1, nil }}} {
		if _, err := m.Apply(inv, true); !errors.Is(err, storage.ErrInvalidValue) {
			t.Errorf("Apply on an Invalid: %v, want ErrInvalidValue", err)
		}
	}
	if called {
		t.Error("an update function was called with an Invalid")
	}
	if v, err := (storage.Mutation{Value: int64(2)}).Apply(inv, true); err != nil || v != int64(2) {
		t.Errorf("plain value over an Invalid: (%v, %v)", v, err)
	}
	if _, err := storage.StoredValue(inv); !errors.Is(err, storage.ErrInvalidValue) {
		t.Errorf("StoredValue(Invalid) = %v", err)
	}
}

func ExampleInvalid() {
	props, _ := storage.UnmarshalObject([]byte(`{"n": NaN, "ok": 1}`)) // as Python's json.dumps writes
	for _, p := range props {
		fmt.Printf("%s: %v\n", p.Name, p.Value)
	}
	b, _ := json.Marshal(props[0].Value)
	fmt.Println(string(b))
	// Output:
	// n: <invalid: NaN (invalid value: NaN is not a JSON number)>
	// ok: 1
	// {"$invalid":"NaN","error":"invalid value: NaN is not a JSON number"}
}

func TestValidateNameLimit(t *testing.T) {
	ok := strings.Repeat("a", storage.MaxNameLen-2) + "é"
	if err := storage.ValidateName("subject", ok); err != nil {
		t.Fatalf("a name of MaxNameLen bytes: %v", err)
	}
	long := strings.Repeat("é", 20000) // 40 KB
	for _, name := range []string{ok + "x", long} {
		err := storage.ValidateName("property", name)
		if !errors.Is(err, storage.ErrInvalidName) {
			t.Fatalf("a name of %d bytes: %v, want ErrInvalidName", len(name), err)
		}
		if len(err.Error()) > 200 {
			t.Errorf("error of %d bytes for a name of %d: %.100q", len(err.Error()), len(name), err)
		}
	}
	want := `invalid name: property name "` + strings.Repeat("é", 32) + `…(40000 bytes)" is longer than 1024 bytes`
	if err := storage.ValidateName("property", long); err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	// Cut never splits a UTF-8 sequence.
	odd := "x" + strings.Repeat("é", 2000) + "\x00"
	if err := storage.ValidateName("subject", odd); !errors.Is(err, storage.ErrInvalidName) || !strings.Contains(err.Error(), `"x`+strings.Repeat("é", 31)+`…(4002 bytes)"`) {
		t.Errorf("error = %v", err)
	}
	key := storage.Key{Kind: storage.Default, Name: ok + "x"}
	if err := storage.ValidateKey("s", &key); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("ValidateKey of a long property: %v", err)
	}
}
