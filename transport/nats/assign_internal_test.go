package nats

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAssignFairAndOrderFree: every member gets a fair share (n/m rounded
// up or down), every partition an owner, and the result does not depend on
// the order in which a worker lists the members.
func TestAssignFairAndOrderFree(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 500 {
		m := 1 + r.IntN(6)
		n := 1 + r.IntN(64)
		members := make([]string, m)
		for i := range members {
			members[i] = fmt.Sprintf("w-%d-%d", trial, r.Uint64())
		}
		got := assign(members, n)
		count := map[string]int{}
		for k, o := range got {
			if !slices.Contains(members, o) {
				t.Fatalf("partition %d of %d owned by %q, not a member of %v", k, n, o, members)
			}
			count[o]++
		}
		for _, mb := range members {
			if c := count[mb]; c < n/m || c > (n+m-1)/m {
				t.Fatalf("%d partitions, %d members: %s got %d (counts %v)", n, m, mb, c, count)
			}
		}
		shuffled := slices.Clone(members)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again := assign(shuffled, n); !slices.Equal(again, got) {
			t.Fatalf("assignment depends on member order: %v vs %v", got, again)
		}
	}
	if got := assign(nil, 3); !slices.Equal(got, []string{"", "", ""}) {
		t.Fatalf("no members: %v", got)
	}
}
