package krules

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"unsafe"
)

// TestEventSlabFitsItsSizeClass: the block of events fills the 2688-byte
// size class; if Event grows, change eventSlabSize.
func TestEventSlabFitsItsSizeClass(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("eventSlabSize is tuned for 64-bit platforms")
	}
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

// TestConcurrentEmitsGetDistinctEvents: goroutines emitting at once on one
// App (sharing stripes and racing to install new slabs) never get the same
// Event, and each keeps its own content.
func TestConcurrentEmitsGetDistinctEvents(t *testing.T) {
	app := New()
	const goroutines, per = 8, 3*eventSlabSize + 5
	kept := make([][]*Event, goroutines)
	app.On("e").Do(func(ctx context.Context, ev *Event) error {
		g := ev.Payload()["g"].(int)
		kept[g] = append(kept[g], ev)
		return nil
	})
	s := app.Subject("s")
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range per {
				if err := app.Emit(context.Background(), "e", s, Payload{"g": g, "i": i}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	seen := map[*Event]bool{}
	for g, evs := range kept {
		if len(evs) != per {
			t.Fatalf("goroutine %d: %d events handled, want %d", g, len(evs), per)
		}
		for i, ev := range evs {
			if ev.Payload()["g"] != g || ev.Payload()["i"] != i || seen[ev] {
				t.Fatalf("goroutine %d event %d is %v (seen before: %v)", g, i, ev.Payload(), seen[ev])
			}
			seen[ev] = true
		}
	}
}

// TestEventClaimsAreDistinct hammers newEvent from many goroutines (more
// than the stripes, yielding often so that claims of one block interleave)
// and checks that no Event is handed out twice: a non-atomic claim of the
// block index fails it.
func TestEventClaimsAreDistinct(t *testing.T) {
	app := New()
	const G, N = 16, 20000
	res := make([][]*Event, G)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range G {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out := make([]*Event, 0, N)
			for i := range N {
				out = append(out, app.newEvent())
				if i%16 == 0 {
					runtime.Gosched()
				}
			}
			res[g] = out
		}()
	}
	close(start)
	wg.Wait()
	seen := make(map[*Event]bool, G*N)
	for _, r := range res {
		for _, e := range r {
			if seen[e] {
				t.Fatal("an Event was handed out twice")
			}
			seen[e] = true
		}
	}
}
