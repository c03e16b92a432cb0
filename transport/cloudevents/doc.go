// Package cloudevents connects a KRules App to HTTP as CloudEvents v1.0,
// compatible with Python KRules (krules_cloudevents, krules_fastapi_env).
// It uses github.com/cloudevents/sdk-go/v2 for the event format and the
// HTTP binding.
//
// # Ingress
//
// A Receiver is an http.Handler that accepts one CloudEvent per POST, in
// binary mode (ce-* headers) or structured mode (the event as a JSON
// body), and emits it into the App. Serve it with Serve or ListenAndServe
// (or an http.Server from NewServer), which set the timeouts and header
// limit a bare http.Server lacks and shut down gracefully when ctx is done:
//
//	app := krules.New(krules.WithStorage(backend))
//	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
//		e, _ := cloudevents.FromContext(ctx) // the incoming CloudEvent: id, source, time, extensions
//		_, _, err := ev.Subject.Set(ctx, "status", "new", krules.NoCache())
//		_ = e
//		return err
//	})
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
//	defer stop()
//	err := cloudevents.ListenAndServe(ctx, ":8080",
//		cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}), cloudevents.ServerConfig{})
//
// The CloudEvent subject names the KRules subject and is required; the data
// (a JSON object, or nothing) becomes the payload. The event is available
// to the handlers as metadata MetaCloudEvent and, for the whole chain of
// events the handlers emit with their ctx, through FromContext and
// OriginID. The answer is 202 once the handlers are done, 400 with a JSON
// error body naming the problem for anything malformed, 413 above
// ReceiverConfig.MaxBodyBytes (see Receiver for the full list, and for
// what is accepted beyond the spec for Python KRules senders). A runnable
// server is in examples/http-receiver.
//
// # Egress
//
// A Dispatcher POSTs events as CloudEvents, in structured mode by default
// (what the Python KRules receiver reads; DispatcherConfig.Encoding Binary
// for ce-* headers). Installed on an App (middleware, plus an outbound hook
// for the events no local handler takes), it sends every event whose
// metadata names a dispatch_url:
//
//	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "orders"})
//	d.Install(app) // after app.Use(middleware.Retry(...)), if any
//	app.Emit(ctx, "order.approved", app.Subject("order-1"), krules.Payload{"by": "ann"},
//		krules.WithMeta(cloudevents.MetaDispatchURL, "http://billing/"),
//		krules.WithMeta(cloudevents.MetaDispatchPolicy, "direct"))
//
// The event carries id (see Event ids below), type, source, subject,
// time, originid (the originid of the incoming event of the chain,
// else its id, else the new id), propertyname for property events, and
// one extension per extended property of the subject, its name normalised
// to [a-z0-9]+ (NormalizeExtensionName; "_krules*" properties are internal
// and never sent). The data is the payload as JSON. The dispatch_url is a
// string or a function of subject name and event type.
//
// Policy "direct" (the default) sends the event and runs none of its local
// handlers; "both" sends it and runs them. Unlike the Python original, the
// event is sent exactly once per emit and "direct" skips every local handler,
// not only the first. A failed dispatch (network error, non-2xx status:
// *StatusError) goes to the App's error handler (krules.WithErrorHandler)
// and is recorded in the event's MetaDispatchError metadata; it never fails
// the emitter.
//
// Trace context: an event whose metadata holds "traceparent" (and
// "tracestate") — as middleware/otel's Inject writes them, or
// krules.WithMeta("traceparent", otel.TraceParent(ctx)) — is sent with
// the CloudEvent extensions of those names (ce-traceparent,
// ce-tracestate); the Receiver (Deliver) puts them back into the metadata
// of the event it emits, where the otel middleware of the receiving App
// finds them and continues the trace.
//
// Retries: install the Dispatcher inside middleware.Retry
// (app.Use(middleware.Retry(...)) before d.Install(app)); a failed send of
// an event with local handlers is then really sent again on the next
// attempt. The outbound hook, which sends the events no local handler
// took, runs without middleware (see Install).
//
// # Event ids
//
// Outside a delivery, every event NewEvent or FromKrules builds gets a new
// random UUID. Inside one — the ctx of the handlers run by Deliver (so by
// the Receiver) or by the NATS worker, and of the events they emit with it
// (NewContext) — the id is deterministic: a name-based UUID of the incoming
// event's source and id, the event type, the subject, and the ordinal of
// the event among those of the same type and subject built in this
// delivery. When the incoming event is delivered again (a sender's retry,
// a NATS redelivery after a failure or a crash) and its handlers emit the
// same events again, those get the same ids, so a receiver that
// de-duplicates by id — JetStream within its duplicate window, the NATS
// worker's idempotency record — drops the copies. This assumes handlers
// emit deterministically: the same events, of each type and subject in the
// same order, on every delivery. FromKrules also records the id in the
// event's MetaEventID metadata, so one KRules event sent twice (to two
// destinations, or again by middleware.Retry) keeps one id.
//
// NewEvent, FromKrules, Payload, Check and Deliver are the conversions the
// NATS transport (package transport/nats) shares.
package cloudevents
