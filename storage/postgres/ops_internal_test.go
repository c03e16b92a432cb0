package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

// The raw column values of the set statement in both wire formats.
func TestStmtRowFormats(t *testing.T) {
	for _, c := range []struct {
		raw    []byte
		format int16
		want   string
		ok     bool
	}{
		{nil, pgx.BinaryFormatCode, "", true},
		{[]byte("\x01{\"a\":1}"), pgx.BinaryFormatCode, `{"a":1}`, true},
		{[]byte(`{"a":1}`), pgx.TextFormatCode, `{"a":1}`, true},
		{[]byte("\x02{}"), pgx.BinaryFormatCode, "", false},
		{[]byte{}, pgx.BinaryFormatCode, "", false},
	} {
		got, err := jsonbText(c.raw, c.format)
		if (err == nil) != c.ok || string(got) != c.want {
			t.Errorf("jsonbText(%q, %d) = (%q, %v), want %q ok=%v", c.raw, c.format, got, err, c.want, c.ok)
		}
	}
	for _, c := range []struct {
		raw    string
		format int16
		want   bool
		ok     bool
	}{
		{"\x01", pgx.BinaryFormatCode, true, true},
		{"\x00", pgx.BinaryFormatCode, false, true},
		{"t", pgx.TextFormatCode, true, true},
		{"f", pgx.TextFormatCode, false, true},
		{"", pgx.TextFormatCode, false, false},
		{"true", pgx.TextFormatCode, false, false},
	} {
		got, err := boolValue([]byte(c.raw), c.format)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("boolValue(%q, %d) = (%v, %v), want %v ok=%v", c.raw, c.format, got, err, c.want, c.ok)
		}
	}
	if _, err := appendArg(nil, make(chan int)); err == nil {
		t.Errorf("appendArg of a channel: err = %v, want an error", err)
	}
	if got, _ := appendArg([]byte("x"), int64(-42)); string(got) != "x-42" {
		t.Errorf("appendArg(-42) = %q", got)
	}
}
