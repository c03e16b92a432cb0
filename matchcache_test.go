package krules_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/krules-go/krules"
)

// TestMatchCacheManyTypes emits more distinct types than the match cache
// has slots, twice over, and checks every emit reaches exactly the handlers
// whose patterns match, in registration order.
func TestMatchCacheManyTypes(t *testing.T) {
	app, _ := newApp(t)
	var got []string
	rec := func(name string) krules.HandlerFunc {
		return func(_ context.Context, ev *krules.Event) error { got = append(got, name); return nil }
	}
	app.On("evt.*").Do(rec("all"))
	app.On("evt.1*").Do(rec("one"))
	app.On("evt.?5").Do(rec("q5"))
	app.On("evt.7").Do(rec("exact7"))
	s := app.Subject("s")
	for round := range 2 {
		for i := range 20000 {
			got = got[:0]
			typ := fmt.Sprintf("evt.%d", i)
			if err := app.Emit(ctx, typ, s, nil); err != nil {
				t.Fatal(err)
			}
			want := []string{"all"}
			if strings.HasPrefix(typ, "evt.1") {
				want = append(want, "one")
			}
			if len(typ) == 6 && typ[5] == '5' {
				want = append(want, "q5")
			}
			if typ == "evt.7" {
				want = append(want, "exact7")
			}
			if !slices.Equal(got, want) {
				t.Fatalf("round %d: %s reached %v, want %v", round, typ, got, want)
			}
		}
	}
}
