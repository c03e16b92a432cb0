package redis_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
)

const stderrChildEnv = "KRULES_REDIS_TEST_STDERR_CHILD"

// outage runs calls against an address where nothing listens, as during a
// Redis outage: Open, and a Backend made with New on a client of its own.
// No call retries the command (go-redis's default of 3 retries with backoff,
// each with 5 dial attempts 100ms apart, takes about 2s per call), and the
// clients made here dial once per call: go-redis logs a dial failure per
// call either way.
func outage(mode string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if mode == "plain" { // go-redis alone, the control
		c := goredis.NewClient(noRetries(addr))
		defer c.Close()
		if c.Ping(ctx).Err() == nil {
			return errors.New("ping succeeded")
		}
		return nil
	}
	if mode == "routed" {
		redis.SetLogger(slog.New(slog.NewTextHandler(os.Stdout, nil)))
	}
	if _, err := redis.Open(ctx, "redis://"+addr+"/0?max_retries=-1", redis.Config{}); err == nil {
		return errors.New("open succeeded")
	}
	c := goredis.NewClient(noRetries(addr))
	defer c.Close()
	b := redis.New(c, redis.Config{})
	for range 3 {
		if _, err := b.Get(ctx, "s", storage.Key{Kind: storage.Default, Name: "p"}); err == nil {
			return errors.New("get succeeded")
		}
	}
	return nil
}

// noRetries returns client options for addr that dial once per command.
func noRetries(addr string) *goredis.Options {
	return &goredis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1}
}

// runOutage re-executes the test binary for one mode and returns its
// stdout and stderr.
func runOutage(t *testing.T, mode string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestGoRedisLogLines$", "-test.count=1")
	cmd.Env = append(os.Environ(), stderrChildEnv+"="+mode)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("child %s: %v\nstdout:\n%s\nstderr:\n%s", mode, err, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

// TestGoRedisLogLines: during an outage go-redis alone prints "failed to
// dial" lines to stderr; through this package nothing reaches stderr, and
// SetLogger routes the lines to a slog logger. Its child processes mostly
// wait for dial retries, so it runs in parallel with the other tests.
func TestGoRedisLogLines(t *testing.T) {
	t.Parallel()
	if mode := os.Getenv(stderrChildEnv); mode != "" {
		if err := outage(mode); err != nil {
			fmt.Fprintln(os.Stdout, "child error:", err)
			os.Exit(3)
		}
		return
	}
	_, stderr := runOutage(t, "plain")
	if !strings.Contains(stderr, "failed to dial") {
		t.Fatalf("control: go-redis alone printed no dial failure to stderr (the test cannot see the lines it checks for):\n%s", stderr)
	}
	_, stderr = runOutage(t, "default")
	if strings.Contains(stderr, "redis") {
		t.Errorf("with the default logger go-redis printed to stderr:\n%s", stderr)
	}
	stdout, stderr := runOutage(t, "routed")
	if strings.Contains(stderr, "redis") {
		t.Errorf("with SetLogger go-redis printed to stderr:\n%s", stderr)
	}
	if !strings.Contains(stdout, "level=WARN") || !strings.Contains(stdout, "go-redis: connection pool: failed to dial") || !strings.Contains(stdout, "component=go-redis") {
		t.Errorf("SetLogger's logger got no dial failure record:\n%s", stdout)
	}
}
