package krules

import (
	"context"
	"fmt"
	"testing"
	"unsafe"
)

// TestEventSlabFitsItsSizeClass: the block of events fills the 2688-byte
// size class; if Event grows, change eventSlabSize.
func TestEventSlabFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(eventSlab{}); n > 2688 || n+unsafe.Sizeof(Event{}) <= 2688 {
		t.Fatalf("eventSlab is %d bytes (Event %d): pick eventSlabSize to fill 2688", n, unsafe.Sizeof(Event{}))
	}
}

// TestKeptEventsAreNeverReused: events kept by a handler across many emits
// (more than a block) keep their own content.
func TestKeptEventsAreNeverReused(t *testing.T) {
	app := New()
	var kept []*Event
	app.On("e.*").Do(func(_ context.Context, ev *Event) error { kept = append(kept, ev); return nil })
	s := app.Subject("s")
	const n = 5*eventSlabSize + 3
	for i := range n {
		if err := app.Emit(context.Background(), fmt.Sprintf("e.%d", i), s, Payload{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[*Event]bool{}
	for i, ev := range kept {
		if ev.Type != fmt.Sprintf("e.%d", i) || ev.Payload()["i"] != i || seen[ev] {
			t.Fatalf("kept event %d is %s %v (seen before: %v)", i, ev.Type, ev.Payload(), seen[ev])
		}
		seen[ev] = true
	}
}
