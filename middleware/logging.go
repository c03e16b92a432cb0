package middleware

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/krules-go/krules"
)

// LoggingConfig configures Logging. The zero value is ready to use.
type LoggingConfig struct {
	// Logger receives the records. Default: the App's logger (App.Logger).
	Logger *slog.Logger
	// Level of the record of a handler that returned nil. Default
	// slog.LevelInfo.
	Level slog.Leveler
	// ErrorLevel of the record of a handler that failed (or panicked).
	// Default slog.LevelError.
	ErrorLevel slog.Leveler
	// Payload adds the event payload as the attribute "payload". Default
	// false: payloads may be large or sensitive.
	Payload bool
}

// Logging logs one record per handler invocation, after it returns:
// message "krules: handler done" (or "krules: handler failed") with the
// attributes event, subject, handler, duration and, on failure, error.
// It returns the handler's error unchanged (the App's error handler still
// sees it). A panic is logged as a failure and keeps unwinding; put Recover
// inside Logging to log it with the stack as an error instead. When neither
// level is enabled the handler runs with no added cost but one check.
func Logging(cfg LoggingConfig) krules.Middleware {
	level := leveler(cfg.Level, slog.LevelInfo)
	errLevel := leveler(cfg.ErrorLevel, slog.LevelError)
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		l := cfg.Logger
		if l == nil {
			l = ev.App().Logger()
		}
		if !l.Enabled(ctx, level.Level()) && !l.Enabled(ctx, errLevel.Level()) {
			return next(ctx)
		}
		start := time.Now()
		done := false
		var err error
		defer func() {
			d := time.Since(start)
			lv, msg := level.Level(), "krules: handler done"
			if err != nil || !done {
				lv, msg = errLevel.Level(), "krules: handler failed"
			}
			if !l.Enabled(ctx, lv) {
				return
			}
			attrs := make([]slog.Attr, 0, 6)
			attrs = append(attrs,
				slog.String("event", ev.Type),
				slog.String("subject", subjectName(ev)),
				slog.String("handler", krules.HandlerName(ctx)),
				slog.Duration("duration", d))
			if cfg.Payload {
				attrs = append(attrs, slog.Any("payload", ev.Payload()))
			}
			switch {
			case !done:
				attrs = append(attrs, slog.String("error", "panic"))
			case err != nil:
				attrs = append(attrs, slog.Any("error", err))
			}
			l.LogAttrs(ctx, lv, msg, attrs...)
		}()
		err = next(ctx)
		done = true
		return err
	}
}

func leveler(l slog.Leveler, def slog.Level) slog.Leveler {
	if l == nil {
		return def
	}
	return l
}

// TimingFunc receives the outcome of one handler invocation: the handler's
// name, how long it (with the inner middleware) took, and its error.
type TimingFunc func(ctx context.Context, ev *krules.Event, handler string, took time.Duration, err error)

// Timing measures every handler invocation and reports it to fn (after the
// handler returns, in the dispatching goroutine; fn must be safe for
// concurrent use when events are emitted concurrently). The handler's error
// is returned unchanged. A nil fn gives a pass-through. A panic is not
// reported (it keeps unwinding); put Recover inside Timing to see it.
func Timing(fn TimingFunc) krules.Middleware {
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		if fn == nil {
			return next(ctx)
		}
		start := time.Now()
		err := next(ctx)
		fn(ctx, ev, krules.HandlerName(ctx), time.Since(start), err)
		return err
	}
}

// DefaultDebugEnv is the environment variable that switches Debug on when
// DebugConfig.EnvVar is empty (as in the KRules advanced guide).
const DefaultDebugEnv = "DEBUG_EVENTS"

// DebugConfig configures Debug.
type DebugConfig struct {
	// Writer receives the dump. Default os.Stderr. Writes are serialised, one
	// Write per block.
	Writer io.Writer
	// EnvVar names the environment variable that switches the dump on when it
	// holds a true value for strconv.ParseBool ("1", "true", "TRUE", ...).
	// It is read once, when Debug is called. Default DefaultDebugEnv.
	EnvVar string
	// Always switches the dump on whatever the environment says.
	Always bool
	// Now is the clock used for the duration line. Default time.Now.
	Now func() time.Time
}

// Debug is the guide's event dump: when switched on (see DebugConfig), it
// writes for every handler invocation a header before the handler runs
//
//	=== Event: order.created ===
//	Subject: order-1
//	Handler: ship
//	Payload: {
//	  "amount": 1500
//	}
//
// and, after it, the duration, the error if any, and a rule of 50 '='.
// Events emitted by the handler are dumped in between. Payloads that do not
// encode as JSON are printed with %v. When switched off, Debug returns a
// pass-through middleware that costs nothing but the call.
func Debug(cfg DebugConfig) krules.Middleware {
	env := cfg.EnvVar
	if env == "" {
		env = DefaultDebugEnv
	}
	on, _ := strconv.ParseBool(strings.TrimSpace(os.Getenv(env)))
	if !on && !cfg.Always {
		return func(ctx context.Context, _ *krules.Event, next krules.Next) error { return next(ctx) }
	}
	w := cfg.Writer
	if w == nil {
		w = os.Stderr
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	var mu sync.Mutex
	write := func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(b)
	}
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		var b bytes.Buffer
		fmt.Fprintf(&b, "\n=== Event: %s ===\nSubject: %s\nHandler: %s\n", ev.Type, subjectName(ev), krules.HandlerName(ctx))
		if js, err := json.MarshalIndent(ev.Payload(), "", "  "); err == nil {
			fmt.Fprintf(&b, "Payload: %s\n", js)
		} else {
			fmt.Fprintf(&b, "Payload: %v\n", ev.Payload())
		}
		write(b.Bytes())
		start := now()
		err := next(ctx)
		b.Reset()
		fmt.Fprintf(&b, "Duration: %.3fs\n", now().Sub(start).Seconds())
		if err != nil {
			fmt.Fprintf(&b, "Error: %v\n", err)
		}
		b.WriteString(strings.Repeat("=", 50) + "\n")
		write(b.Bytes())
		return err
	}
}
