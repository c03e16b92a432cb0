package middleware_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/krules-go/krules"
)

// failure is one error the App's error handler received.
type failure struct {
	handler string
	err     error
}

// harness is an App whose error handler records what it receives.
type harness struct {
	app  *krules.App
	mu   sync.Mutex
	errs []failure
}

func newHarness(t *testing.T, mws ...krules.Middleware) *harness {
	t.Helper()
	h := &harness{}
	h.app = krules.New(
		krules.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		krules.WithErrorHandler(func(_ context.Context, _ *krules.Event, handler string, err error) {
			h.mu.Lock()
			h.errs = append(h.errs, failure{handler, err})
			h.mu.Unlock()
		}))
	h.app.Use(mws...)
	return h
}

func (h *harness) emit(t *testing.T, ctx context.Context, eventType, subject string, p krules.Payload) {
	t.Helper()
	if err := h.app.Emit(ctx, eventType, h.app.Subject(subject), p); err != nil {
		t.Errorf("emit %s on %s: %v", eventType, subject, err)
	}
}

// failures returns and clears the recorded handler errors.
func (h *harness) failures() []failure {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.errs
	h.errs = nil
	return out
}

// lastErr returns the single recorded error (failing the test when there is
// not exactly one) and clears the record.
func (h *harness) lastErr(t *testing.T) error {
	t.Helper()
	fs := h.failures()
	if len(fs) != 1 {
		t.Fatalf("error handler got %d errors, want 1: %v", len(fs), fs)
	}
	return fs[0].err
}

// counter counts calls, safe for concurrent use.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) inc() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n
}

func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
