package middleware_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

func decodeRecords(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad record %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestLogging(t *testing.T) {
	cases := []struct {
		name    string
		cfg     func(l *slog.Logger) middleware.LoggingConfig
		minLvl  slog.Level
		handler func() error
		want    map[string]any // attributes of the single record; nil: no record
		absent  []string
	}{
		{name: "success", cfg: func(l *slog.Logger) middleware.LoggingConfig { return middleware.LoggingConfig{Logger: l} },
			handler: func() error { return nil },
			want:    map[string]any{"level": "INFO", "msg": "krules: handler done", "event": "order.created", "subject": "o-1", "handler": "ship"},
			absent:  []string{"error", "payload"}},
		{name: "failure", cfg: func(l *slog.Logger) middleware.LoggingConfig { return middleware.LoggingConfig{Logger: l} },
			handler: func() error { return errTransient },
			want:    map[string]any{"level": "ERROR", "msg": "krules: handler failed", "error": "transient", "handler": "ship"}},
		{name: "payload and levels", cfg: func(l *slog.Logger) middleware.LoggingConfig {
			return middleware.LoggingConfig{Logger: l, Level: slog.LevelDebug, ErrorLevel: slog.LevelWarn, Payload: true}
		}, minLvl: slog.LevelDebug, handler: func() error { return nil },
			want: map[string]any{"level": "DEBUG", "payload": map[string]any{"amount": float64(5)}}},
		{name: "success below min level", cfg: func(l *slog.Logger) middleware.LoggingConfig {
			return middleware.LoggingConfig{Logger: l, Level: slog.LevelDebug}
		}, handler: func() error { return nil }},
		{name: "app logger by default", cfg: func(*slog.Logger) middleware.LoggingConfig { return middleware.LoggingConfig{} },
			handler: func() error { return nil }, want: map[string]any{"msg": "krules: handler done"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: c.minLvl}))
			app := krules.New(krules.WithLogger(l), krules.WithErrorHandler(func(context.Context, *krules.Event, string, error) {}))
			app.Use(middleware.Logging(c.cfg(l)))
			app.On("order.*").Named("ship").Do(func(context.Context, *krules.Event) error { return c.handler() })
			if err := app.Emit(t.Context(), "order.created", app.Subject("o-1"), krules.Payload{"amount": 5}); err != nil {
				t.Fatal(err)
			}
			recs := decodeRecords(t, &buf)
			if c.want == nil {
				if len(recs) != 0 {
					t.Fatalf("records %v, want none", recs)
				}
				return
			}
			if len(recs) != 1 {
				t.Fatalf("records %v, want 1", recs)
			}
			r := recs[0]
			for k, v := range c.want {
				if vb, _ := json.Marshal(v); string(vb) != string(must(json.Marshal(r[k]))) {
					t.Errorf("%s = %v, want %v", k, r[k], v)
				}
			}
			if _, ok := r["duration"]; !ok {
				t.Error("no duration")
			}
			for _, k := range c.absent {
				if _, ok := r[k]; ok {
					t.Errorf("unexpected %s=%v", k, r[k])
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestLoggingPanic(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&buf, nil))
	h := newHarness(t, middleware.Logging(middleware.LoggingConfig{Logger: l}))
	h.app.On("x").Do(func(context.Context, *krules.Event) error { panic("boom") })
	h.emit(t, t.Context(), "x", "s", nil)
	recs := decodeRecords(t, &buf)
	if len(recs) != 1 || recs[0]["msg"] != "krules: handler failed" || recs[0]["error"] != "panic" {
		t.Fatalf("records %v", recs)
	}
	var pe *krules.PanicError
	if !errors.As(h.lastErr(t), &pe) {
		t.Fatal("panic did not keep unwinding to the App")
	}
}

func TestTiming(t *testing.T) {
	type obs struct {
		handler string
		took    time.Duration
		err     error
	}
	var got []obs
	timing := middleware.Timing(func(_ context.Context, _ *krules.Event, handler string, took time.Duration, err error) {
		got = append(got, obs{handler, took, err})
	})
	h := newHarness(t, timing)
	h.app.On("x").Named("ok").Do(func(context.Context, *krules.Event) error { return nil })
	h.app.On("x").Named("bad").Do(func(context.Context, *krules.Event) error { return errTransient })
	h.emit(t, t.Context(), "x", "s", nil)
	if len(got) != 2 || got[0].handler != "ok" || got[0].err != nil || got[1].handler != "bad" || !errors.Is(got[1].err, errTransient) {
		t.Fatalf("observations %+v", got)
	}
	if got[0].took < 0 || got[1].took < 0 {
		t.Fatalf("negative durations %+v", got)
	}
}

func TestDebug(t *testing.T) {
	fixed := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	run := func(t *testing.T, cfg middleware.DebugConfig) string {
		var buf bytes.Buffer
		cfg.Writer = &buf
		cfg.Now = func() time.Time { return fixed }
		h := newHarness(t, middleware.Debug(cfg))
		h.app.On("a").Named("first").Do(func(ctx context.Context, ev *krules.Event) error {
			return ev.Emit(ctx, "b", krules.Payload{"n": 1})
		})
		h.app.On("b").Named("second").Do(func(context.Context, *krules.Event) error { return errTransient })
		h.emit(t, t.Context(), "a", "dev-1", nil)
		return buf.String()
	}
	rule := strings.Repeat("=", 50)
	want := "\n=== Event: a ===\nSubject: dev-1\nHandler: first\nPayload: {}\n" +
		"\n=== Event: b ===\nSubject: dev-1\nHandler: second\nPayload: {\n  \"n\": 1\n}\n" +
		"Duration: 0.000s\nError: transient\n" + rule + "\n" +
		"Duration: 0.000s\n" + rule + "\n"
	t.Run("env on", func(t *testing.T) {
		t.Setenv(middleware.DefaultDebugEnv, "true")
		if got := run(t, middleware.DebugConfig{}); got != want {
			t.Fatalf("dump\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("env off", func(t *testing.T) {
		t.Setenv(middleware.DefaultDebugEnv, "false")
		if got := run(t, middleware.DebugConfig{}); got != "" {
			t.Fatalf("dump %q, want none", got)
		}
	})
	t.Run("custom env", func(t *testing.T) {
		t.Setenv(middleware.DefaultDebugEnv, "")
		t.Setenv("MY_DEBUG", "1")
		if got := run(t, middleware.DebugConfig{EnvVar: "MY_DEBUG"}); got != want {
			t.Fatalf("dump %q", got)
		}
	})
	t.Run("always", func(t *testing.T) {
		t.Setenv(middleware.DefaultDebugEnv, "")
		if got := run(t, middleware.DebugConfig{Always: true}); got != want {
			t.Fatalf("dump %q", got)
		}
	})
}
