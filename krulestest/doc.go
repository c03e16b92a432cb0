// Package krulestest helps test krules handlers, filters and middleware:
//
//   - New returns an App for one test (in-memory store, handler errors
//     recorded, cleaned up with t.Cleanup) that records every event emitted
//     through it, in emission order, cascades included.
//   - Record attaches the same Recorder to any *krules.App.
//   - Expect(eventType) builds a Matcher (subject, property, old → new,
//     payload, extra, metadata); the Recorder's Assert* methods report a
//     failure as "expected ... got:" followed by every recorded event.
//   - App.NewEvent builds an Event by hand, exactly as a handler receives it,
//     to call a Filter or a Middleware directly; HandlerContext gives the ctx
//     a middleware sees (krules.HandlerName).
//   - Recorder.WaitFor and Eventually wait for an asynchronous outcome with a
//     deadline. Both only block on channels and timers created by the waiting
//     goroutine, so they work inside testing/synctest bubbles (create the App
//     inside the bubble).
//
// A typical test:
//
//	func TestOrderFlow(t *testing.T) {
//		app := krulestest.New(t)
//		registerOrderHandlers(app.App)
//		app.Emit(t.Context(), "order.created", app.Subject("order-1"), krules.Payload{"amount": 1500})
//
//		app.Events().AssertSequence(t,
//			krulestest.Expect("order.created").Subject("order-1"),
//			krulestest.Changed("status").From(nil).To("pending"),
//			krulestest.Changed("status").From("pending").To("validated"),
//		)
//		app.AssertNoErrors(t)
//		krulestest.AssertProperty(t, app.Subject("order-1"), "status", "validated")
//	}
//
// How events are recorded: the Recorder is a handler with the pattern "*"
// registered before any other, so it sees each event before the App's own
// handlers run (the order of Events is the order of emission, depth first)
// and even events no other handler matches. Two consequences: middleware
// registered with Use also wraps the recorder (a logging middleware logs it
// once per event, metrics count it under the handler name
// RecorderHandlerName), and App.RemoveAll removes it.
package krulestest
