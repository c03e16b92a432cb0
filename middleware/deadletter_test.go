package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

// journal records, in order, the attempts of the handler under test and the
// dead-letter events, so tests can check when the dead letter fires.
type journal struct {
	mu      sync.Mutex
	entries []string
	dl      []krules.Payload
}

func (j *journal) add(s string) {
	j.mu.Lock()
	j.entries = append(j.entries, s)
	j.mu.Unlock()
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

func (j *journal) dead() []krules.Payload {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.dl)
}

func watchDeadLetters(app *krules.App, j *journal) {
	app.On(middleware.DefaultDeadLetterEvent).Named("dlq-watch").Do(func(_ context.Context, ev *krules.Event) error {
		j.mu.Lock()
		j.entries = append(j.entries, fmt.Sprintf("dead-letter(attempts=%v)", ev.Payload()[middleware.DLAttempts]))
		j.dl = append(j.dl, ev.Payload())
		j.mu.Unlock()
		return nil
	})
}

// TestDeadLetterAfterRetries: the dead letter fires once, after the last
// attempt, and not at all when a retry succeeds.
func TestDeadLetterAfterRetries(t *testing.T) {
	cases := []struct {
		name    string
		outcome func(attempt int) error
		want    []string
		errIs   []error
	}{
		{name: "exhausted", outcome: func(int) error { return errTransient },
			want:  []string{"attempt 1", "attempt 2", "attempt 3", "dead-letter(attempts=3)"},
			errIs: []error{errTransient, middleware.ErrRetriesExhausted}},
		{name: "recovers", outcome: func(n int) error {
			if n < 2 {
				return errTransient
			}
			return nil
		}, want: []string{"attempt 1", "attempt 2"}},
		{name: "permanent", outcome: func(int) error { return middleware.Permanent(errTransient) },
			want: []string{"attempt 1", "dead-letter(attempts=1)"}, errIs: []error{errTransient}},
		{name: "permanent on retry", outcome: func(n int) error {
			if n == 1 {
				return errTransient
			}
			return middleware.Permanent(krules.ErrInvalidValue)
		}, want: []string{"attempt 1", "attempt 2", "dead-letter(attempts=2)"}, errIs: []error{krules.ErrInvalidValue}},
		{name: "canceled is not dead-lettered", outcome: func(int) error { return context.Canceled },
			want: []string{"attempt 1"}, errIs: []error{context.Canceled}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{}), middleware.Retry(middleware.RetryConfig{}))
				j := &journal{}
				watchDeadLetters(h.app, j)
				var n counter
				h.app.On("order.ship").Named("ship").Do(func(context.Context, *krules.Event) error {
					a := n.inc()
					j.add(fmt.Sprintf("attempt %d", a))
					return c.outcome(a)
				})
				h.emit(t, t.Context(), "order.ship", "order-1", krules.Payload{"amount": 10})
				if got := j.list(); !slices.Equal(got, c.want) {
					t.Fatalf("journal %v, want %v", got, c.want)
				}
				fs := h.failures()
				if len(c.errIs) == 0 {
					if len(fs) != 0 {
						t.Fatalf("errors %v", fs)
					}
					return
				}
				if len(fs) != 1 || fs[0].handler != "ship" {
					t.Fatalf("errors %v, want one from ship", fs)
				}
				for _, target := range c.errIs {
					if !errors.Is(fs[0].err, target) {
						t.Errorf("err %v does not wrap %v", fs[0].err, target)
					}
				}
			})
		})
	}
}

func TestDeadLetterPayloadAndStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		failAt := time.Now()
		h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{Store: true}))
		j := &journal{}
		watchDeadLetters(h.app, j)
		var changes counter
		h.app.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { changes.inc(); return nil })
		h.app.On("order.ship").Named("ship").Do(func(context.Context, *krules.Event) error {
			return fmt.Errorf("carrier down: %w", errTransient)
		})
		h.emit(t, t.Context(), "order.ship", "order-1", krules.Payload{"amount": 10, "item": "book"})
		dl := j.dead()
		if len(dl) != 1 {
			t.Fatalf("%d dead letters", len(dl))
		}
		p := dl[0]
		name, _ := p[middleware.DLDeadLetter].(string)
		if !strings.HasPrefix(name, "dlq-") || len(name) != len("dlq-")+36 {
			t.Fatalf("dlq_subject %q, want dlq-<uuid>", name)
		}
		want := map[string]any{
			middleware.DLOriginalEvent: "order.ship",
			middleware.DLSubject:       "order-1",
			middleware.DLHandler:       "ship",
			middleware.DLError:         "carrier down: transient",
			middleware.DLAttempts:      1,
			middleware.DLTimestamp:     failAt.UTC().Format(time.RFC3339Nano),
		}
		for k, v := range want {
			if p[k] != v {
				t.Errorf("payload[%s] = %#v, want %#v", k, p[k], v)
			}
		}
		if orig, _ := p[middleware.DLPayload].(map[string]any); orig["amount"] != 10 || orig["item"] != "book" {
			t.Errorf("payload[payload] = %#v", p[middleware.DLPayload])
		}
		// The record is in the store, written muted.
		dlq, err := h.app.Subject(name).Dict(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]any{
			"original_event": "order.ship", "subject_name": "order-1", "error": "carrier down: transient",
			"handler": "ship", "attempts": int64(1), "timestamp": want[middleware.DLTimestamp],
		} {
			if dlq[k] != v {
				t.Errorf("dead-letter subject %s = %#v (%T), want %#v", k, dlq[k], dlq[k], v)
			}
		}
		if orig, _ := dlq["payload"].(map[string]any); orig["amount"] != int64(10) {
			t.Errorf("stored payload %#v", dlq["payload"])
		}
		if changes.get() != 0 {
			t.Errorf("dead-letter store emitted %d property events, want 0 (muted)", changes.get())
		}
		if err := h.lastErr(t); !errors.Is(err, errTransient) {
			t.Errorf("handler error %v not passed on", err)
		}
	})
}

func TestDeadLetterOptions(t *testing.T) {
	t.Run("absorb", func(t *testing.T) {
		h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{Absorb: true}))
		j := &journal{}
		watchDeadLetters(h.app, j)
		h.app.On("x").Do(func(context.Context, *krules.Event) error { return errTransient })
		h.emit(t, t.Context(), "x", "s", nil)
		if len(j.dead()) != 1 || len(h.failures()) != 0 {
			t.Fatalf("dead letters %d, errors %v; want 1 and none", len(j.dead()), h.failures())
		}
	})
	t.Run("custom event type, subject and match", func(t *testing.T) {
		h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{
			EventType:   "dlq.custom",
			Store:       true,
			SubjectName: func(_ context.Context, ev *krules.Event) string { return "dead-" + ev.Subject.Name() },
			Match:       func(err error) bool { return errors.Is(err, errTransient) },
		}))
		var got []string
		h.app.On("dlq.custom").Do(func(_ context.Context, ev *krules.Event) error {
			got = append(got, ev.Payload()[middleware.DLDeadLetter].(string))
			return nil
		})
		h.app.On("x").Do(func(_ context.Context, ev *krules.Event) error {
			if ev.Payload()["kind"] == "other" {
				return errors.New("other")
			}
			return errTransient
		})
		h.emit(t, t.Context(), "x", "s1", nil)
		h.emit(t, t.Context(), "x", "s2", krules.Payload{"kind": "other"})
		if !slices.Equal(got, []string{"dead-s1"}) {
			t.Fatalf("dead letters %v, want [dead-s1]", got)
		}
		if ok, _ := h.app.Subject("dead-s1").Has(t.Context(), "error"); !ok {
			t.Fatal("dead-s1 not stored")
		}
		if len(h.failures()) != 2 {
			t.Fatal("errors not passed on")
		}
	})
	t.Run("failing dead-letter handler does not loop", func(t *testing.T) {
		h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{}))
		var dlCalls counter
		h.app.On(middleware.DefaultDeadLetterEvent).Do(func(context.Context, *krules.Event) error {
			dlCalls.inc()
			return errors.New("dlq handler broken")
		})
		h.app.On("x").Do(func(context.Context, *krules.Event) error { return errTransient })
		h.emit(t, t.Context(), "x", "s", nil)
		if dlCalls.get() != 1 {
			t.Fatalf("dead-letter handler ran %d times, want 1", dlCalls.get())
		}
		if fs := h.failures(); len(fs) != 2 {
			t.Fatalf("errors %v, want the dlq handler's and the original", fs)
		}
	})
	t.Run("caller ctx cancelled", func(t *testing.T) {
		h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{Store: true}))
		j := &journal{}
		watchDeadLetters(h.app, j)
		ctx, cancel := context.WithCancel(t.Context())
		h.app.On("x").Do(func(context.Context, *krules.Event) error {
			cancel() // the caller goes away while the handler fails
			return errTransient
		})
		h.emit(t, ctx, "x", "s", nil)
		if len(j.dead()) != 1 {
			t.Fatalf("%d dead letters, want 1 despite the cancelled ctx", len(j.dead()))
		}
	})
	t.Run("unstorable payload kept as text", func(t *testing.T) {
		h := newHarness(t, middleware.DeadLetter(middleware.DeadLetterConfig{Store: true}))
		j := &journal{}
		watchDeadLetters(h.app, j)
		h.app.On("x").Do(func(context.Context, *krules.Event) error { return errTransient })
		h.emit(t, t.Context(), "x", "s", krules.Payload{"ch": make(chan int)})
		dl := j.dead()
		if len(dl) != 1 {
			t.Fatalf("%d dead letters", len(dl))
		}
		v, err := h.app.Subject(dl[0][middleware.DLDeadLetter].(string)).Get(t.Context(), "payload")
		if s, ok := v.(string); err != nil || !ok || !strings.HasPrefix(s, "map[ch:0x") {
			t.Fatalf("stored payload %#v, %v", v, err)
		}
	})
}
