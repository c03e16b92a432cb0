package main

import (
	"math"
	"testing"
)

func TestPy(t *testing.T) {
	tests := []struct {
		v     any
		order []string
		want  string
	}{
		{nil, nil, "None"},
		{true, nil, "True"},
		{false, nil, "False"},
		{int64(-7), nil, "-7"},
		{30, nil, "30"},
		{1.0, nil, "1.0"},
		{1.5, nil, "1.5"},
		{1234567.0, nil, "1234567.0"},
		{1e16, nil, "1e+16"},
		{0.00001, nil, "1e-05"},
		{math.Inf(-1), nil, "-inf"},
		{"it's", nil, `"it's"`},
		{`a'b"c`, nil, `'a\'b"c'`},
		{"tab\there\n", nil, `'tab\there\n'`},
		{[]string{"premium", "verified"}, nil, "['premium', 'verified']"},
		{[]any{}, nil, "[]"},
		{map[string]any{}, nil, "{}"},
		{
			map[string]any{"zip": "02101", "street": "123 Main St", "city": "Boston"},
			[]string{"street", "city", "zip"},
			"{'street': '123 Main St', 'city': 'Boston', 'zip': '02101'}",
		},
		{ // unnamed keys follow sorted; the order applies at every level
			map[string]any{"b": 1, "a": []any{map[string]any{"y": nil, "x": true}}, "name": "n"},
			[]string{"name", "x"},
			"{'name': 'n', 'a': [{'x': True, 'y': None}], 'b': 1}",
		},
		{ // a key named twice in order is printed once
			map[string]any{"name": "n"}, []string{"name", "name"}, "{'name': 'n'}",
		},
	}
	for _, tt := range tests {
		if got := py(tt.v, tt.order...); got != tt.want {
			t.Errorf("py(%#v, %q) = %s, want %s", tt.v, tt.order, got, tt.want)
		}
	}
}

func TestMoney(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{int64(0), "$0"},
		{int64(999), "$999"},
		{int64(75000), "$75,000"},
		{78750, "$78,750"},
		{int64(1234567), "$1,234,567"},
		{int64(-1500), "$-1,500"},
		{78750.0, "$78,750"},
		{"x", "$x"},
	}
	for _, tt := range tests {
		if got := money(tt.v); got != tt.want {
			t.Errorf("money(%#v) = %s, want %s", tt.v, got, tt.want)
		}
	}
}
