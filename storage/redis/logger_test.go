package redis_test

import (
	"bytes"
	"context"
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

// outageChild, run as a child process, makes calls on a client pointed at
// a closed port. Mode "raw" uses go-redis alone, "backend" goes through
// redis.New, whose logger routes go-redis's lines to slog.Default (here a
// JSON handler on stdout).
func outageChild(mode, addr string) {
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stdout, nil)))
	client := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	ctx := context.Background()
	if mode == "backend" {
		b := redis.New(client, redis.Config{})
		_, _ = b.Get(ctx, "s", storage.Key{Kind: storage.Default, Name: "p"})
	} else {
		_ = client.Get(ctx, "x").Err()
	}
	os.Exit(0)
}

func TestMain(m *testing.M) {
	if mode := os.Getenv("KRULES_REDIS_OUTAGE_CHILD"); mode != "" {
		outageChild(mode, os.Getenv("KRULES_REDIS_OUTAGE_ADDR"))
	}
	os.Exit(m.Run())
}

// TestOutageLogsThroughSlog: during an outage go-redis writes its "failed
// to dial" lines to stderr by itself; through this package they reach slog
// instead, and stderr stays empty.
func TestOutageLogsThroughSlog(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	run := func(mode string) (stdout, stderr string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "KRULES_REDIS_OUTAGE_CHILD="+mode, "KRULES_REDIS_OUTAGE_ADDR="+addr)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("child %s: %v\n%s", mode, err, errb.String())
		}
		return out.String(), errb.String()
	}
	if _, stderr := run("raw"); !strings.Contains(stderr, "failed to dial") {
		t.Fatalf("go-redis alone wrote no dial failure to stderr (the test would prove nothing): %q", stderr)
	}
	stdout, stderr := run("backend")
	if stderr != "" {
		t.Errorf("stderr during an outage through redis.New: %q, want nothing", stderr)
	}
	if !strings.Contains(stdout, "failed to dial") || !strings.Contains(stdout, `"component":"go-redis"`) || !strings.Contains(stdout, `"level":"WARN"`) {
		t.Errorf("slog got %q, want the dial failures at WARN with component=go-redis", stdout)
	}
}
