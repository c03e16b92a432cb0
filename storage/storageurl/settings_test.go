package storageurl_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krules-go/krules/storage/sqlite"
	"github.com/krules-go/krules/storage/storageurl"
)

func TestEnvURLPrecedence(t *testing.T) {
	const secret = "s3cr:t/@pw"
	cases := []struct {
		name string
		env  map[string]string
		want string // "" with wantErr
		err  string // substring of the error
	}{
		{"nothing set", nil, "memory://", ""},
		{"KRULES_STORAGE wins over all", map[string]string{
			"KRULES_STORAGE": "bolt:///x.db", "KRULES_STORAGE_PROVIDER": "redis",
			"SUBJECTS_REDIS_URL": "redis://a:1/0", "KRULES_STORAGE_REDIS_HOST": "h"}, "bolt:///x.db", ""},
		{"blank KRULES_STORAGE ignored", map[string]string{"KRULES_STORAGE": "  ", "KRULES_STORAGE_REDIS_HOST": "h"}, "redis://h:6379/0", ""},
		{"provider empty beats a redis host", map[string]string{"KRULES_STORAGE_PROVIDER": "empty", "KRULES_STORAGE_REDIS_HOST": "h"}, "memory://", ""},
		{"host alone infers redis", map[string]string{"KRULES_STORAGE_REDIS_HOST": "cache"}, "redis://cache:6379/0", ""},
		{"all parts", map[string]string{"KRULES_STORAGE_REDIS_HOST": "cache", "KRULES_STORAGE_REDIS_PORT": "6380",
			"KRULES_STORAGE_REDIS_DB": "3", "KRULES_STORAGE_REDIS_USE_TLS": "True"}, "rediss://cache:6380/3", ""},
		{"tls false", map[string]string{"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_USE_TLS": "off"}, "redis://h:6379/0", ""},
		{"password is percent-encoded", map[string]string{"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_PASSWORD": secret},
			"redis://:s3cr%3At%2F%40pw@h:6379/0", ""},
		{"key prefix", map[string]string{"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_KEY_PREFIX": "app:"}, "redis://h:6379/0?prefix=app%3A", ""},
		{"IPv6 host", map[string]string{"KRULES_STORAGE_REDIS_HOST": "::1"}, "redis://[::1]:6379/0", ""},
		{"legacy URL wins over the parts", map[string]string{"SUBJECTS_REDIS_URL": "redis://legacy:1/2",
			"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_PORT": "bad"}, "redis://legacy:1/2", ""},
		{"legacy URL gets the prefix", map[string]string{"SUBJECTS_REDIS_URL": "redis://legacy:1/2", "KRULES_STORAGE_REDIS_KEY_PREFIX": "p"}, "redis://legacy:1/2?prefix=p", ""},
		{"legacy URL's own prefix kept", map[string]string{"SUBJECTS_REDIS_URL": "redis://l:1/2?prefix=a", "KRULES_STORAGE_REDIS_KEY_PREFIX": "p"}, "redis://l:1/2?prefix=a", ""},
		{"provider redis with legacy URL", map[string]string{"KRULES_STORAGE_PROVIDER": "redis", "SUBJECTS_REDIS_URL": "redis://l:1/0"}, "redis://l:1/0", ""},
		{"provider redis without URL", map[string]string{"KRULES_STORAGE_PROVIDER": "redis"}, "", "neither"},
		{"unknown provider", map[string]string{"KRULES_STORAGE_PROVIDER": "postgres"}, "", "want empty or redis"},
		{"bad port", map[string]string{"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_PORT": "x"}, "", "KRULES_STORAGE_REDIS_PORT"},
		{"bad db", map[string]string{"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_DB": "-1"}, "", "KRULES_STORAGE_REDIS_DB"},
		{"bad tls", map[string]string{"KRULES_STORAGE_REDIS_HOST": "h", "KRULES_STORAGE_REDIS_USE_TLS": "maybe"}, "", "KRULES_STORAGE_REDIS_USE_TLS"},
		{"parts ignored without host", map[string]string{"KRULES_STORAGE_REDIS_PORT": "x", "KRULES_STORAGE_REDIS_PASSWORD": secret}, "memory://", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := storageurl.EnvURL(func(k string) string { return c.env[k] })
			if c.err != "" {
				if !errors.Is(err, storageurl.ErrBadURL) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("EnvURL = %q, %v; want an ErrBadURL containing %q", got, err, c.err)
				}
				if strings.Contains(err.Error(), "s3cr") {
					t.Fatalf("error shows the password: %v", err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("EnvURL = %q, %v; want %q", got, err, c.want)
			}
			if strings.Contains(storageurl.Redact(got), "s3cr") {
				t.Fatalf("Redact(%q) shows the password", got)
			}
		})
	}
}

// FromEnv reads the process environment through EnvURL.
func TestFromEnvSettings(t *testing.T) {
	t.Setenv(storageurl.EnvVar, "")
	t.Setenv(storageurl.EnvProvider, "nope")
	if _, err := storageurl.FromEnv(t.Context()); !errors.Is(err, storageurl.ErrBadURL) {
		t.Fatalf("FromEnv with a bad provider: %v", err)
	}
	if got := storageurl.URLFromEnv(); got != "" {
		t.Fatalf("URLFromEnv with a bad provider = %q, want \"\"", got)
	}
	t.Setenv(storageurl.EnvProvider, "empty")
	b, err := storageurl.FromEnv(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Capabilities().Persistent {
		t.Fatal("provider empty opened a persistent store")
	}
}

func TestOpenSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	b, err := storageurl.Open(t.Context(), "sqlite://"+path+"?table=t1&busy_timeout=2s&synchronous=full")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sb, ok := b.(*sqlite.Backend)
	if !ok || sb.Path() != path {
		t.Fatalf("sqlite URL opened %T", b)
	}
	var n int
	if err := sb.DB().QueryRowContext(t.Context(), `SELECT count(*) FROM t1`).Scan(&n); err != nil {
		t.Fatalf("table t1: %v", err)
	}
	for _, bad := range []string{
		"sqlite://rel.db", "sqlite://", "sqlite:///x.db?nope=1", "sqlite:///x.db?busy_timeout=0",
		"sqlite:///x.db?synchronous=off", "sqlite:///x.db?table=", "sqlite://u:p@/x.db",
	} {
		if _, err := storageurl.Open(t.Context(), bad); !errors.Is(err, storageurl.ErrBadURL) {
			t.Errorf("Open(%q) = %v, want ErrBadURL", bad, err)
		}
	}
}

func TestOpenSQLiteRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	b, err := storageurl.Open(t.Context(), "sqlite:rel.db")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.(*sqlite.Backend).Path(); got != "rel.db" {
		t.Fatalf("path %q", got)
	}
}
