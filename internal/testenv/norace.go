//go:build !race

package testenv

// Race reports whether the test binary runs under the race detector; see
// race.go.
const Race = false
