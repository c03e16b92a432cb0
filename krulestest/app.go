package krulestest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// App is a krules.App for one test, with a Recorder attached before any
// handler and the handler errors kept. Use it as a *krules.App (the embedded
// App) or pass app.App to the code under test.
type App struct {
	*krules.App
	rec *Recorder

	mu   sync.Mutex
	errs []HandlerError
}

// HandlerError is one error a handler returned (after its middleware), or
// a recovered panic (*krules.PanicError), as the App's error handler got it.
type HandlerError struct {
	// Event is the event the handler failed on.
	Event Recorded
	// Handler is the handler's name.
	Handler string
	// Err is the error.
	Err error
}

func (e HandlerError) String() string {
	return fmt.Sprintf("handler %s on %s: %v", e.Handler, e.Event, e.Err)
}

// New returns an App for the test t: a fresh in-memory store, the App's log
// written to the test's output, every handler error recorded (Errors) and
// logged, and a Recorder attached before any handler (Events). opts are
// applied after these defaults, so krules.WithStorage replaces the store and
// krules.WithErrorHandler replaces the recording error handler (Errors then
// stays empty). When the test ends, t.Cleanup removes every handler, so
// work still running in other goroutines no longer reaches them.
//
// Create the App inside a testing/synctest bubble when the test uses one.
func New(t testing.TB, opts ...krules.Option) *App {
	t.Helper()
	a := &App{}
	all := []krules.Option{
		krules.WithStorage(memory.New()),
		krules.WithLogger(slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))),
		krules.WithErrorHandler(a.onError(t)),
	}
	a.App = krules.New(append(all, opts...)...)
	a.rec = Record(a.App)
	t.Cleanup(func() { a.RemoveAll() })
	return a
}

func (a *App) onError(t testing.TB) krules.ErrorHandler {
	return func(_ context.Context, ev *krules.Event, handler string, err error) {
		he := HandlerError{Event: snapshot(ev), Handler: handler, Err: err}
		a.mu.Lock()
		a.errs = append(a.errs, he)
		a.mu.Unlock()
		t.Logf("krulestest: %s", he)
	}
}

// Events returns the App's Recorder.
func (a *App) Events() *Recorder { return a.rec }

// Errors returns the handler errors recorded so far, in order.
func (a *App) Errors() []HandlerError {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]HandlerError(nil), a.errs...)
}

// AssertNoErrors fails t if any handler failed, listing every failure.
func (a *App) AssertNoErrors(t testing.TB) {
	t.Helper()
	errs := a.Errors()
	if len(errs) == 0 {
		return
	}
	msg := fmt.Sprintf("krulestest: expected no handler errors, got %d:", len(errs))
	for _, e := range errs {
		msg += "\n  " + e.String()
	}
	t.Error(msg)
}

// AssertError fails t unless some handler error matches target
// (errors.Is), and returns the first such HandlerError.
func (a *App) AssertError(t testing.TB, target error) HandlerError {
	t.Helper()
	errs := a.Errors()
	for _, e := range errs {
		if errors.Is(e.Err, target) {
			return e
		}
	}
	msg := fmt.Sprintf("krulestest: expected a handler error matching %v, got %d errors:", target, len(errs))
	for _, e := range errs {
		msg += "\n  " + e.String()
	}
	t.Error(msg)
	return HandlerError{}
}

// NewEvent is the package-level NewEvent, with the events the Event emits
// (ev.Emit) recorded in a.Events() and its handler errors in a.Errors().
// They still run none of a's handlers.
func (a *App) NewEvent(ctx context.Context, eventType string, subject *krules.Subject, payload krules.Payload, opts ...krules.EmitOption) (*krules.Event, error) {
	return newEvent(ctx, a.Storage(), a.Logger(), a.privateErrors, a.rec, eventType, subject, payload, opts)
}

// NewEvent builds the Event a handler would receive for an emit of
// eventType about subject with payload and opts (krules.WithExtra,
// krules.WithMeta), without running any handler: pass it to a Filter or a
// Middleware under test. PropertyName, OldValue and NewValue are filled from
// the payload as for a real emit (krules.KeyPropertyName, KeyOldValue,
// KeyValue build a property event); Meta and SetMeta work as usual.
//
// ev.App() is a private App sharing the store and logger of subject's App
// and having no handlers, so events the Event emits (ev.Emit) go nowhere;
// use App.NewEvent to record them. It returns an error only when krules
// refuses the emit (empty type, invalid subject name, ctx cancelled).
func NewEvent(ctx context.Context, eventType string, subject *krules.Subject, payload krules.Payload, opts ...krules.EmitOption) (*krules.Event, error) {
	if subject == nil || subject.App() == nil {
		return nil, fmt.Errorf("krulestest: NewEvent %q: nil subject", eventType)
	}
	app := subject.App()
	return newEvent(ctx, app.Storage(), app.Logger(), nil, nil, eventType, subject, payload, opts)
}

func newEvent(ctx context.Context, store storage.Backend, log *slog.Logger, onErr krules.ErrorHandler, rec *Recorder,
	eventType string, subject *krules.Subject, payload krules.Payload, opts []krules.EmitOption) (*krules.Event, error) {
	priv := krules.New(krules.WithStorage(store), krules.WithLogger(log), krules.WithErrorHandler(onErr))
	var got *krules.Event
	h := priv.On("*").Do(func(_ context.Context, ev *krules.Event) error {
		got = ev
		return nil
	})
	err := priv.Emit(ctx, eventType, subject, payload, opts...)
	h.Remove()
	if err != nil {
		return nil, err
	}
	if got == nil { // cannot happen: "*" matches every type
		return nil, fmt.Errorf("krulestest: event %q was not dispatched", eventType)
	}
	if rec != nil {
		rec.attach(priv)
	}
	return got, nil
}

func (a *App) privateErrors(ctx context.Context, ev *krules.Event, handler string, err error) {
	he := HandlerError{Event: snapshot(ev), Handler: handler, Err: err}
	a.mu.Lock()
	a.errs = append(a.errs, he)
	a.mu.Unlock()
}

// HandlerContext returns a context derived from ctx in which
// krules.HandlerName reports handler, as in a middleware wrapping that
// handler; use it to call a Middleware under test directly:
//
//	err := mw(krulestest.HandlerContext(ctx, "ship_order"), ev, next)
func HandlerContext(ctx context.Context, handler string) context.Context {
	priv := krules.New(krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
	priv.Use(func(ctx context.Context, _ *krules.Event, next krules.Next) error { return next(ctx) })
	var got context.Context
	priv.On("krulestest.handler-context").Named(handler).Do(func(ctx context.Context, _ *krules.Event) error {
		got = ctx
		return nil
	})
	if err := priv.Emit(ctx, "krulestest.handler-context", priv.Subject("krulestest"), nil); err != nil || got == nil {
		return ctx // ctx already cancelled: nothing was dispatched
	}
	return got
}

// AssertProperty fails t unless the subject's default property prop holds a
// value equal to want (compared as krules compares values). It reads
// through s, so it sees s's unsaved cached writes.
func AssertProperty(t testing.TB, s *krules.Subject, prop string, want any) {
	t.Helper()
	got, err := s.Get(t.Context(), prop)
	switch {
	case errors.Is(err, krules.ErrNotFound):
		t.Errorf("krulestest: %s.%s: expected %s, got no such property", s.Name(), prop, show(want))
	case err != nil:
		t.Errorf("krulestest: %s.%s: expected %s, got error: %v", s.Name(), prop, show(want), err)
	case !equal(want, got):
		t.Errorf("krulestest: %s.%s: expected %s, got %s", s.Name(), prop, show(want), show(got))
	}
}

// AssertNoProperty fails t if the subject has the default property prop.
func AssertNoProperty(t testing.TB, s *krules.Subject, prop string) {
	t.Helper()
	got, err := s.Get(t.Context(), prop)
	switch {
	case errors.Is(err, krules.ErrNotFound):
	case err != nil:
		t.Errorf("krulestest: %s.%s: expected no such property, got error: %v", s.Name(), prop, err)
	default:
		t.Errorf("krulestest: %s.%s: expected no such property, got %s", s.Name(), prop, show(got))
	}
}
