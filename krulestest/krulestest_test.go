package krulestest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/krulestest"
	"github.com/krules-go/krules/middleware"
)

// fakeT captures failures so the messages themselves can be checked.
type fakeT struct {
	testing.TB
	mu   sync.Mutex
	msgs []string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}
func (f *fakeT) Error(args ...any) { f.Errorf("%s", fmt.Sprint(args...)) }
func (f *fakeT) failed() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.msgs, "\n")
}

func TestRecorderOrderAndCopies(t *testing.T) {
	ctx := t.Context()
	app := krulestest.New(t)
	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
		ev.Payload()["touched"] = true // later changes must not show in the record
		_, _, err := ev.Subject.Set(ctx, "status", "pending", krules.WithExtra(krules.Extra{"by": "test"}))
		return err
	})
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		return ev.Emit(ctx, "order.noted", nil)
	})
	o := app.Subject("o-1")
	if err := app.Emit(ctx, "order.created", o, krules.Payload{"amount": 10}, krules.WithMeta("k", "v")); err != nil {
		t.Fatal(err)
	}
	if err := app.Emit(ctx, "unhandled.type", o, nil); err != nil {
		t.Fatal(err)
	}
	app.Events().AssertTypes(t, "order.created", krules.PropertyChanged, "order.noted", "unhandled.type")
	evs := app.Events().Events()
	if _, ok := evs[0].Payload["touched"]; ok {
		t.Errorf("payload recorded after the handler changed it: %v", evs[0].Payload)
	}
	if evs[0].Meta["k"] != "v" || evs[1].Extra["by"] != "test" || evs[1].NewValue != "pending" || evs[1].Subject != "o-1" {
		t.Errorf("recorded fields: %+v", evs[:2])
	}
	for i, e := range evs {
		if e.Seq != i {
			t.Errorf("Seq %d at %d", e.Seq, i)
		}
	}
	app.AssertNoErrors(t)
}

func TestAssertionsPassAndFail(t *testing.T) {
	ctx := t.Context()
	app := krulestest.New(t)
	s := app.Subject("u-1")
	s.Set(ctx, "status", "a")
	s.Set(ctx, "status", "b")
	s.Delete(ctx, "status")
	rec := app.Events()

	// Passing assertions, on a real t.
	rec.AssertEmitted(t, krulestest.Changed("status").From("a").To("b").Subject("u-1"))
	rec.AssertSequence(t, krulestest.Changed("status").To("a"), krulestest.Deleted("status").From("b"))
	rec.AssertNotEmitted(t, krulestest.Expect("order.*"))
	rec.AssertCount(t, krulestest.Expect("subject-property-*"), 3)
	krulestest.AssertNoProperty(t, s, "status")

	// Failing ones report what was expected and what was recorded.
	cases := []struct {
		name string
		run  func(ft *fakeT)
		want []string
	}{
		{"emitted", func(ft *fakeT) { rec.AssertEmitted(ft, krulestest.Changed("status").To("z")) },
			[]string{`expected an event: subject-property-changed, property "status", to "z"`, `subject-property-changed u-1 status: "a" → "b"`}},
		{"not emitted", func(ft *fakeT) { rec.AssertNotEmitted(ft, krulestest.Deleted("status")) },
			[]string{"expected no event", `status: "b" (deleted)`}},
		{"sequence", func(ft *fakeT) {
			rec.AssertSequence(ft, krulestest.Deleted("status"), krulestest.Changed("status").To("a"))
		}, []string{"sequence step 2 of 2 not found after step 1"}},
		{"types", func(ft *fakeT) { rec.AssertTypes(ft, krules.PropertyChanged, krules.PropertyChanged) },
			[]string{"event types differ at position 2", "expected:", "got:"}},
		{"count", func(ft *fakeT) { rec.AssertCount(ft, krulestest.Any(), 1) }, []string{"expected 1 events: any event", "got 3"}},
		{"property", func(ft *fakeT) { s.Set(ctx, "n", 1); krulestest.AssertProperty(ft, s, "n", 2) },
			[]string{"u-1.n: expected 2, got 1"}},
		{"missing property", func(ft *fakeT) { krulestest.AssertProperty(ft, s, "gone", 2) }, []string{"got no such property"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ft := &fakeT{TB: t}
			c.run(ft)
			got := ft.failed()
			if got == "" {
				t.Fatal("assertion passed, want a failure")
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("failure message lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

func TestNumbersCompareNumerically(t *testing.T) {
	app := krulestest.New(t)
	s := app.Subject("s")
	s.Set(t.Context(), "n", 1500)
	app.Events().AssertEmitted(t, krulestest.Changed("n").To(1500.0).From(nil))
	krulestest.AssertProperty(t, s, "n", int64(1500))
}

func TestErrorsRecorded(t *testing.T) {
	errBoom := errors.New("boom")
	app := krulestest.New(t)
	app.On("x").Named("fails").Do(func(context.Context, *krules.Event) error { return errBoom })
	app.Emit(t.Context(), "x", app.Subject("s"), nil)
	if he := app.AssertError(t, errBoom); he.Handler != "fails" || he.Event.Type != "x" {
		t.Errorf("HandlerError = %+v", he)
	}
	ft := &fakeT{TB: t}
	app.AssertNoErrors(ft)
	if !strings.Contains(ft.failed(), "handler fails on x s: boom") {
		t.Errorf("AssertNoErrors message: %q", ft.failed())
	}
}

func TestNewEventForFilterAndMiddleware(t *testing.T) {
	ctx := t.Context()
	app := krulestest.New(t)
	ran := false
	app.On("*").Do(func(context.Context, *krules.Event) error { ran = true; return nil })

	ev, err := app.NewEvent(ctx, krules.PropertyChanged, app.Subject("o-1"),
		krules.Payload{krules.KeyPropertyName: "status", krules.KeyOldValue: "a", krules.KeyValue: "b"},
		krules.WithMeta("topic", "t1"), krules.WithExtra(krules.Extra{"why": "test"}))
	if err != nil {
		t.Fatal(err)
	}
	if ev.PropertyName != "status" || ev.OldValue != "a" || ev.NewValue != "b" || ev.Extra["why"] != "test" {
		t.Errorf("event = %+v", ev)
	}
	if v, _ := ev.Meta("topic"); v != "t1" {
		t.Errorf("meta topic = %v", v)
	}
	if ran || app.Events().Len() != 0 {
		t.Fatalf("NewEvent ran handlers (%v) or was recorded (%d)", ran, app.Events().Len())
	}

	// A middleware under test, called directly.
	var seen string
	mw := func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		seen = krules.HandlerName(ctx)
		if err := next(ctx); err != nil {
			return ev.Emit(ctx, "handler.failed", krules.Payload{"error": err.Error()})
		}
		return nil
	}
	err = mw(krulestest.HandlerContext(ctx, "ship_order"), ev, func(context.Context) error { return errors.New("down") })
	if err != nil || seen != "ship_order" {
		t.Fatalf("err %v, handler name %q", err, seen)
	}
	app.Events().AssertTypes(t, "handler.failed")
	app.Events().AssertEmitted(t, krulestest.Expect("handler.failed").Subject("o-1").Payload("error", "down"))
	if ran {
		t.Error("ev.Emit ran the App's handlers")
	}

	if _, err := app.NewEvent(ctx, "", app.Subject("o-1"), nil); !errors.Is(err, krules.ErrInvalidName) {
		t.Errorf("empty type: %v", err)
	}
	if _, err := krulestest.NewEvent(ctx, "x", nil, nil); err == nil {
		t.Error("nil subject accepted")
	}
}

func TestWaitForAsync(t *testing.T) {
	app := krulestest.New(t)
	go app.Emit(context.Background(), "late", app.Subject("s"), nil)
	if got := app.Events().WaitFor(t, 10*time.Second, krulestest.Expect("late")); got.Type != "late" {
		t.Fatalf("WaitFor = %+v", got)
	}
	n := 0
	if !krulestest.Eventually(t, 10*time.Second, func() error {
		if n++; n < 3 {
			return fmt.Errorf("n=%d", n)
		}
		return nil
	}) {
		t.Fatal("Eventually failed")
	}
}

// Inside a synctest bubble time is virtual: a timeout middleware fires
// without waiting, and a WaitFor that cannot succeed fails at its (virtual)
// deadline instead of stalling the test.
func TestSynctestBubble(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app := krulestest.New(t)
		app.Use(middleware.Timeout(time.Minute))
		app.On("slow").Named("slow").Do(func(ctx context.Context, ev *krules.Event) error {
			<-ctx.Done()
			return ctx.Err()
		})
		start := time.Now()
		go app.Emit(t.Context(), "slow", app.Subject("s"), nil)
		krulestest.Eventually(t, 2*time.Minute, func() error {
			if len(app.Errors()) == 0 {
				return errors.New("no error yet")
			}
			return nil
		})
		app.AssertError(t, middleware.ErrTimeout)
		if d := time.Since(start); d < time.Minute {
			t.Errorf("virtual time advanced %v, want ≥ 1m", d)
		}

		ft := &fakeT{TB: t}
		if got := app.Events().WaitFor(ft, time.Hour, krulestest.Expect("never")); got.Type != "" {
			t.Errorf("WaitFor = %+v", got)
		}
		if !strings.Contains(ft.failed(), "no event within 1h0m0s: expected never") {
			t.Errorf("WaitFor failure: %q", ft.failed())
		}
	})
}
