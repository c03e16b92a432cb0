package bolt

import (
	"errors"
	"reflect"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	var r record
	r.put(0, "b", []byte(`1`))
	r.put(0, "a", []byte(`"x"`))
	r.put(1, "meta", []byte(`{"k":[1,2]}`))
	r.put(0, "b", []byte(`2`))
	r.put(0, "", []byte(`null`))
	data := r.encode()
	got, err := decodeRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("round trip: got %+v want %+v", got, r)
	}
	if !got.del(0, "a") || got.del(0, "a") || got.find(0, "b") != 0 || got.find(0, "") != 1 {
		t.Fatalf("del/find wrong: %+v", got)
	}
}

func TestDecodeRecordRejectsCorruptData(t *testing.T) {
	var r record
	r.put(0, "name", []byte(`"John"`))
	good := r.encode()
	for name, data := range map[string][]byte{
		"version":   append([]byte{9}, good[1:]...),
		"truncated": good[:len(good)-2],
		"trailing":  append(append([]byte{}, good...), 0),
		"count":     {recordVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"len":       {recordVersion, 1, 0x7f, 'a'},
	} {
		if _, err := decodeRecord(data); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: err = %v, want errCorrupt", name, err)
		}
	}
	if r, err := decodeRecord(nil); err != nil || len(r.sets[0])+len(r.sets[1]) != 0 {
		t.Fatalf("empty: %+v %v", r, err)
	}
}
