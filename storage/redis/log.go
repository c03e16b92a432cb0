package redis

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// go-redis writes its own diagnostic lines ("connection pool: failed to dial
// after 5 attempts: ...", about one per failed dial during an outage) through
// a process-global logger that prints to stderr, outside any slog logger. The
// failures themselves reach the caller as errors of the Backend's methods, so
// these lines only repeat them.
var (
	loggerSet   atomic.Bool // SetLogger was called
	defaultOnce sync.Once
)

// SetLogger routes the diagnostic lines go-redis writes on its own (dial
// failures, pool and push-notification messages) to l, as Warn records with
// the attribute component=go-redis; nil discards them.
//
// go-redis's logger is process-global: SetLogger affects every go-redis
// client of the process, including those this package did not create, and
// the last call wins. Without a call, [New] and [Open] install a default the
// first time they run: the lines go to slog.Default() at Debug level, so the
// default slog handler drops them and nothing reaches stderr; raise the
// default logger's level to Debug to see them, or call SetLogger with the
// App's logger (for example redis.SetLogger(logger) next to
// krules.WithLogger(logger)). Safe for concurrent use.
func SetLogger(l *slog.Logger) {
	loggerSet.Store(true)
	if l == nil {
		goredis.SetLogger(slogLogger{discard: true})
		return
	}
	goredis.SetLogger(slogLogger{l: l, level: slog.LevelWarn})
}

// installDefaultLogger installs the default of SetLogger once, unless
// SetLogger was called.
func installDefaultLogger() {
	defaultOnce.Do(func() {
		if !loggerSet.Load() {
			goredis.SetLogger(slogLogger{level: slog.LevelDebug})
		}
	})
}

// slogLogger is go-redis's logging interface over slog; a nil l means
// slog.Default() at the time of each line.
type slogLogger struct {
	l       *slog.Logger
	level   slog.Level
	discard bool
}

func (s slogLogger) Printf(ctx context.Context, format string, v ...any) {
	if s.discard {
		return
	}
	l := s.l
	if l == nil {
		l = slog.Default()
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if !l.Enabled(ctx, s.level) {
		return
	}
	msg := strings.TrimSpace(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	l.Log(ctx, s.level, "go-redis: "+msg, "component", "go-redis")
}
