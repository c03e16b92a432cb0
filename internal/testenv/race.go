//go:build race

package testenv

// Race reports whether the test binary runs under the race detector
// (go test -race), which makes every memory access, and so every update of a
// concurrent workload, about an order of magnitude slower. Tests scale such
// workloads down under it, keeping what they assert (exact totals); the
// race detector finds data races with any count.
const Race = true
