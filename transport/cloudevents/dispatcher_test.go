package cloudevents_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
	"github.com/krules-go/krules/transport/cloudevents"
)

type captured struct {
	header http.Header
	body   string
}

// sink is an HTTP endpoint recording the requests it gets.
type sink struct {
	mu   sync.Mutex
	reqs []captured
	code int
	srv  *httptest.Server
}

func newSink(t *testing.T, code int) *sink {
	s := &sink{code: code}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, captured{r.Header.Clone(), string(b)})
		s.mu.Unlock()
		w.WriteHeader(s.code)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) all() []captured {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]captured(nil), s.reqs...)
}

type errSink struct {
	mu   sync.Mutex
	errs []error
}

func (e *errSink) handle(_ context.Context, _ *krules.Event, _ string, err error) {
	e.mu.Lock()
	e.errs = append(e.errs, err)
	e.mu.Unlock()
}

func (e *errSink) all() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.errs...)
}

func TestEgressHeaders(t *testing.T) {
	ctx := context.Background()
	out := newSink(t, http.StatusAccepted)
	app := krules.New()
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "svc-a", Encoding: cloudevents.Binary})
	app.Use(d.Middleware())
	d.Route(app, "*")

	s := app.Subject("device-1")
	for k, v := range map[string]any{"Tenant_ID": "acme", "zone-2": 7, "_krules_applied": "x", "__": "dropped"} {
		if _, _, err := s.SetExt(ctx, k, v, krules.NoCache()); err != nil {
			t.Fatal(err)
		}
	}
	err := app.Emit(ctx, krules.PropertyChanged, app.Subject("device-1"),
		krules.Payload{krules.KeyPropertyName: "temp", krules.KeyOldValue: 1, krules.KeyValue: 2},
		krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	reqs := out.all()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	h := reqs[0].header
	want := map[string]string{
		"ce-specversion":  "1.0",
		"ce-type":         krules.PropertyChanged,
		"ce-source":       "svc-a",
		"ce-subject":      "device-1",
		"ce-propertyname": "temp",
		"ce-tenantid":     "acme",
		"ce-zone2":        "7",
		"content-type":    "application/json",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	id := h.Get("ce-id")
	if id == "" || h.Get("ce-time") == "" {
		t.Errorf("missing ce-id/ce-time: %v", h)
	}
	if got := h.Get("ce-originid"); got != id {
		t.Errorf("ce-originid = %q, want the new id %q when there is no incoming event", got, id)
	}
	for k := range h {
		if k == "Ce-Krulesapplied" || k == "Ce-" {
			t.Errorf("internal/empty extension sent: %s", k)
		}
	}
	if reqs[0].body != `{"old_value":1,"property_name":"temp","value":2}` {
		t.Errorf("body = %s", reqs[0].body)
	}
}

// An event received through the Receiver and forwarded by a handler keeps
// the origin id of the incoming event.
func TestEgressKeepsOriginID(t *testing.T) {
	out := newSink(t, http.StatusOK)
	app := krules.New()
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Encoding: cloudevents.Binary})
	app.Use(d.Middleware())
	d.Route(app, "forwarded")
	app.On("incoming").Do(func(ctx context.Context, ev *krules.Event) error {
		return ev.Emit(ctx, "forwarded", krules.Payload{"n": 1}, krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL))
	})
	in := httptest.NewServer(cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}))
	defer in.Close()
	for _, c := range []struct{ originHeader, want string }{{"", "in-1"}, {"root-9", "root-9"}} {
		hs := binaryHeaders("", map[string]string{"ce-id": "in-1", "ce-type": "incoming"})
		if c.originHeader != "" {
			hs["ce-originid"] = c.originHeader
		}
		if code, body := do(t, in.URL, rawReq{headers: hs, body: `{}`}); code != http.StatusAccepted {
			t.Fatalf("status %d %s", code, body)
		}
		reqs := out.all()
		got := reqs[len(reqs)-1].header
		if got.Get("ce-originid") != c.want || got.Get("ce-subject") != "sub" || got.Get("ce-type") != "forwarded" {
			t.Errorf("incoming originid %q: forwarded headers %v, want originid %q", c.originHeader, got, c.want)
		}
	}
}

func TestPolicyDirectVsBoth(t *testing.T) {
	for _, c := range []struct {
		policy  any // nil: the dispatcher default (direct)
		runs    int
		sends   int
		deflt   cloudevents.Policy
		noRoute bool
	}{
		{policy: nil, runs: 0, sends: 1},
		{policy: "direct", runs: 0, sends: 1},
		{policy: cloudevents.PolicyBoth, runs: 3, sends: 1},
		{policy: nil, deflt: cloudevents.PolicyBoth, runs: 3, sends: 1},
		{policy: "always", runs: 3, sends: 1},
		{policy: "default", runs: 0, sends: 1},
		{policy: "never", runs: 3, sends: 0},
		{policy: "bogus", runs: 0, sends: 1},
	} {
		for _, install := range []bool{false, true} {
			out := newSink(t, http.StatusAccepted)
			app := krules.New()
			d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{DefaultPolicy: c.deflt})
			if install {
				d.Install(app)
			} else {
				app.Use(d.Middleware())
			}
			var mu sync.Mutex
			runs := 0
			for range 3 {
				app.On("order.*").Do(func(context.Context, *krules.Event) error {
					mu.Lock()
					runs++
					mu.Unlock()
					return nil
				})
			}
			opts := []krules.EmitOption{krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL)}
			if c.policy != nil {
				opts = append(opts, krules.WithMeta(cloudevents.MetaDispatchPolicy, c.policy))
			}
			if err := app.Emit(context.Background(), "order.created", app.Subject("o-1"), nil, opts...); err != nil {
				t.Fatal(err)
			}
			if runs != c.runs || len(out.all()) != c.sends {
				t.Errorf("install %v, policy %v (default %q): %d handler runs, %d sends; want %d, %d", install, c.policy, c.deflt, runs, len(out.all()), c.runs, c.sends)
			}
		}
	}
}

// TestInstallSendsWithoutLocalHandlers: with Install, an event that no local
// handler takes (none matches, or their filters refuse it) is sent once by
// the outbound hook, by policy; without it (Middleware alone) it is not
// sent at all.
func TestInstallSendsWithoutLocalHandlers(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		setup   func(app *krules.App)
		policy  cloudevents.Policy
		sends   int
		install bool
	}{
		{name: "no handler", setup: func(*krules.App) {}, policy: cloudevents.PolicyDirect, sends: 1, install: true},
		{name: "no handler, both", setup: func(*krules.App) {}, policy: cloudevents.PolicyBoth, sends: 1, install: true},
		{name: "no handler, never", setup: func(*krules.App) {}, policy: cloudevents.PolicyNever, sends: 0, install: true},
		{name: "handlers for other types", setup: func(app *krules.App) {
			app.On("other.*").Do(func(context.Context, *krules.Event) error { return nil })
		}, policy: cloudevents.PolicyDirect, sends: 1, install: true},
		{name: "filtered out", setup: func(app *krules.App) {
			app.On("*").When(func(context.Context, *krules.Event) bool { return false }).Do(func(context.Context, *krules.Event) error { return nil })
		}, policy: cloudevents.PolicyDirect, sends: 1, install: true},
		{name: "middleware only, no handler", setup: func(*krules.App) {}, policy: cloudevents.PolicyDirect, sends: 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := newSink(t, http.StatusAccepted)
			errs := &errSink{}
			app := krules.New(krules.WithErrorHandler(errs.handle))
			d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "svc"})
			if c.install {
				d.Install(app)
			} else {
				app.Use(d.Middleware())
			}
			c.setup(app)
			if _, _, err := app.Subject("o-1").SetExt(ctx, "tenant_id", "acme", krules.NoCache()); err != nil {
				t.Fatal(err)
			}
			err := app.Emit(ctx, "order.created", app.Subject("o-1"), krules.Payload{"a": 1},
				krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL), krules.WithMeta(cloudevents.MetaDispatchPolicy, c.policy))
			if err != nil {
				t.Fatal(err)
			}
			reqs := out.all()
			if len(reqs) != c.sends || len(errs.all()) != 0 {
				t.Fatalf("%d sends, errors %v; want %d, none", len(reqs), errs.all(), c.sends)
			}
			if c.sends == 1 && (!strings.Contains(reqs[0].body, `"tenantid":"acme"`) || !strings.Contains(reqs[0].body, `"data":{"a":1}`)) {
				t.Errorf("body %s", reqs[0].body)
			}
		})
	}
}

// TestInstallSendsOnce: handlers that match and an outbound hook: one send,
// by the middleware; a property event of a Set is sent by the hook.
func TestInstallSendsOnce(t *testing.T) {
	ctx := context.Background()
	out := newSink(t, http.StatusAccepted)
	app := krules.New()
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{})
	d.Install(app)
	var runs atomic.Int32
	for range 2 {
		app.On("order.*").Do(func(context.Context, *krules.Event) error { runs.Add(1); return nil })
	}
	if err := app.Emit(ctx, "order.created", app.Subject("o-1"), nil,
		krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL), krules.WithMeta(cloudevents.MetaDispatchPolicy, "both")); err != nil {
		t.Fatal(err)
	}
	if n := len(out.all()); n != 1 || runs.Load() != 2 {
		t.Fatalf("%d sends, %d runs; want 1, 2", n, runs.Load())
	}
	// Events without a dispatch_url are not sent.
	if _, _, err := app.Subject("o-1").Set(ctx, "status", "new"); err != nil {
		t.Fatal(err)
	}
	if n := len(out.all()); n != 1 {
		t.Fatalf("%d sends after an event without dispatch_url", n)
	}
}

// TestInstallHookFailureReported: a failed send of the hook goes to the
// error handler and MetaDispatchError.
func TestInstallHookFailureReported(t *testing.T) {
	out := newSink(t, http.StatusServiceUnavailable)
	errs := &errSink{}
	app := krules.New(krules.WithErrorHandler(errs.handle))
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{})
	d.Install(app)
	var metaErr any
	app.Outbound("probe", func(_ context.Context, ev *krules.Event) error {
		metaErr, _ = ev.Meta(cloudevents.MetaDispatchError)
		return nil
	})
	if err := app.Emit(context.Background(), "x", app.Subject("s"), nil, krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL)); err != nil {
		t.Fatal(err)
	}
	var se *cloudevents.StatusError
	if all := errs.all(); len(all) != 1 || !errors.As(all[0], &se) || se.Code != http.StatusServiceUnavailable {
		t.Fatalf("errors %v, want one *StatusError 503", errs.all())
	}
	if s, _ := metaErr.(string); !strings.Contains(s, "503") {
		t.Errorf("MetaDispatchError = %v", metaErr)
	}
}

func TestNoDispatchURLPassesThrough(t *testing.T) {
	app := krules.New()
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{})
	app.Use(d.Middleware())
	ran := 0
	app.On("x").Do(func(context.Context, *krules.Event) error { ran++; return nil })
	if err := app.Emit(context.Background(), "x", app.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
	if ran != 1 {
		t.Fatalf("handler ran %d times", ran)
	}
}

func TestURLFunc(t *testing.T) {
	out := newSink(t, http.StatusOK)
	app := krules.New()
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{})
	app.Use(d.Middleware())
	d.Route(app, "*")
	var gotSubject, gotType string
	f := func(subject, eventType string) string {
		gotSubject, gotType = subject, eventType
		return out.srv.URL + "/" + subject
	}
	var okMeta any
	app.On("*").Do(func(_ context.Context, ev *krules.Event) error {
		okMeta, _ = ev.Meta(cloudevents.MetaDispatchedURL)
		return nil
	})
	if err := app.Emit(context.Background(), "a.b", app.Subject("s-1"), nil,
		krules.WithMeta(cloudevents.MetaDispatchURL, f), krules.WithMeta(cloudevents.MetaDispatchPolicy, "both")); err != nil {
		t.Fatal(err)
	}
	if gotSubject != "s-1" || gotType != "a.b" || len(out.all()) != 1 || okMeta != out.srv.URL+"/s-1" {
		t.Fatalf("URLFunc got (%q,%q); %d sends; dispatched url meta %v", gotSubject, gotType, len(out.all()), okMeta)
	}
}

func TestDispatchFailureGoesToErrorHandler(t *testing.T) {
	out := newSink(t, http.StatusInternalServerError)
	es := &errSink{}
	app := krules.New(krules.WithErrorHandler(es.handle))
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{})
	app.Use(d.Middleware())
	var dispErr any
	app.On("x").Do(func(context.Context, *krules.Event) error { return nil })
	app.On("x").Do(func(_ context.Context, ev *krules.Event) error {
		dispErr, _ = ev.Meta(cloudevents.MetaDispatchError)
		return nil
	})
	if err := app.Emit(context.Background(), "x", app.Subject("s"), nil,
		krules.WithMeta(cloudevents.MetaDispatchURL, out.srv.URL), krules.WithMeta(cloudevents.MetaDispatchPolicy, "both")); err != nil {
		t.Fatalf("emitter failed: %v", err)
	}
	errs := es.all()
	if len(errs) != 1 {
		t.Fatalf("error handler got %d errors (%v), want 1", len(errs), errs)
	}
	var se *cloudevents.StatusError
	if !errors.As(errs[0], &se) || se.Code != http.StatusInternalServerError {
		t.Fatalf("error = %v, want *StatusError 500", errs[0])
	}
	if s, _ := dispErr.(string); s == "" {
		t.Errorf("MetaDispatchError not visible to later handlers")
	}

	// Unreachable target, policy direct.
	es2 := &errSink{}
	app2 := krules.New(krules.WithErrorHandler(es2.handle))
	app2.Use(d.Middleware())
	d.Route(app2, "x")
	if err := app2.Emit(context.Background(), "x", app2.Subject("s"), nil, krules.WithMeta(cloudevents.MetaDispatchURL, "http://127.0.0.1:1/")); err != nil {
		t.Fatal(err)
	}
	if len(es2.all()) != 1 {
		t.Fatalf("unreachable target: errors %v", es2.all())
	}
}

func TestNormalizeExtensionName(t *testing.T) {
	for in, want := range map[string]string{"Tenant_ID": "tenantid", "zone-2": "zone2", "abc": "abc", "__": "", "ÄBc9": "bc9"} {
		if got := cloudevents.NormalizeExtensionName(in); got != want {
			t.Errorf("NormalizeExtensionName(%q) = %q, want %q", in, got, want)
		}
	}
}

// A send that fails inside middleware.Retry is really sent again on the
// next attempt, and the last failure reaches the error handler.
func TestDispatchUnderRetrySendsAgain(t *testing.T) {
	var fails atomic.Int64 // answers 503 while > 0
	var posts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		if fails.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Source: "t"})
	run := func(t *testing.T, failing int64) (*errSink, *krules.Event) {
		fails.Store(failing)
		posts.Store(0)
		es := &errSink{}
		app := krules.New(krules.WithErrorHandler(es.handle))
		app.Use(middleware.Retry(middleware.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}), d.Middleware())
		var seen *krules.Event
		app.Use(func(ctx context.Context, ev *krules.Event, next krules.Next) error { seen = ev; return next(ctx) })
		d.Route(app, "order.approved")
		if err := app.Emit(context.Background(), "order.approved", app.Subject("o-1"), nil,
			krules.WithMeta(cloudevents.MetaDispatchURL, srv.URL),
			krules.WithMeta(cloudevents.MetaDispatchPolicy, "both")); err != nil {
			t.Fatal(err)
		}
		return es, seen
	}
	t.Run("always failing", func(t *testing.T) {
		es, _ := run(t, 100)
		if got := posts.Load(); got != 3 {
			t.Errorf("POSTs = %d, want 3 (one per attempt)", got)
		}
		errs := es.all()
		var se *cloudevents.StatusError
		if len(errs) != 1 || !errors.Is(errs[0], middleware.ErrRetriesExhausted) || !errors.As(errs[0], &se) || se.Code != http.StatusServiceUnavailable {
			t.Fatalf("errors = %v, want one ErrRetriesExhausted wrapping *StatusError 503", errs)
		}
	})
	t.Run("recovering", func(t *testing.T) {
		es, ev := run(t, 1)
		if got := posts.Load(); got != 2 {
			t.Errorf("POSTs = %d, want 2", got)
		}
		if errs := es.all(); len(errs) != 0 {
			t.Fatalf("errors = %v after a successful retry", errs)
		}
		if ok, _ := ev.Meta(cloudevents.MetaDispatched); ok != true {
			t.Errorf("MetaDispatched = %v", ok)
		}
		if v, _ := ev.Meta(cloudevents.MetaDispatchError); v != nil {
			t.Errorf("MetaDispatchError = %v after a successful retry", v)
		}
	})
}
