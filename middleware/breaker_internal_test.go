package middleware

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
)

// keys returns the keys the breaker keeps, sorted.
func (b *Breaker) keys() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ks []string
	for k := range b.circuits {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestBreakerSweepsIdleKeys: subjects that fail and never come back (closed
// with a failure, or open and never called again) are forgotten once idle
// for a CoolDown; recent ones are kept.
func TestBreakerSweepsIdleKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const coolDown = 10 * time.Second
		var mu sync.Mutex
		closedBySweep := map[string]bool{}
		b := NewBreaker(BreakerConfig{FailureThreshold: 2, CoolDown: coolDown,
			OnStateChange: func(key string, from, to State) {
				if to == StateClosed {
					mu.Lock()
					closedBySweep[fmt.Sprintf("%s:%s", key, from)] = true
					mu.Unlock()
				}
			}})
		app := krules.New(krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
		app.Use(b.Middleware())
		app.On("x").Do(func(context.Context, *krules.Event) error { return errors.New("transient") })
		emit := func(subject string, times int) {
			for range times {
				if err := app.Emit(t.Context(), "x", app.Subject(subject), nil); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i := range 10000 {
			emit(fmt.Sprintf("s-%d", i), 1) // closed, one failure
		}
		for i := range 100 {
			emit(fmt.Sprintf("o-%d", i), 2) // open
		}
		if n := len(b.keys()); n != 10100 {
			t.Fatalf("%d keys before any is idle, want 10100", n)
		}
		time.Sleep(coolDown / 2)
		emit("recent", 1)
		emit("recent-open", 2)
		time.Sleep(coolDown / 2)
		emit("trigger", 1) // a new key a CoolDown after the last sweep: sweeps
		if got, want := b.keys(), []string{"recent", "recent-open", "trigger"}; !slices.Equal(got, want) {
			t.Fatalf("keys after the sweep: %d %.5v, want %v", len(got), got, want)
		}
		if b.State("o-1") != StateClosed || b.State("recent-open") != StateOpen {
			t.Errorf("states %v %v, want closed open", b.State("o-1"), b.State("recent-open"))
		}
		mu.Lock()
		defer mu.Unlock()
		if len(closedBySweep) != 100 || !closedBySweep["o-7:open"] {
			t.Errorf("%d open->closed transitions reported, want 100", len(closedBySweep))
		}
	})
}

// TestBreakerSweepKeepsTrial: a half-open circuit whose trial call is still
// running is not forgotten, however long the trial takes.
func TestBreakerSweepKeepsTrial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker(BreakerConfig{Key: ByHandler, FailureThreshold: 1, CoolDown: time.Second})
		app := krules.New(krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
		app.Use(b.Middleware())
		release := make(chan struct{})
		calls := 0
		app.On("x").Named("slow").Do(func(context.Context, *krules.Event) error {
			calls++
			if calls == 2 {
				<-release // the trial
				return nil
			}
			return errors.New("down")
		})
		app.On("y").Do(func(context.Context, *krules.Event) error { return errors.New("down") })
		_ = app.Emit(t.Context(), "x", app.Subject("s"), nil) // opens "slow"
		time.Sleep(time.Second)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = app.Emit(t.Context(), "x", app.Subject("s"), nil)
		}()
		synctest.Wait()
		time.Sleep(time.Minute)
		_ = app.Emit(t.Context(), "y", app.Subject("s"), nil) // new key: sweeps
		if b.State("slow") != StateHalfOpen {
			t.Fatalf("state %v during the trial, want half-open", b.State("slow"))
		}
		close(release)
		<-done
		if b.State("slow") != StateClosed {
			t.Fatalf("state %v after the trial, want closed", b.State("slow"))
		}
	})
}
