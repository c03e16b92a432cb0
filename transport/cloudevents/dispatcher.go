package cloudevents

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/krules-go/krules"
)

// Policy says what happens locally to an event the egress middleware sends.
type Policy string

const (
	// PolicyDirect sends the event and runs none of its local handlers.
	PolicyDirect Policy = "direct"
	// PolicyBoth sends the event and runs its local handlers too.
	PolicyBoth Policy = "both"
	// PolicyNever (legacy) does not send the event; handlers run.
	PolicyNever Policy = "never"
	// PolicyAlways (legacy) is PolicyBoth.
	PolicyAlways Policy = "always"
	// PolicyDefault (legacy) is PolicyDirect.
	PolicyDefault Policy = "default"
)

// DefaultDispatchTimeout bounds one POST of the default HTTP client (30 s,
// as in Python KRules).
const DefaultDispatchTimeout = 30 * time.Second

// URLFunc computes a dispatch URL from the subject name and event type.
type URLFunc func(subject, eventType string) string

// StatusError is returned when the target answers with a non-2xx status.
type StatusError struct {
	URL  string
	Code int
	Body string // the first bytes of the response body
}

// Error implements error.
func (e *StatusError) Error() string {
	return fmt.Sprintf("POST %s: status %d: %s", e.URL, e.Code, e.Body)
}

// Encoding is the HTTP content mode a Dispatcher sends events in.
type Encoding int

const (
	// Structured (the default) sends the whole event as one JSON object,
	// Content-Type application/cloudevents+json: the mode the Python
	// KRules receiver (krules_fastapi_env) reads, and one every
	// CloudEvents receiver accepts, this package's Receiver included.
	Structured Encoding = iota
	// Binary sends the attributes as ce-* headers and the payload as the
	// body, Content-Type application/json (what the Python emitter sends;
	// the Python receiver refuses it with 422).
	Binary
)

// DispatcherConfig configures a Dispatcher. The zero value is ready to use.
type DispatcherConfig struct {
	// Source is the source attribute of sent events. Default DefaultSource().
	Source string
	// Client sends the requests. Default: an http.Client with a
	// DefaultDispatchTimeout timeout.
	Client *http.Client
	// DefaultPolicy applies when an event has no MetaDispatchPolicy.
	// Default PolicyDirect.
	DefaultPolicy Policy
	// Encoding of the requests. Default Structured.
	Encoding Encoding
}

// Dispatcher is the HTTP egress: it POSTs KRules events as CloudEvents, in
// structured mode unless DispatcherConfig.Encoding says Binary. Use Send or
// Dispatch directly, or Install it on an App to send every event whose
// metadata names a MetaDispatchURL. Safe for concurrent use.
type Dispatcher struct {
	cfg DispatcherConfig
}

// NewDispatcher returns a Dispatcher.
func NewDispatcher(cfg DispatcherConfig) *Dispatcher {
	if cfg.Source == "" {
		cfg.Source = DefaultSource()
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: DefaultDispatchTimeout}
	}
	if cfg.DefaultPolicy == "" {
		cfg.DefaultPolicy = PolicyDirect
	}
	return &Dispatcher{cfg: cfg}
}

// Dispatch builds the CloudEvent of ev (FromKrules: ce-subject, ce-originid,
// ce-propertyname, the subject's extended properties as extensions) and
// POSTs it to url (see Send). It returns the event id.
func (d *Dispatcher) Dispatch(ctx context.Context, ev *krules.Event, url string) (string, error) {
	e, err := FromKrules(ctx, ev, d.cfg.Source)
	if err != nil {
		return "", err
	}
	if err := d.Send(ctx, url, e); err != nil {
		return e.ID(), err
	}
	return e.ID(), nil
}

// Send POSTs e to url in the configured Encoding: structured (the event as
// one JSON object, Content-Type application/cloudevents+json, JSON data
// inline as "data") or binary (ce-* headers, data as the body with its
// datacontenttype as Content-Type). A non-2xx answer is a *StatusError.
func (d *Dispatcher) Send(ctx context.Context, url string, e *event.Event) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return fmt.Errorf("cloudevents: dispatch %q (id %s) to %q: %w", e.Type(), e.ID(), url, err)
	}
	enc := binding.EncodingStructured
	switch d.cfg.Encoding {
	case Structured:
	case Binary:
		enc = binding.EncodingBinary
	default:
		return fmt.Errorf("cloudevents: dispatch %q (id %s) to %q: unknown Encoding %d", e.Type(), e.ID(), url, d.cfg.Encoding)
	}
	wctx := binding.WithPreferredEventEncoding(ctx, enc)
	if err := cehttp.WriteRequest(wctx, binding.ToMessage(e), req); err != nil {
		return fmt.Errorf("cloudevents: dispatch %q (id %s) to %q: encode: %w", e.Type(), e.ID(), url, err)
	}
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("cloudevents: dispatch %q (id %s): %w", e.Type(), e.ID(), err)
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("cloudevents: dispatch %q (id %s): %w", e.Type(), e.ID(), &StatusError{URL: url, Code: resp.StatusCode, Body: string(head)})
	}
	return nil
}

// dispatchState is kept in the event's metadata so the middleware, which
// runs once per matching handler, sends once per event. It records the
// outcome: after a failed send, failedIn names the handler whose middleware
// sent, so that a retry of that handler's chain (middleware.Retry outside
// the egress middleware) sends again instead of being a silent no-op.
type dispatchState struct {
	policy   Policy
	sent     bool   // a send succeeded (or was never due: PolicyNever)
	failed   bool   // the last send failed
	failedIn string // HandlerName of the chain of the last failed send
}

const metaState = "_krules_dispatch_state"

// Middleware returns the egress middleware. For an event whose metadata has
// MetaDispatchURL (string, URLFunc or func(subject, eventType string)
// string) it sends the event once — on the first matching handler — and
// then, by policy (MetaDispatchPolicy, else the configured default):
//
//   - direct: no local handler of the event runs (all of them are skipped;
//     the Python original skipped only the first);
//   - both: every local handler runs.
//
// A failed dispatch is recorded in MetaDispatchError and returned from the
// middleware of the handler that sent it, so it reaches the App's error
// handler (krules.WithErrorHandler); a successful one sets MetaDispatched
// and MetaDispatchedURL (and MetaDispatchError to nil after an earlier
// failure). Events without MetaDispatchURL pass through.
//
// Retries: place the egress middleware inside middleware.Retry
// (app.Use(middleware.Retry(...), d.Middleware())). When the chain of the
// handler whose send failed runs again, the event is sent again, and the
// failure of the last attempt is what Retry reports. The middleware of the
// other handlers of the event does not send again after a failure.
//
// Middleware only runs for events that have a matching handler: use
// Install, whose outbound hook sends the others, or register a handler with
// Route.
func (d *Dispatcher) Middleware() krules.Middleware {
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		target, ok := ev.Meta(MetaDispatchURL)
		if !ok || target == nil {
			return next(ctx)
		}
		var st *dispatchState
		if v, ok := ev.Meta(metaState); ok {
			st, _ = v.(*dispatchState)
		}
		if st != nil && (st.sent || !st.failed || st.failedIn != krules.HandlerName(ctx)) {
			// Already sent, or failed in another handler's chain (reported
			// there): apply the policy only.
			if st.policy == PolicyDirect {
				return nil
			}
			return next(ctx)
		}
		if st == nil {
			st = &dispatchState{policy: d.policy(ctx, ev)}
			ev.SetMeta(metaState, st)
		}
		if st.policy == PolicyNever {
			st.sent = true
			return next(ctx)
		}
		dispErr := d.dispatchMeta(ctx, ev, target, st.failed)
		st.failed = dispErr != nil
		st.sent = dispErr == nil
		if st.failed {
			st.failedIn = krules.HandlerName(ctx)
		}
		if st.policy == PolicyDirect {
			return dispErr
		}
		return errors.Join(dispErr, next(ctx))
	}
}

func (d *Dispatcher) dispatchMeta(ctx context.Context, ev *krules.Event, target any, retry bool) error {
	var url string
	name := ""
	if ev.Subject != nil {
		name = ev.Subject.Name()
	}
	switch t := target.(type) {
	case string:
		url = t
	case URLFunc:
		url = t(name, ev.Type)
	case func(subject, eventType string) string:
		url = t(name, ev.Type)
	default:
		err := fmt.Errorf("cloudevents: dispatch %q on %q: %s metadata of type %T (want string or URLFunc)", ev.Type, name, MetaDispatchURL, target)
		ev.SetMeta(MetaDispatchError, err.Error())
		return err
	}
	if _, err := d.Dispatch(ctx, ev, url); err != nil {
		ev.SetMeta(MetaDispatchError, err.Error())
		return err
	}
	if retry {
		ev.SetMeta(MetaDispatchError, nil)
	}
	ev.SetMeta(MetaDispatched, true)
	ev.SetMeta(MetaDispatchedURL, url)
	return nil
}

func (d *Dispatcher) policy(ctx context.Context, ev *krules.Event) Policy {
	p := d.cfg.DefaultPolicy
	if v, ok := ev.Meta(MetaDispatchPolicy); ok {
		switch x := v.(type) {
		case Policy:
			p = x
		case string:
			p = Policy(x)
		}
	}
	log := ev.App().Logger()
	switch p {
	case PolicyDirect, PolicyBoth, PolicyNever:
	case PolicyAlways:
		log.WarnContext(ctx, "cloudevents: dispatch policy \"always\" is deprecated: use \"both\"", "event", ev.Type)
		p = PolicyBoth
	case PolicyDefault:
		log.WarnContext(ctx, "cloudevents: dispatch policy \"default\" is deprecated: use \"direct\"", "event", ev.Type)
		p = PolicyDirect
	default:
		log.ErrorContext(ctx, "cloudevents: unknown dispatch policy; using \"direct\"", "event", ev.Type, "policy", string(p))
		p = PolicyDirect
	}
	if p == PolicyNever {
		log.WarnContext(ctx, "cloudevents: dispatch policy \"never\": event not dispatched", "event", ev.Type)
	}
	return p
}

// Install registers the Dispatcher on app: Middleware (app.Use), and an
// outbound hook (app.Outbound, named "cloudevents.dispatch") that sends
// every event carrying MetaDispatchURL that no local handler took — none
// matched, or their filters refused it — so no dummy handler (Route) is
// needed. The hook runs after the local handlers, sends at most once per
// event (never an event the middleware already sent or failed to send),
// and follows the policy ("never" sends nothing). Its failures go to the
// App's error handler and MetaDispatchError like the middleware's, but
// middleware.Retry does not wrap hooks: to retry those sends too, give the
// Dispatcher a Client that retries. Call Install after app.Use of any
// middleware that must wrap the Dispatcher's (middleware.Retry).
func (d *Dispatcher) Install(app *krules.App) {
	app.Use(d.Middleware())
	app.Outbound("cloudevents.dispatch", d.outbound)
}

// outbound is the hook of Install.
func (d *Dispatcher) outbound(ctx context.Context, ev *krules.Event) error {
	target, ok := ev.Meta(MetaDispatchURL)
	if !ok || target == nil {
		return nil
	}
	if v, ok := ev.Meta(metaState); ok && v != nil {
		return nil // the middleware ran for this event: sent, or reported
	}
	st := &dispatchState{policy: d.policy(ctx, ev)}
	ev.SetMeta(metaState, st)
	if st.policy == PolicyNever {
		st.sent = true
		return nil
	}
	err := d.dispatchMeta(ctx, ev, target, false)
	st.sent, st.failed = err == nil, err != nil
	return err
}

// Route registers on app a handler that does nothing, for events whose type
// matches patterns, so that the egress middleware runs for them even when
// no other local handler matches (middleware only wraps matching handlers).
// Install makes it unnecessary: its outbound hook sends such events.
func (d *Dispatcher) Route(app *krules.App, patterns ...string) *krules.Handler {
	return app.On(patterns...).Named("cloudevents.route").Do(func(context.Context, *krules.Event) error { return nil })
}
