// Package testenv gives integration tests the URLs of the real services they
// run against. A test asks for a URL; when the variable is unset the test is
// skipped with a message, unless KRULES_REQUIRE_SERVICES=1, in which case a
// missing or unreachable service fails the test (CI sets it).
//
// Skip messages name the variable that enables the test. Plain `go test`
// hides them for a passing package; the README's test command pipes
// `go test -json` into internal/cmd/testsummary, which prints them below
// each package.
package testenv

import (
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// Required reports whether KRULES_REQUIRE_SERVICES=1.
func Required() bool { return os.Getenv("KRULES_REQUIRE_SERVICES") == "1" }

// RedisURL returns KRULES_REDIS_URL (e.g. redis://127.0.0.1:6379/0).
func RedisURL(t testing.TB) string { return lookup(t, "KRULES_REDIS_URL") }

// PostgresURL returns KRULES_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test).
func PostgresURL(t testing.TB) string { return lookup(t, "KRULES_POSTGRES_URL") }

// NATSURL returns KRULES_NATS_URL (e.g. nats://127.0.0.1:4222).
func NATSURL(t testing.TB) string { return lookup(t, "KRULES_NATS_URL") }

func lookup(t testing.TB, env string) string {
	t.Helper()
	u := os.Getenv(env)
	if u == "" {
		if Required() {
			t.Fatalf("%s is not set and KRULES_REQUIRE_SERVICES=1", env)
		}
		t.Skipf("%s not set: skipping integration test", env)
	}
	if addr := hostPort(u); addr != "" {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			if Required() {
				t.Fatalf("%s=%s unreachable: %v", env, u, err)
			}
			t.Skipf("%s=%s unreachable: %v", env, u, err)
		}
		c.Close()
	}
	return u
}

func hostPort(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	host := u.Host
	if i := strings.LastIndex(host, "@"); i >= 0 {
		host = host[i+1:]
	}
	if strings.Contains(host, ",") { // multi-host URL: check the first
		host = strings.Split(host, ",")[0]
	}
	if _, _, err := net.SplitHostPort(host); err != nil {
		port := map[string]string{"redis": "6379", "rediss": "6379", "postgres": "5432", "postgresql": "5432", "nats": "4222"}[u.Scheme]
		if port == "" {
			return ""
		}
		host = net.JoinHostPort(host, port)
	}
	return host
}

// Unique returns a name unique to this test run, for key prefixes, table
// names and stream names: base + "_" + a random suffix of [a-z0-9].
func Unique(base string) string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 10)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return base + "_" + string(b)
}

// WithParam returns the service URL raw with the query parameter key set to
// value (e.g. a per-test prefix or table).
func WithParam(t testing.TB, raw, key, value string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}
