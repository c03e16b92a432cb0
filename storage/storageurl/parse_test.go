package storageurl

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/krules-go/krules/storage/bolt"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		url  string
		want spec
	}{
		{"memory://", spec{scheme: "memory"}},
		{"memory:", spec{scheme: "memory"}},
		{"MEMORY://", spec{scheme: "memory"}},
		{"bolt:///var/lib/x.db", spec{scheme: "bolt", path: "/var/lib/x.db"}},
		{"bolt:data/x.db", spec{scheme: "bolt", path: "data/x.db"}},
		{"bolt:///tmp/a%20b.db?timeout=5s&nosync=true", spec{scheme: "bolt", path: "/tmp/a b.db", bolt: bolt.Config{Timeout: 5 * time.Second, NoSync: true}}},
		{"redis://127.0.0.1:6379/0?prefix=app:", spec{scheme: "redis", driverURL: "redis://127.0.0.1:6379/0", prefix: "app:"}},
		{"redis://127.0.0.1:6379/2", spec{scheme: "redis", driverURL: "redis://127.0.0.1:6379/2"}},
		{"rediss://u:secret@cache.example:6380/1?prefix=p%3A&dial_timeout=3s", spec{scheme: "rediss", driverURL: "rediss://u:secret@cache.example:6380/1?dial_timeout=3s", prefix: "p:"}},
		{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable&table=subj", spec{scheme: "postgres", driverURL: "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", table: "subj"}},
		{"postgresql://u@h/db", spec{scheme: "postgresql", driverURL: "postgresql://u@h/db"}},
		{"postgres://u@h/db?schema=app&table=s&pool_max_conns=4", spec{scheme: "postgres", driverURL: "postgres://u@h/db?pool_max_conns=4", table: "s", schema: "app"}},
	} {
		got, err := parse(c.url)
		if err != nil {
			t.Errorf("parse(%q): %v", c.url, err)
			continue
		}
		if got != c.want {
			t.Errorf("parse(%q) = %+v, want %+v", c.url, got, c.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		url, mention string
	}{
		{"", "empty URL"},
		{"   ", "empty URL"},
		{"/tmp/x.db", "no scheme"},
		{"mongodb://h/db", `unknown scheme "mongodb"`},
		{"http://[::1", "does not parse"},
		{"memory://host", "memory takes no"},
		{"memory://?x=1", "memory takes no"},
		{"bolt://tmp/x.db", `host "tmp"`},
		{"bolt://", "missing file path"},
		{"bolt:///", "missing file path"},
		{"bolt:///x.db?timeout=soon", "timeout"},
		{"bolt:///x.db?timeout=-1s", "timeout"},
		{"bolt:///x.db?nosync=maybe", "nosync"},
		{"bolt:///x.db?prefix=a", `unknown parameter "prefix"`},
		{"bolt:///x.db?timeout=1s&timeout=2s", "given 2 times"},
		{"redis:///0", "missing host"},
		{"redis://h:6379/0?prefix=", `"prefix" is empty`},
		{"redis://h:6379/0?prefix=a&prefix=b", "given 2 times"},
		{"postgres://u@h/db?table=", `"table" is empty`},
		{"postgres://u@h/db?schema=", `"schema" is empty`},
		{"redis://h/0?a=%zz", "query"},
	} {
		_, err := parse(c.url)
		if err == nil {
			t.Errorf("parse(%q): no error", c.url)
			continue
		}
		if !errors.Is(err, ErrBadURL) {
			t.Errorf("parse(%q): %v does not wrap ErrBadURL", c.url, err)
		}
		if !strings.Contains(err.Error(), c.mention) {
			t.Errorf("parse(%q): %q does not mention %q", c.url, err, c.mention)
		}
	}
}

func TestErrorsHidePasswords(t *testing.T) {
	for _, u := range []string{
		"redis://user:hunter2@h:6379/0?prefix=",
		"postgres://user:hunter2@h/db?table=",
		"mongodb://user:hunter2@h/db",
		"redis://user:hunter2@h:6379/0?a=%zz",
		"postgres://u@h:1/db?password=hunter2&table=",
		"host=h password=hunter2 dbname=test",
		"redis://user:hun/ter2@h",
		"redis://user:hunter2:x@h:port",
	} {
		_, err := parse(u)
		if err == nil || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "ter2") {
			t.Errorf("parse(%q) error %v leaks the password", u, err)
		}
		if r := Redact(u); strings.Contains(r, "hunter2") || strings.Contains(r, "ter2") {
			t.Errorf("Redact(%q) = %q leaks the password", u, r)
		}
	}
	if r := Redact("postgres://u@h:1/db?sslpassword=hunter2&bogus=1"); strings.Contains(r, "hunter2") {
		t.Errorf("Redact leaks sslpassword: %q", r)
	}
	if got := Redact("postgres://u:pw@h/db?password=pw2&table=t"); strings.Contains(got, "pw2") || strings.Contains(got, ":pw@") || !strings.Contains(got, "table=t") {
		t.Errorf("Redact = %q", got)
	}
}
