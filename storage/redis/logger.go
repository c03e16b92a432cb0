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

// SetLogger routes the internal log lines of go-redis (such as
// "connection pool: failed to dial after 5 attempts", written during a
// Redis outage) to l, at level Warn with the attribute component=go-redis.
// A nil l discards them. Without a call, the first New or Open routes them
// to slog.Default() (the default logger at the time of each line), so that
// go-redis never writes to stderr behind the program's logger.
//
// The go-redis logger is global to the process: the setting applies to
// every go-redis client, also those not used through this package, and the
// last call of SetLogger (or of goredis.SetLogger) wins. A goredis.SetLogger
// call of the program made before the first New or Open is replaced by it;
// make it after, or call this SetLogger instead. Safe for concurrent use.
func SetLogger(l *slog.Logger) {
	loggerSet.Store(true)
	goredis.SetLogger(slogLogger{l: l, discard: l == nil})
}

var (
	loggerSet  atomic.Bool
	loggerOnce sync.Once
)

// installLogger routes go-redis's lines to slog.Default() once per process,
// unless SetLogger was called.
func installLogger() {
	loggerOnce.Do(func() {
		if !loggerSet.Load() {
			goredis.SetLogger(slogLogger{})
		}
	})
}

// slogLogger implements go-redis's logging interface on slog; without l it
// uses slog.Default() at each line.
type slogLogger struct {
	l       *slog.Logger
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
	msg := strings.TrimPrefix(strings.TrimSpace(fmt.Sprintf(format, v...)), "redis: ")
	l.LogAttrs(ctx, slog.LevelWarn, msg, slog.String("component", "go-redis"))
}
