package krules

import (
	"context"

	"github.com/krules-go/krules/storage"
)

// This file is the App side of the transactional change feed (package
// feed): the metadata a Subject hands to a backend in feed mode, and the
// policy that decides which handlers run for a change.

// FeedPolicy says where the handlers of a committed change run when the
// App's backend writes change records (a backend in feed mode, see
// storage.ChangeFeeder).
type FeedPolicy int

const (
	// FeedBoth (the default) keeps today's behaviour in the writing App:
	// Set, Delete and Flush run the App's own handlers synchronously, and
	// the change record also carries the change to the workers of other
	// processes. Use it when the writing App and the worker Apps register
	// different handlers (an API process that writes, worker processes that
	// react). A handler registered both in the writer's App and in a worker
	// App runs twice for one change: once in each.
	FeedBoth FeedPolicy = iota
	// FeedRemote runs no handler (and no outbound hook) of the writing App
	// for the built-in events subject-property-changed,
	// subject-property-deleted and subject-deleted: they run only where the
	// feed is consumed (transport/nats workers, in any process). Use it in
	// processes that both write and consume the feed with the same
	// handlers, so each change is handled exactly once by the worker group.
	// Custom events (App.Emit) are not affected.
	//
	// Outbound hooks (App.Outbound) of the writing App do not see the
	// built-in events either, on purpose: under FeedRemote the change
	// leaves the process as its change record, and the worker that
	// consumes the record emits the event in its own App, whose handlers
	// and outbound hooks see it there. A transport hook in the writer would
	// send every change a second time. Use FeedBoth to have the writer's
	// hooks see them.
	FeedRemote
)

// FeedConfig configures the App side of the change feed (WithChangeFeed).
type FeedConfig struct {
	// Policy: FeedBoth (default) or FeedRemote.
	Policy FeedPolicy
	// Trace returns the W3C trace context of ctx's span, written into the
	// change records so the trace continues in the worker that handles the
	// change (for OpenTelemetry: middleware/otel.TraceParent). Default: no
	// trace context.
	Trace func(ctx context.Context) (traceparent, tracestate string)
}

// WithChangeFeed configures how the App uses a backend in change-feed mode
// (see package feed). Without it the App uses FeedConfig{} (FeedBoth, no
// trace) when its backend writes change records; with a backend without
// a feed it changes nothing.
//
// In feed mode every Set, Delete, Store and Flush passes its metadata to
// the backend (WithExtra's Extra, Muted — a muted write writes no record —,
// the cascade depth, the trace context) and a write that would emit at or
// beyond the cascade limit is refused with ErrCascadeDepth whether or not
// a local handler matches, so a handler loop that spans processes ends
// there too.
func WithChangeFeed(cfg FeedConfig) Option {
	return func(a *App) { a.feed.cfg = cfg }
}

// feedState is the App's change-feed setting, fixed by New.
type feedState struct {
	cfg    FeedConfig
	on     bool // the backend writes change records
	remote bool // on and FeedRemote
}

// initFeed is called by New once the backend is known.
func (a *App) initFeed() {
	if f, ok := a.backend.(storage.ChangeFeeder); ok && f.ChangeFeed() {
		a.feed.on = true
		a.feed.remote = a.feed.cfg.Policy == FeedRemote
	}
}

// ChangeFeed reports whether the App's backend writes change records.
func (a *App) ChangeFeed() bool { return a.feed.on }

// WithCascadeDepth returns ctx carrying a cascade depth: an emit made with
// it counts as nested depth deep (see WithCascadeLimit). Transports use it
// to continue the depth of a change that crossed processes.
func WithCascadeDepth(ctx context.Context, depth int) context.Context {
	return &depthCtx{Context: ctx, depth: max(depth, 0)}
}

// CascadeDepth returns the cascade depth ctx carries (0 outside handlers).
func CascadeDepth(ctx context.Context) int { return depthOf(ctx) }

var emptyTable = newTable(nil, nil, nil)

// eventTable returns the registrations the built-in events of a write are
// dispatched to: none under FeedRemote.
func (a *App) eventTable() *table {
	if a.feed.remote {
		return emptyTable
	}
	return a.table.Load()
}

// feedMeta builds the record metadata of a write made with ctx and o.
func (a *App) feedMeta(ctx context.Context, o *callOptions) *storage.ChangeMeta {
	m := &storage.ChangeMeta{Muted: o.muted, Extra: o.extra, Depth: depthOf(ctx)}
	if a.feed.cfg.Trace != nil {
		m.TraceParent, m.TraceState = a.feed.cfg.Trace(ctx)
	}
	return m
}

// feedCtx returns the ctx for a direct backend write: with the record
// metadata in feed mode, ctx itself otherwise.
func (s *Subject) feedCtx(ctx context.Context, o *callOptions) context.Context {
	if !s.app.feed.on {
		return ctx
	}
	return s.feedCtxOn(ctx, o)
}

func (s *Subject) feedCtxOn(ctx context.Context, o *callOptions) context.Context {
	return storage.WithChange(ctx, s.app.feedMeta(ctx, o))
}

// feedCheck refuses, in feed mode, a write whose record would be delivered
// beyond the cascade limit (no local handler needs to match).
func (s *Subject) feedCheck(ctx context.Context, k storage.Kind, o *callOptions, eventType string) error {
	if !s.app.feed.on || k != storage.Default || o.muted {
		return nil
	}
	_, err := s.app.checkDepth(ctx, eventType, s)
	return err
}

// noteFeed remembers, in feed mode, the metadata of a cached write for the
// Store that commits it. s.mu is held.
func (s *Subject) noteFeed(ctx context.Context, k storage.Kind, prop string, o *callOptions) {
	if !s.app.feed.on || k != storage.Default {
		return
	}
	if s.feedPending == nil {
		s.feedPending = make(map[string]*storage.ChangeMeta)
	}
	s.feedPending[prop] = s.app.feedMeta(ctx, o)
}

// storeCtx returns the ctx for Store's batch: in feed mode it carries the
// metadata of every cached write. s.mu is held.
func (s *Subject) storeCtx(ctx context.Context) context.Context {
	if !s.app.feed.on {
		return ctx
	}
	m := s.app.feedMeta(ctx, &callOptions{})
	m.Props = s.feedPending
	return storage.WithChange(ctx, m)
}
