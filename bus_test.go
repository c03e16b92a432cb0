package krules_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/krules-go/krules"
)

func TestDispatchOrderDepthFirst(t *testing.T) {
	app, _ := newApp(t)
	var rec recorder
	app.On("user.login").Do(func(ctx context.Context, ev *krules.Event) error {
		rec.line("[Handler] User logged in: " + ev.Subject.Name())
		_, _, err := ev.Subject.Set(ctx, "last_login", "now")
		return err
	})
	app.On("user.created", "user.updated").Do(func(_ context.Context, ev *krules.Event) error {
		rec.line("[Handler] User changed: " + ev.Type)
		return nil
	})
	app.On("device.*").Do(func(_ context.Context, ev *krules.Event) error {
		rec.line("[Handler] Device event: " + ev.Type)
		return nil
	})
	app.On("*").Do(func(_ context.Context, ev *krules.Event) error {
		rec.line(fmt.Sprintf("[Logger] Event: %s on %s", ev.Type, ev.Subject.Name()))
		return nil
	})
	user := app.Subject("user-123")
	app.Emit(ctx, "user.login", user, krules.Payload{})
	app.Emit(ctx, "user.created", user, krules.Payload{})
	app.Emit(ctx, "device.connected", app.Subject("device-1"), krules.Payload{})
	want := []string{
		"[Handler] User logged in: user-123",
		"[Logger] Event: subject-property-changed on user-123",
		"[Logger] Event: user.login on user-123",
		"[Handler] User changed: user.created",
		"[Logger] Event: user.created on user-123",
		"[Handler] Device event: device.connected",
		"[Logger] Event: device.connected on device-1",
	}
	if !reflect.DeepEqual(rec.lines, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(rec.lines, "\n"), strings.Join(want, "\n"))
	}
}

func TestRegistrationOrderAcrossExactAndGlob(t *testing.T) {
	app, _ := newApp(t)
	var got []string
	mk := func(name string) krules.HandlerFunc {
		return func(context.Context, *krules.Event) error { got = append(got, name); return nil }
	}
	app.On("a.*").Do(mk("glob1"))
	app.On("a.b").Do(mk("exact1"))
	app.On("*").Do(mk("all"))
	app.On("a.?", "a.b").Do(mk("both")) // two matching patterns: runs once
	app.On("x.*").Do(mk("other"))
	app.On("a.b").Do(mk("exact2"))
	app.On().Do(mk("never"))
	app.Emit(ctx, "a.b", app.Subject("s"), nil)
	want := []string{"glob1", "exact1", "all", "both", "exact2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// Registering after a type was dispatched (cached) must be seen.
	app.On("a.[b]").Do(mk("late"))
	got = nil
	app.Emit(ctx, "a.b", app.Subject("s"), nil)
	if want := append(want, "late"); !reflect.DeepEqual(got, want) {
		t.Fatalf("after late registration %v, want %v", got, want)
	}
}

func TestHandlerSnapshotAtEmit(t *testing.T) {
	app, _ := newApp(t)
	var calls []string
	app.On("e").Do(func(context.Context, *krules.Event) error {
		calls = append(calls, "first")
		app.On("e").Named("added").Do(func(context.Context, *krules.Event) error {
			calls = append(calls, "added")
			return nil
		})
		return nil
	})
	app.Emit(ctx, "e", app.Subject("s"), nil)
	if !reflect.DeepEqual(calls, []string{"first"}) {
		t.Fatalf("a handler registered during an emit ran in it: %v", calls)
	}
	calls = nil
	app.Emit(ctx, "e", app.Subject("s"), nil)
	if len(calls) != 2 || calls[1] != "added" {
		t.Fatalf("second emit: %v", calls)
	}
}

func TestFilters(t *testing.T) {
	app, logs := newApp(t)
	var order []string
	f := func(name string, ok bool) krules.Filter {
		return func(context.Context, *krules.Event) bool { order = append(order, name); return ok }
	}
	var ran []string
	h := func(name string) krules.HandlerFunc {
		return func(context.Context, *krules.Event) error { ran = append(ran, name); return nil }
	}
	var mwRuns int
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error { mwRuns++; return next(ctx) })
	app.On("e").When(f("A", true), f("B", true)).When(f("C", true)).Do(h("all-pass"))
	app.On("e").When(f("D", false), f("E", true)).Do(h("short-circuit"))
	app.On("e").When(func(context.Context, *krules.Event) bool { panic("bad filter") }).Named("panicky").Do(h("panicky"))
	app.On("e").Do(h("after"))
	if err := app.Emit(ctx, "e", app.Subject("s"), krules.Payload{"amount": 1500}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(order, []string{"A", "B", "C", "D"}) {
		t.Fatalf("filter order %v", order)
	}
	if !reflect.DeepEqual(ran, []string{"all-pass", "after"}) {
		t.Fatalf("ran %v", ran)
	}
	if mwRuns != 2 {
		t.Fatalf("filtered-out handlers must not reach middleware: %d runs", mwRuns)
	}
	if !strings.Contains(logs.String(), "filter panicked") || !strings.Contains(logs.String(), "panicky") {
		t.Fatalf("panicking filter not logged: %s", logs.String())
	}
}

func TestMiddleware(t *testing.T) {
	app, _ := newApp(t)
	var trace []string
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		trace = append(trace, "mw1-before:"+krules.HandlerName(ctx))
		err := next(ctx)
		trace = append(trace, "mw1-after")
		return err
	}, func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		trace = append(trace, "mw2-before")
		if ev.Type == "skip" {
			return nil // not calling next skips the handler
		}
		err := next(ctx)
		trace = append(trace, "mw2-after")
		return err
	})
	app.On("test.event", "skip").Named("h").Do(func(context.Context, *krules.Event) error {
		trace = append(trace, "handler")
		return nil
	})
	app.Emit(ctx, "test.event", app.Subject("s"), nil)
	want := []string{"mw1-before:h", "mw2-before", "handler", "mw2-after", "mw1-after"}
	if !reflect.DeepEqual(trace, want) {
		t.Fatalf("trace %v, want %v", trace, want)
	}
	trace = nil
	app.Emit(ctx, "skip", app.Subject("s"), nil)
	if !reflect.DeepEqual(trace, []string{"mw1-before:h", "mw2-before", "mw1-after"}) {
		t.Fatalf("short-circuit trace %v", trace)
	}
	trace = nil
	app.Emit(ctx, "unmatched", app.Subject("s"), nil)
	if len(trace) != 0 {
		t.Fatalf("middleware ran without a matching handler: %v", trace)
	}
	// Middleware runs once per matching handler.
	app.On("test.event").Named("h2").Do(func(context.Context, *krules.Event) error { return nil })
	trace = nil
	app.Emit(ctx, "test.event", app.Subject("s"), nil)
	n := 0
	for _, s := range trace {
		if strings.HasPrefix(s, "mw1-before") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("middleware ran %d times for 2 handlers", n)
	}
}

func TestErrorIsolation(t *testing.T) {
	type report struct {
		handler string
		err     error
	}
	var mu sync.Mutex
	var reports []report
	app, _ := newApp(t, krules.WithErrorHandler(func(_ context.Context, ev *krules.Event, h string, err error) {
		mu.Lock()
		reports = append(reports, report{h, err})
		mu.Unlock()
	}))
	boom := errors.New("boom")
	var ran []string
	app.On("e").Named("fails").Do(func(context.Context, *krules.Event) error { ran = append(ran, "fails"); return boom })
	app.On("e").Named("panics").Do(func(context.Context, *krules.Event) error { ran = append(ran, "panics"); panic("kaput") })
	app.On("e").Named("ok").Do(func(context.Context, *krules.Event) error { ran = append(ran, "ok"); return nil })
	if err := app.Emit(ctx, "e", app.Subject("s"), nil); err != nil {
		t.Fatalf("handler errors must not reach the emitter: %v", err)
	}
	if !reflect.DeepEqual(ran, []string{"fails", "panics", "ok"}) {
		t.Fatalf("ran %v", ran)
	}
	if len(reports) != 2 || reports[0].handler != "fails" || !errors.Is(reports[0].err, boom) || reports[1].handler != "panics" {
		t.Fatalf("reports %v", reports)
	}
	var pe *krules.PanicError
	if !errors.As(reports[1].err, &pe) || pe.Value != "kaput" || !strings.Contains(string(pe.Stack), "bus_test.go") {
		t.Fatalf("panic report %#v", reports[1].err)
	}
	// A Set whose change handler fails still succeeds.
	app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { return boom })
	if _, _, err := app.Subject("s").Set(ctx, "x", 1); err != nil {
		t.Fatalf("Set failed because of a handler: %v", err)
	}
}

func TestDefaultErrorHandlerLogs(t *testing.T) {
	app, logs := newApp(t)
	app.On("e").Named("broken").Do(func(context.Context, *krules.Event) error { panic("kaput") })
	app.Emit(ctx, "e", app.Subject("s"), nil)
	out := logs.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one ERROR line and one DEBUG stack line, got %d: %s", len(lines), out)
	}
	for _, want := range []string{"level=ERROR", "handler panicked", "handler=broken", "kaput"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("error line lacks %q: %s", want, lines[0])
		}
	}
	if strings.Contains(lines[0], "stack=") {
		t.Errorf("the stack belongs at DEBUG, not in the error line: %s", lines[0])
	}
	if !strings.Contains(lines[1], "level=DEBUG") || !strings.Contains(lines[1], "stack=") {
		t.Errorf("second line is not the DEBUG stack: %s", lines[1])
	}
}

// TestOutboundSeesEveryEventOnce: an outbound hook sees every emitted
// event once, matched by a local handler or not, after the handlers; muted
// writes emit nothing.
func TestOutboundSeesEveryEventOnce(t *testing.T) {
	app, _ := newApp(t)
	var order []string
	app.On("local").Do(func(ctx context.Context, ev *krules.Event) error {
		order = append(order, "handler:"+ev.Type)
		ev.SetMeta("seen", true)
		return nil
	})
	h := app.Outbound("egress", func(ctx context.Context, ev *krules.Event) error {
		_, seen := ev.Meta("seen")
		order = append(order, fmt.Sprintf("out:%s:%v", ev.Type, seen))
		return nil
	})
	s := app.Subject("s")
	app.Emit(ctx, "local", s, nil)
	app.Emit(ctx, "nobody", s, nil)
	s.Set(ctx, "x", 1)
	s.Set(ctx, "x", 2, krules.Muted())
	s.Delete(ctx, "x")
	want := []string{"handler:local", "out:local:true", "out:nobody:false", "out:subject-property-changed:false", "out:subject-property-deleted:false"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("order = %v, want %v", order, want)
	}
	if !h.Remove() || app.Outbound("x", nil).Remove() {
		t.Fatal("Remove of the hook")
	}
	order = nil
	app.Emit(ctx, "nobody", s, nil)
	if len(order) != 0 {
		t.Fatalf("removed hook still ran: %v", order)
	}
}

func TestSharedEventAndMetadata(t *testing.T) {
	app, _ := newApp(t)
	var seen []any
	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		if _, ok := ev.Meta("mw"); !ok {
			ev.SetMeta("mw", 1)
		}
		return next(ctx)
	})
	app.On("e").Do(func(_ context.Context, ev *krules.Event) error {
		ev.Payload()["touched"] = true
		ev.SetMeta("first", "yes")
		return nil
	})
	app.On("e").Do(func(_ context.Context, ev *krules.Event) error {
		topic, _ := ev.Meta("topic")
		first, _ := ev.Meta("first")
		mw, _ := ev.Meta("mw")
		seen = append(seen, ev.Payload()["touched"], topic, first, mw)
		return nil
	})
	app.Emit(ctx, "e", app.Subject("s"), nil, krules.WithMeta("topic", "orders"))
	if !reflect.DeepEqual(seen, []any{true, "orders", "yes", 1}) {
		t.Fatalf("second handler saw %v", seen)
	}
}

func TestPropertyFieldsFromCustomPayload(t *testing.T) {
	app, _ := newApp(t)
	var got *krules.Event
	app.On("custom").Do(func(_ context.Context, ev *krules.Event) error { got = ev; return nil })
	app.Emit(ctx, "custom", app.Subject("s"), krules.Payload{"property_name": "p", "old_value": 1, "value": 2})
	if got.PropertyName != "p" || got.OldValue != 1 || got.NewValue != 2 {
		t.Fatalf("property fields = %q %v %v", got.PropertyName, got.OldValue, got.NewValue)
	}
	app.Emit(ctx, "custom", app.Subject("s"), krules.Payload{"ip": "1.2.3.4"})
	if got.PropertyName != "" || got.OldValue != nil {
		t.Fatal("no property_name: fields must stay empty")
	}
}

func TestEventEmitDefaultsAndNoInheritance(t *testing.T) {
	app, _ := newApp(t)
	var child *krules.Event
	app.On("parent").Do(func(ctx context.Context, ev *krules.Event) error {
		return ev.Emit(ctx, "child", nil)
	})
	app.On("child").Do(func(_ context.Context, ev *krules.Event) error {
		child = ev
		ev.Payload()["writable"] = true // nil payload became a real map
		return nil
	})
	parentSubject := app.Subject("order-1")
	app.Emit(ctx, "parent", parentSubject, krules.Payload{"a": 1}, krules.WithMeta("topic", "x"), krules.WithExtra(krules.Extra{"k": 1}))
	if child == nil || child.Subject != parentSubject {
		t.Fatalf("child event subject = %v", child)
	}
	if _, ok := child.Meta("topic"); ok || child.Extra != nil || len(child.Payload()) != 1 {
		t.Fatalf("child inherited from parent: meta=%v extra=%v payload=%v", child.Metadata(), child.Extra, child.Payload())
	}
}

func TestRemoveHandlers(t *testing.T) {
	app, _ := newApp(t)
	n := 0
	h := app.On("e").Named("a").Do(func(context.Context, *krules.Event) error { n++; return nil })
	app.On("e").Named("b").Do(func(context.Context, *krules.Event) error { n += 10; return nil })
	app.On("e").Named("b").Do(func(context.Context, *krules.Event) error { n += 100; return nil })
	app.Emit(ctx, "e", app.Subject("s"), nil)
	if n != 111 {
		t.Fatal(n)
	}
	if !h.Remove() || h.Remove() {
		t.Fatal("Remove must report true once")
	}
	if got := app.Remove("b"); got != 2 {
		t.Fatalf("Remove(b) = %d", got)
	}
	n = 0
	app.Emit(ctx, "e", app.Subject("s"), nil)
	if n != 0 {
		t.Fatalf("removed handlers ran: %d", n)
	}
	app.On("x").Do(func(context.Context, *krules.Event) error { return nil })
	app.On("y").Do(func(context.Context, *krules.Event) error { return nil })
	if got := app.RemoveAll(); got != 2 || len(app.Handlers()) != 0 {
		t.Fatalf("RemoveAll = %d", got)
	}
}

func TestDefaultHandlerName(t *testing.T) {
	app, _ := newApp(t)
	h := app.On("e").Do(namedHandler)
	if !strings.HasSuffix(h.Name(), "namedHandler") {
		t.Fatalf("default name %q", h.Name())
	}
	if app.Remove(h.Name()) != 1 {
		t.Fatal("remove by default name")
	}
}

func namedHandler(context.Context, *krules.Event) error { return nil }

func TestAppsAreIsolated(t *testing.T) {
	a1, _ := newApp(t)
	a2, _ := newApp(t)
	n := 0
	a1.On("*").Do(func(context.Context, *krules.Event) error { n++; return nil })
	a2.Emit(ctx, "e", a2.Subject("s"), nil)
	a2.Subject("s").Set(ctx, "x", 1)
	if n != 0 {
		t.Fatal("two Apps shared handlers")
	}
	if _, err := a2.Subject("s").Get(ctx, "x"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatal("unsaved value visible through a new handle")
	}
}

func TestCascadeDepthLimit(t *testing.T) {
	var errs []error
	app, logs := newApp(t, krules.WithCascadeLimit(8), krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, _ string, err error) {
		errs = append(errs, err)
	}))
	// The guide's infinite loop: a change handler that changes what it listens to.
	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		_, _, err := ev.Subject.Set(ctx, "counter", krules.Inc(1))
		return err
	})
	s := app.Subject("loop")
	if _, _, err := s.Set(ctx, "counter", 0); err != nil {
		t.Fatalf("outer Set: %v", err)
	}
	v, _ := s.Get(ctx, "counter")
	if v != int64(7) {
		t.Fatalf("counter = %v, want 7 (one write per allowed level)", v)
	}
	if len(errs) == 0 || !errors.Is(errs[0], krules.ErrCascadeDepth) {
		t.Fatalf("innermost handler error = %v, want ErrCascadeDepth", errs)
	}
	if !strings.Contains(logs.String(), "cascade depth limit exceeded") {
		t.Fatal("cascade limit not logged")
	}
	// Emit loops too.
	app2, _ := newApp(t, krules.WithCascadeLimit(4), krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	depth := 0
	app2.On("ping").Do(func(ctx context.Context, ev *krules.Event) error { depth++; return ev.Emit(ctx, "ping", nil) })
	if err := app2.Emit(ctx, "ping", app2.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
	if depth != 4 {
		t.Fatalf("ping handler ran %d times, want 4", depth)
	}
}

func TestCancelledContextStopsDispatch(t *testing.T) {
	app, _ := newApp(t)
	c, cancel := context.WithCancel(ctx)
	ran := 0
	app.On("e").Do(func(context.Context, *krules.Event) error { ran++; cancel(); return nil })
	app.On("e").Do(func(context.Context, *krules.Event) error { ran++; return nil })
	if err := app.Emit(c, "e", app.Subject("s"), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Emit = %v, want context.Canceled", err)
	}
	if ran != 1 {
		t.Fatalf("%d handlers ran after cancellation", ran)
	}
	if err := app.Emit(c, "e", app.Subject("s"), nil); !errors.Is(err, context.Canceled) || ran != 1 {
		t.Fatalf("emit on a cancelled ctx: %v (ran %d)", err, ran)
	}
	if _, _, err := app.Subject("s").Set(c, "x", 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Set on a cancelled ctx: %v", err)
	}
	if _, err := app.Subject("s").Get(ctx, "x"); !errors.Is(err, krules.ErrNotFound) {
		t.Fatal("Set on a cancelled ctx wrote")
	}
}

func TestConcurrentEmitAndRegistration(t *testing.T) {
	app, _ := newApp(t)
	var mu sync.Mutex
	count := 0
	got := map[string]int{}
	app.On("e.*").Do(func(context.Context, *krules.Event) error { mu.Lock(); count++; mu.Unlock(); return nil })
	var wg sync.WaitGroup
	var kept sync.Map // event type -> handler still registered
	for i := 0; i < 4; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				app.Emit(ctx, fmt.Sprintf("e.%d", j%7), app.Subject("s"), nil)
				app.Emit(ctx, fmt.Sprintf("z.%d", j%50), app.Subject("s"), nil)
			}
		}()
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				typ := fmt.Sprintf("z.%d.%d", i, j)
				h := app.On(typ).Do(func(_ context.Context, ev *krules.Event) error {
					mu.Lock()
					got[ev.Type]++
					mu.Unlock()
					return nil
				})
				if j%2 == 0 {
					h.Remove()
				} else {
					kept.Store(typ, true)
				}
			}
		}(i)
	}
	wg.Wait()
	if count != 800 {
		t.Fatalf("count = %d, want 800", count)
	}
	// Every handler still registered receives a later emit exactly once;
	// removed ones never run again.
	mu.Lock()
	clear(got)
	mu.Unlock()
	for i := 0; i < 4; i++ {
		for j := 0; j < 50; j++ {
			app.Emit(ctx, fmt.Sprintf("z.%d.%d", i, j), app.Subject("s"), nil)
		}
	}
	n := 0
	kept.Range(func(k, _ any) bool {
		n++
		if got[k.(string)] != 1 {
			t.Errorf("%s delivered %d times, want 1", k, got[k.(string)])
		}
		return true
	})
	if n != 100 || len(got) != 100 {
		t.Fatalf("kept %d handlers, %d types delivered; want 100 and 100", n, len(got))
	}
}

func TestEventEmitWithForeignContextStillLimited(t *testing.T) {
	app, _ := newApp(t, krules.WithCascadeLimit(6), krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	runs := 0
	app.On("loop").Do(func(_ context.Context, ev *krules.Event) error {
		runs++
		return ev.Emit(context.Background(), "loop", nil) // not the handler's ctx
	})
	if err := app.Emit(ctx, "loop", app.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
	if runs != 6 {
		t.Fatalf("loop ran %d times, want 6", runs)
	}
}

func TestFilterPanicReported(t *testing.T) {
	var got error
	app, _ := newApp(t, krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, h string, err error) { got = err }))
	ran := false
	app.On("e").When(func(context.Context, *krules.Event) bool { panic("bad") }).Named("f").Do(func(context.Context, *krules.Event) error { ran = true; return nil })
	app.Emit(ctx, "e", app.Subject("s"), nil)
	var pe *krules.PanicError
	if ran || !errors.As(got, &pe) || pe.Value != "bad" || len(pe.Stack) == 0 {
		t.Fatalf("ran=%v err=%v", ran, got)
	}
}

func TestDoNilRegistersNothing(t *testing.T) {
	app, logs := newApp(t)
	h := app.On("e").Do(nil)
	if h.Remove() || len(app.Handlers()) != 0 || !strings.Contains(logs.String(), "Do(nil)") {
		t.Fatalf("Do(nil): handlers=%d log=%s", len(app.Handlers()), logs.String())
	}
	if err := app.Emit(ctx, "e", app.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestDepthLimitOnlyWhenSomethingListens(t *testing.T) {
	app, _ := newApp(t, krules.WithCascadeLimit(2), krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	var innerErr error
	app.On("a").Do(func(ctx context.Context, ev *krules.Event) error { return ev.Emit(ctx, "b", nil) })
	app.On("b").Do(func(ctx context.Context, ev *krules.Event) error {
		// depth 2 = limit: a write that emits nothing (no change listener) is fine.
		_, _, innerErr = ev.Subject.Set(ctx, "x", 1)
		return innerErr
	})
	app.Emit(ctx, "a", app.Subject("s"), nil)
	if innerErr != nil {
		t.Fatalf("Set with no listener at the depth limit: %v", innerErr)
	}
	app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { return nil })
	app.Emit(ctx, "a", app.Subject("s2"), nil)
	if !errors.Is(innerErr, krules.ErrCascadeDepth) {
		t.Fatalf("Set with a listener beyond the limit: %v", innerErr)
	}
}

func TestObserveErrors(t *testing.T) {
	app, _ := newApp(t, krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	boom := errors.New("boom")
	app.On("outer").Named("outer").Do(func(ctx context.Context, ev *krules.Event) error {
		return ev.Emit(ctx, "inner", nil) // cascade inherits the observer
	})
	app.On("inner").Named("inner").Do(func(context.Context, *krules.Event) error { return boom })
	app.On("ok").Do(func(context.Context, *krules.Event) error { return nil })
	var seen []string
	obs := krules.ObserveErrors(ctx, func(_ context.Context, ev *krules.Event, h string, err error) {
		if errors.Is(err, boom) {
			seen = append(seen, ev.Type+"/"+h)
		}
	})
	app.Emit(obs, "ok", app.Subject("s"), nil)
	app.Emit(obs, "outer", app.Subject("s"), nil)
	app.Emit(ctx, "outer", app.Subject("s"), nil) // not observed
	if !reflect.DeepEqual(seen, []string{"inner/inner"}) {
		t.Fatalf("observed %v", seen)
	}
}
