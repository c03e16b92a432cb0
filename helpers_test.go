package krules_test

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/krules-go/krules"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recorder collects what handlers saw, in order.
type recorder struct {
	mu     sync.Mutex
	events []*krules.Event
	lines  []string
}

func (r *recorder) handler(_ context.Context, ev *krules.Event) error {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	return nil
}

func (r *recorder) line(s string) {
	r.mu.Lock()
	r.lines = append(r.lines, s)
	r.mu.Unlock()
}

func (r *recorder) snapshot() []*krules.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*krules.Event(nil), r.events...)
}

func newApp(t *testing.T, opts ...krules.Option) (*krules.App, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	l := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return krules.New(append([]krules.Option{krules.WithLogger(l)}, opts...)...), buf
}
