package krules

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/memory"
)

// DefaultCascadeLimit is the default nesting limit of emits (see WithCascadeLimit).
const DefaultCascadeLimit = 64

// App is a KRules application (the Python container): a storage backend, one
// event bus, and the subjects built on them. Two Apps never share handlers.
// An App is safe for concurrent use; registering handlers while events are
// dispatched is allowed (an emit sees the handlers registered when it began).
type App struct {
	backend      storage.Backend
	logger       *slog.Logger
	onError      ErrorHandler
	cascadeLimit int
	feed         feedState // change feed (changefeed.go)
	// blind is the backend as a storage.BlindOps (nil when it is not one):
	// the NoCache Ops of WriteOnly handles (blind.go).
	blind storage.BlindOps

	regMu sync.Mutex // serialises writers of table
	table atomic.Pointer[table]
	seq   uint64

	slabs eventSlabs // the current blocks Events are carved from (event.go)
}

// ErrorHandler receives every error returned by a handler (after its
// middleware) and every recovered panic (*PanicError, with the stack).
// handler is the handler's name. It runs synchronously in the emitting
// goroutine; it must not panic.
type ErrorHandler func(ctx context.Context, ev *Event, handler string, err error)

// Option configures an App.
type Option func(*App)

// WithStorage sets the storage backend. Default: a new in-memory store
// (storage/memory), shared by every Subject handle of the App.
func WithStorage(b storage.Backend) Option {
	return func(a *App) {
		if b != nil {
			a.backend = b
		}
	}
}

// WithLogger sets the logger for handler errors and filter panics.
// Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(a *App) {
		if l != nil {
			a.logger = l
		}
	}
}

// WithErrorHandler replaces the default error handler, which logs one line
// at level Error with the event type, subject, handler and error (for a
// panic, the panic value); the stack of a panic goes to a second line at
// level Debug. Errors wrapping ErrCascadeDepth are not logged again: the
// refused emit already was.
func WithErrorHandler(h ErrorHandler) Option {
	return func(a *App) {
		if h != nil {
			a.onError = h
		}
	}
}

// WithCascadeLimit sets how deeply emits may nest (an emit from a handler of
// an emit from a handler ...). Beyond it the emit is refused with
// ErrCascadeDepth and logged, which turns an accidental handler loop into an
// error instead of a stack overflow. Default DefaultCascadeLimit; n < 1
// keeps the default.
func WithCascadeLimit(n int) Option {
	return func(a *App) {
		if n >= 1 {
			a.cascadeLimit = n
		}
	}
}

// New returns an App with the given options.
func New(opts ...Option) *App {
	a := &App{cascadeLimit: DefaultCascadeLimit}
	for _, o := range opts {
		if o != nil {
			o(a)
		}
	}
	if a.backend == nil {
		a.backend = memory.New()
	}
	if a.logger == nil {
		a.logger = slog.Default()
	}
	if a.onError == nil {
		a.onError = a.logError
	}
	a.table.Store(newTable(nil, nil, nil))
	a.initFeed() // change feed hook (changefeed.go)
	a.blind, _ = a.backend.(storage.BlindOps)
	return a
}

// Storage returns the App's backend.
func (a *App) Storage() storage.Backend { return a.backend }

// Logger returns the App's logger.
func (a *App) Logger() *slog.Logger { return a.logger }

// Subject returns a new handle on the named subject. Handles are cheap; each
// has its own write cache (see Subject). opts (SubjectOption: NoCache,
// Muted) become the defaults of every call made through the handle;
// WriteOnly makes cached writes skip the load (see WriteOnly). An
// invalid name is reported by every method of the handle (ErrInvalidName).
func (a *App) Subject(name string, opts ...SubjectOption) *Subject {
	s := &Subject{app: a, name: name}
	for _, o := range opts {
		s.base.add(o)
	}
	s.nameErr = storage.ValidateName("subject", name)
	s.cachedOK = s.nameErr == nil && !s.base.noCache
	if mb, ok := a.backend.(*memory.Backend); ok && s.nameErr == nil {
		mb.InitRef(&s.mem, name)
	}
	return s
}

func (a *App) logError(ctx context.Context, ev *Event, handler string, err error) {
	if errors.Is(err, ErrCascadeDepth) {
		return // already logged where the emit was refused
	}
	attrs := []any{"event", ev.Type, "handler", handler, "error", err}
	if ev.Subject != nil {
		attrs = append(attrs, "subject", ev.Subject.name)
	}
	var pe *PanicError
	if errors.As(err, &pe) {
		a.logger.ErrorContext(ctx, "krules: handler panicked", attrs...)
		if a.logger.Enabled(ctx, slog.LevelDebug) {
			a.logger.DebugContext(ctx, "krules: panic stack", "event", ev.Type, "handler", handler, "stack", string(pe.Stack))
		}
		return
	}
	a.logger.ErrorContext(ctx, "krules: handler failed", attrs...)
}
