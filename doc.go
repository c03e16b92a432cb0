// Package krules is a reactive, event-driven framework: named subjects hold
// properties in a pluggable store, every effective property change is an
// event, and handlers react to events through glob patterns, filters and
// middleware. It is the Go implementation of Python KRules (krules-framework
// 3.1), with the same data layout on Redis and PostgreSQL.
//
// # Subjects and properties
//
// An App owns a storage backend (in-memory by default) and one event bus.
// A Subject is a cheap handle on a named subject:
//
//	app := krules.New() // or krules.New(krules.WithStorage(backend))
//	user := app.Subject("user-123")
//
//	user.Set(ctx, "name", "John")                   // returns (new, old, err)
//	user.Set(ctx, "logins", krules.Inc(1))          // built-in op: Inc, Append, Max, Min
//	user.Set(ctx, "score", krules.Update(func(c int) int { return max(c, 150) }))
//	user.Set(ctx, "tags", krules.Update(func(old []any) []any { ... })) // nil when missing
//	user.Set(ctx, "status", "suspended", krules.WithExtra(krules.Extra{"reason": "policy"}))
//	user.Set(ctx, "derived", 1, krules.Muted())     // no event
//	user.SetExt(ctx, "last_ip", "10.0.0.1")         // extended: metadata, never emits
//
//	name, err := user.Get(ctx, "name")              // errors.Is(err, krules.ErrNotFound) when missing
//	status, _ := user.Get(ctx, "status", krules.Default("inactive"))
//	age, err := krules.GetAs[int](ctx, user, "age")
//	ok, _ := user.Has(ctx, "email"); keys, _ := user.Keys(ctx)
//	m, _ := user.Dict(ctx) // {"name": "user-123", <props>..., "ext": {...}}
//
// Values follow one JSON data model on every backend (see package storage):
// numbers come back as int64 or float64, lists as []any, objects as
// map[string]any; values outside it (channels, NaN, cycles, ...) are refused
// with ErrInvalidValue before anything is written.
//
// # The write cache: Store and NoCache
//
// A handle loads the subject on first access and keeps writes in its own
// cache; Store writes them in one atomic batch and drops the cache. Other
// handles see the changes after Store. NoCache, per call or per handle, goes
// straight to the store atomically; use it for counters shared by processes:
//
//	user.Set(ctx, "a", 1)
//	user.Set(ctx, "b", 2)
//	err := user.Store(ctx) // one write
//
// A NoCache write that fails with a timeout or a network error may still
// have been applied: the store got it and the reply was lost. Retrying it
// blindly can apply it twice (an Inc counts twice). Give such writes an
// IdempotencyKey: a retry with the same key returns the first result and
// writes and emits nothing (every bundled backend records keys atomically
// with the write, for 24 hours by default):
//
//	user.Set(ctx, "n", krules.Inc(1), krules.NoCache(), krules.IdempotencyKey(requestID))
//
// A handle made with NoCache applies it to every call:
//
//	hits := app.Subject("page-1", krules.NoCache())
//	hits.Set(ctx, "views", krules.Inc(1)) // one atomic round trip on Redis/PostgreSQL
//
// A WriteOnly handle skips the first load for plain-value Sets, so writing
// properties without reading them costs only the Store:
//
//	imp := app.Subject("sensor-7", krules.WriteOnly(), krules.Muted())
//	if _, _, err := imp.Set(ctx, "reading", 42); err != nil {
//		return err
//	}
//	err := imp.Store(ctx) // one round trip, no load
//
// With NoCache too, its writes are blind: a Set of a plain value is one
// write and a built-in Op one server-side command (Redis HINCRBY,
// PostgreSQL UPDATE) that returns only the new value; such a Set returns
// old value nil and always emits (see WriteOnly):
//
//	counter := app.Subject("page-1", krules.WriteOnly(), krules.NoCache(), krules.Muted())
//	n, _, err := counter.Set(ctx, "views", krules.Inc(1)) // n: the new count
//
// Flush deletes a subject, emitting PropertyDeleted for every property and
// then SubjectDeleted.
//
// # Events and handlers
//
// Set emits PropertyChanged when a value really changes; Delete emits
// PropertyDeleted; App.Emit sends any event. Handlers subscribe with Python
// fnmatch globs ('*' also crosses dots), filters and a name:
//
//	app.On("order.created").
//		When(func(ctx context.Context, ev *krules.Event) bool {
//			amount, ok := ev.Payload().Int("amount") // any number type, wire events included
//			return ok && amount > 1000
//		}).
//		Do(func(ctx context.Context, ev *krules.Event) error {
//			return ev.Emit(ctx, "order.requires_approval", ev.Payload())
//		})
//	app.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
//		fmt.Println(ev.Subject.Name(), ev.PropertyName, ev.OldValue, "->", ev.NewValue)
//		return nil
//	})
//	app.Emit(ctx, "order.created", app.Subject("order-1"), krules.Payload{"amount": 1500})
//
// Event.Payload() is the emitted map; for the built-in property events it is
// built only when a handler calls it (PropertyName, OldValue and NewValue
// carry the same data for free).
//
// Dispatch is synchronous and depth first: handlers of one event run one
// after another in registration order in the emitting goroutine, and an emit
// inside a handler completes before that handler continues. A handler's error
// or panic goes to the App's ErrorHandler (logged with slog by default) and
// never stops the other handlers or reaches the emitter. Emits nest at most
// WithCascadeLimit levels deep (ErrCascadeDepth), so a handler loop becomes
// an error instead of a stack overflow.
//
// Middleware wraps every matching handler (first registered outermost); the
// middleware package ships Recover, Logging, Timeout, Retry, CircuitBreaker,
// DeadLetter and more:
//
//	app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error {
//		start := time.Now()
//		err := next(ctx)
//		slog.Info("handled", "event", ev.Type, "handler", krules.HandlerName(ctx), "took", time.Since(start))
//		return err
//	})
//
// # Concurrency
//
// App, Subject and Emit are safe for concurrent use. Registering handlers is
// copy-on-write: the emit path takes no lock and its cost does not grow with
// the number of handlers that do not match.
//
// # Storage and scale-out
//
// Backends: storage/memory (default), storage/bolt (embedded file),
// storage/redis, storage/postgres, storage/router (by subject prefix), all
// passing the conformance suite storage/storagetest; storage/storageurl opens
// any of them from a URL. transport/cloudevents carries events over HTTP as
// CloudEvents and transport/nats distributes them to worker processes over
// NATS JetStream with per-subject ordering.
package krules
