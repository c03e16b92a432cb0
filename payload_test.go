package krules_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/krules-go/krules"
)

type myInt int16
type myFloat float32
type myString string
type myBool bool

// TestPayloadInt: every Go integer type, integral floats, json.Number and
// named types read as int64; anything else (fractions, out of range, strings,
// missing keys) is not ok.
func TestPayloadInt(t *testing.T) {
	p := krules.Payload{
		"int": 7, "int8": int8(-8), "int16": int16(16), "int32": int32(-32), "int64": int64(math.MaxInt64),
		"uint": uint(9), "uint8": uint8(255), "uint16": uint16(16), "uint32": uint32(32), "uint64": uint64(64),
		"uintptr": uintptr(3), "float64": 42.0, "float32": float32(-3), "number": json.Number("12"),
		"numberf": json.Number("12.0"), "named": myInt(-5), "namedf": myFloat(2),
		"frac": 1.5, "huge": uint64(math.MaxUint64), "bigf": 1e19, "nan": math.NaN(), "inf": math.Inf(1),
		"str": "12", "bool": true, "nil": nil, "badnum": json.Number("x"), "list": []any{1},
	}
	ok := map[string]int64{
		"int": 7, "int8": -8, "int16": 16, "int32": -32, "int64": math.MaxInt64, "uint": 9, "uint8": 255,
		"uint16": 16, "uint32": 32, "uint64": 64, "uintptr": 3, "float64": 42, "float32": -3, "number": 12,
		"numberf": 12, "named": -5, "namedf": 2,
	}
	for k := range p {
		got, gotOK := p.Int(k)
		want, wantOK := ok[k]
		if gotOK != wantOK || got != want {
			t.Errorf("Int(%q) of %T = %d, %v; want %d, %v", k, p[k], got, gotOK, want, wantOK)
		}
	}
	if v, ok := p.Int("missing"); ok || v != 0 {
		t.Errorf("Int(missing) = %d, %v", v, ok)
	}
}

func TestPayloadFloat(t *testing.T) {
	p := krules.Payload{
		"f64": 1.5, "f32": float32(0.5), "int": 3, "int64": int64(-4), "uint8": uint8(5), "number": json.Number("2.25"),
		"named": myFloat(1.25), "namedi": myInt(6),
		"str": "1.5", "bool": false, "nil": nil, "badnum": json.Number("1e"),
	}
	ok := map[string]float64{"f64": 1.5, "f32": 0.5, "int": 3, "int64": -4, "uint8": 5, "number": 2.25, "named": 1.25, "namedi": 6}
	for k := range p {
		got, gotOK := p.Float(k)
		want, wantOK := ok[k]
		if gotOK != wantOK || got != want {
			t.Errorf("Float(%q) of %T = %v, %v; want %v, %v", k, p[k], got, gotOK, want, wantOK)
		}
	}
}

func TestPayloadStringBool(t *testing.T) {
	p := krules.Payload{"s": "x", "named": myString("y"), "num": json.Number("1"), "int": 1, "nil": nil,
		"b": true, "nb": myBool(true), "bs": "true", "bi": 1}
	for k, want := range map[string]string{"s": "x", "named": "y"} {
		if got, ok := p.String(k); !ok || got != want {
			t.Errorf("String(%q) = %q, %v", k, got, ok)
		}
	}
	for _, k := range []string{"num", "int", "nil", "b", "missing"} {
		if got, ok := p.String(k); ok || got != "" {
			t.Errorf("String(%q) of %T = %q, true; want not ok", k, p[k], got)
		}
	}
	for _, k := range []string{"b", "nb"} {
		if got, ok := p.Bool(k); !ok || !got {
			t.Errorf("Bool(%q) = %v, %v", k, got, ok)
		}
	}
	for _, k := range []string{"bs", "bi", "nil", "s", "missing"} {
		if got, ok := p.Bool(k); ok || got {
			t.Errorf("Bool(%q) of %T = %v, true; want not ok", k, p[k], got)
		}
	}
}

// TestPayloadGettersAfterRoundTrip: what a payload holds after a JSON round
// trip (as over HTTP or NATS, with or without UseNumber) reads the same as
// the local values did.
func TestPayloadGettersAfterRoundTrip(t *testing.T) {
	local := krules.Payload{"amount": 1500, "ratio": float32(0.25), "name": "n", "vip": true}
	data, err := json.Marshal(local)
	if err != nil {
		t.Fatal(err)
	}
	var plain krules.Payload
	if err := json.Unmarshal(data, &plain); err != nil {
		t.Fatal(err)
	}
	var numbers krules.Payload
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.UseNumber()
	if err := dec.Decode(&numbers); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]krules.Payload{"local": local, "float64": plain, "json.Number": numbers} {
		if v, ok := p.Int("amount"); !ok || v != 1500 {
			t.Errorf("%s: Int(amount) = %d, %v", name, v, ok)
		}
		if v, ok := p.Float("ratio"); !ok || v != 0.25 {
			t.Errorf("%s: Float(ratio) = %v, %v", name, v, ok)
		}
		if v, ok := p.String("name"); !ok || v != "n" {
			t.Errorf("%s: String(name) = %q, %v", name, v, ok)
		}
		if v, ok := p.Bool("vip"); !ok || !v {
			t.Errorf("%s: Bool(vip) = %v, %v", name, v, ok)
		}
	}
}

func TestPayloadDecode(t *testing.T) {
	type order struct {
		ID     string  `json:"id"`
		Amount int     `json:"amount"`
		Ratio  float64 `json:"ratio"`
		Tags   []string
		Keep   string `json:"keep"`
	}
	p := krules.Payload{"id": "o-1", "amount": int64(1500), "ratio": json.Number("0.5"), "Tags": []any{"a", "b"}}
	o := order{Keep: "kept"}
	if err := p.Decode(&o); err != nil {
		t.Fatal(err)
	}
	if o.ID != "o-1" || o.Amount != 1500 || o.Ratio != 0.5 || len(o.Tags) != 2 || o.Keep != "kept" {
		t.Errorf("Decode = %+v", o)
	}
	var wrong struct {
		Amount string `json:"amount"`
	}
	if err := p.Decode(&wrong); !errors.Is(err, krules.ErrInvalidValue) {
		t.Errorf("Decode into a wrong type: %v, want ErrInvalidValue", err)
	}
	if err := p.Decode(o); !errors.Is(err, krules.ErrInvalidValue) {
		t.Errorf("Decode into a non-pointer: %v, want ErrInvalidValue", err)
	}
	if err := (krules.Payload{"f": math.NaN()}).Decode(&o); !errors.Is(err, krules.ErrInvalidValue) {
		t.Errorf("Decode of NaN: %v, want ErrInvalidValue", err)
	}
}

// TestEventDecode: a handler decodes the payload of the event it gets.
func TestEventDecode(t *testing.T) {
	app := krules.New()
	var got struct {
		Amount int64 `json:"amount"`
	}
	var decodeErr error
	app.On("order.created").Do(func(_ context.Context, ev *krules.Event) error {
		decodeErr = ev.Decode(&got)
		return nil
	})
	if err := app.Emit(context.Background(), "order.created", app.Subject("o"), krules.Payload{"amount": uint16(70)}); err != nil {
		t.Fatal(err)
	}
	if decodeErr != nil || got.Amount != 70 {
		t.Fatalf("Decode in handler: %+v, %v", got, decodeErr)
	}
}
