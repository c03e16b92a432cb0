// Package storageurl opens any krules storage backend from one URL string, so
// that programs, examples and the krules CLI pick their store from
// configuration (KRULES_STORAGE) instead of code.
//
//	b, err := storageurl.Open(ctx, "bolt:///var/lib/myapp/krules.db")
//	if err != nil {
//		return err
//	}
//	defer b.Close()
//	app := krules.New(krules.WithStorage(b))
//
// # Schemes
//
//	memory://                                   in-process store (storage/memory)
//	bolt:///abs/path/krules.db                  one bbolt file (storage/bolt); also bolt:relative/path.db
//	    ?timeout=5s                             wait for the file lock (default 1s)
//	    ?nosync=true                            skip fsync per commit (default false)
//	redis://[user:pass@]host:port/db?prefix=app:   Redis (storage/redis); rediss:// for TLS
//	    prefix=                                 key prefix: keys are s:{prefix}{subject} (default "")
//	    other query parameters go to go-redis (dial_timeout, pool_size, ...)
//	sqlite:///abs/path/krules.db                one SQLite file (storage/sqlite); also sqlite:relative/path.db
//	    ?table=subjects                         table name (default "subjects")
//	    ?busy_timeout=5s                        wait for another process's write lock (default 5s)
//	    ?synchronous=normal                     normal (default) or full (fsync per commit)
//	postgres://user@host:port/db?table=subjects  PostgreSQL (storage/postgres); also postgresql://
//	    table=                                  table name (default "subjects", the Python KRules table)
//	    schema=                                 schema of the table (default: the search_path)
//	    other query parameters go to pgx (sslmode, pool_max_conns, ...)
//
// sqlite://name.db (two slashes) is refused, as for bolt: the part after the
// two slashes would be a host; write sqlite:name.db for a path relative to the
// working directory.
//
// # Settings from the environment
//
// [FromEnv] and [EnvURL] pick the store the way Python KRules' settings do,
// with KRULES_STORAGE on top. The first rule that applies wins:
//
//  1. KRULES_STORAGE (non-empty): that URL, whatever else is set.
//  2. KRULES_STORAGE_PROVIDER=empty: memory:// (the in-process store; Python's
//     EmptySubjectStorage keeps nothing at all, see below).
//  3. KRULES_STORAGE_PROVIDER=redis, or the provider unset and a Redis URL
//     known from 4 or 5: that Redis URL. KRULES_STORAGE_PROVIDER=redis with no
//     Redis URL, or any other provider value, is an error.
//  4. SUBJECTS_REDIS_URL (legacy, non-empty): that URL, winning over the parts.
//  5. KRULES_STORAGE_REDIS_HOST (non-empty): the URL built from the parts,
//     redis://[:PASSWORD@]HOST:PORT/DB, rediss:// when
//     KRULES_STORAGE_REDIS_USE_TLS is true; PORT defaults to 6379, DB to 0;
//     the password is percent-encoded.
//  6. Otherwise DefaultURL (memory://).
//
// KRULES_STORAGE_REDIS_KEY_PREFIX (default "") becomes the prefix= parameter
// of the Redis URL of 3, unless that URL already has one. USE_TLS takes the
// boolean spellings Python's settings accept (1/0, true/false, yes/no,
// on/off, t/f, y/n, any case); PORT and DB must be integers. A bad value is
// an error naming the variable, never its value when it is the password.
// Python's "empty" provider stores nothing; krules-go has no such store, and
// memory:// is the closest (data lives as long as the process).
//
// The original has no PostgreSQL or SQLite settings: use KRULES_STORAGE for
// them.
//
// An unknown scheme, a parameter this package does not know (for memory and
// bolt), a repeated or empty parameter, or a malformed URL is an error that
// names the problem; nothing is opened then. Passwords never appear in error
// messages.
package storageurl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/storage/sqlite"
)

// EnvVar names the environment variable holding the default storage URL of
// the CLI and the examples.
const EnvVar = "KRULES_STORAGE"

// DefaultURL is used by FromEnv when EnvVar is unset or empty.
const DefaultURL = "memory://"

// ErrBadURL is wrapped by every error about the URL itself (syntax, scheme,
// parameters), as opposed to errors opening a well-formed URL (a server down,
// a locked file). Test it with errors.Is.
var ErrBadURL = errors.New("bad storage URL")

// Backend is an opened store. Close releases it (connections, file lock);
// for memory:// it does nothing. The concrete value is the backend's own type
// (*bolt.Backend, *redis.Backend, ...), so storage.Lister and other optional
// interfaces are available through type assertions.
type Backend interface {
	storage.Backend
	io.Closer
}

// Open opens the backend named by rawURL (see the package documentation for
// the schemes). ctx bounds the connection to a server.
func Open(ctx context.Context, rawURL string) (Backend, error) {
	sp, err := parse(rawURL)
	if err != nil {
		return nil, err
	}
	switch sp.scheme {
	case "memory":
		return memoryBackend{memory.New()}, nil
	case "bolt":
		b, err := bolt.Open(sp.path, sp.bolt)
		if err != nil {
			return nil, fmt.Errorf("storageurl: %w", err)
		}
		return b, nil
	case "sqlite":
		b, err := sqlite.Open(ctx, sp.path, sp.sqlite)
		if err != nil {
			return nil, fmt.Errorf("storageurl: %w", err)
		}
		return b, nil
	case "redis", "rediss":
		return openRedis(ctx, sp)
	case "postgres", "postgresql":
		return openPostgres(ctx, sp)
	}
	return nil, fmt.Errorf("storageurl: %w: unhandled scheme %q", ErrBadURL, sp.scheme)
}

// FromEnv opens the store the environment selects: KRULES_STORAGE, else the
// Python-style settings, else DefaultURL (see "Settings from the
// environment" in the package documentation and [EnvURL]).
func FromEnv(ctx context.Context) (Backend, error) {
	u, err := EnvURL(os.Getenv)
	if err != nil {
		return nil, err
	}
	return Open(ctx, u)
}

// URLFromEnv returns the URL [EnvURL] resolves from the process
// environment, or "" when the settings are invalid (opening "" then fails
// with ErrBadURL; call EnvURL for the reason).
func URLFromEnv() string {
	u, err := EnvURL(os.Getenv)
	if err != nil {
		return ""
	}
	return u
}

// Redact returns rawURL with its secrets replaced by "xxxxx", for logs: the
// password of user:password@ and the query parameters password,
// sslpassword and passfile (which pgx also accepts). A string that does not
// parse as a URL with a scheme is returned as "<unparsable URL>", since any
// part of it could be a secret.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return "<unparsable URL>"
	}
	return redactURL(u)
}

// secretParams are query parameters whose values are never printed.
var secretParams = []string{"password", "sslpassword", "passfile"}

func redactURL(u *url.URL) string {
	c := *u
	if c.RawQuery != "" {
		q, err := url.ParseQuery(c.RawQuery)
		if err != nil {
			c.RawQuery = "<unparsable query>"
		} else {
			for _, k := range secretParams {
				if _, ok := q[k]; ok {
					q.Set(k, "xxxxx")
				}
			}
			c.RawQuery = q.Encode()
		}
	}
	return c.Redacted()
}

// memoryBackend gives the in-memory store a no-op Close; embedding keeps its
// List method.
type memoryBackend struct{ *memory.Backend }

func (memoryBackend) Close() error { return nil }

// spec is a parsed URL.
type spec struct {
	scheme string
	// bolt
	path string
	bolt bolt.Config
	// redis, postgres: the URL handed to the driver, without our parameters
	driverURL string
	prefix    string
	table     string
	schema    string
	// sqlite
	sqlite sqlite.Config
}

func bad(u *url.URL, format string, args ...any) error {
	shown := "<URL without scheme>"
	if u.Scheme != "" {
		shown = redactURL(u)
	}
	return fmt.Errorf("storageurl: %w %s: %s", ErrBadURL, shown, fmt.Sprintf(format, args...))
}

func parse(rawURL string) (spec, error) {
	if strings.TrimSpace(rawURL) == "" {
		return spec{}, fmt.Errorf("storageurl: %w: empty URL", ErrBadURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// Not even the parser's detail is shown: it quotes parts of the
		// input, which may be a password ("invalid port \":pa\"").
		return spec{}, fmt.Errorf("storageurl: %w: the URL does not parse (percent-encode / : @ in a password)", ErrBadURL)
	}
	if u.Scheme == "" {
		return spec{}, bad(u, "no scheme (want memory://, bolt:///path.db, sqlite:///path.db, redis://host:port/db, postgres://user@host/db)")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return spec{}, bad(u, "query: %v", err)
	}
	for k, vs := range q {
		if len(vs) > 1 {
			return spec{}, bad(u, "parameter %q given %d times", k, len(vs))
		}
	}
	sp := spec{scheme: strings.ToLower(u.Scheme)}
	switch sp.scheme {
	case "memory":
		if u.Host != "" || (u.Path != "" && u.Path != "/") || u.Opaque != "" || u.User != nil || len(q) > 0 || u.Fragment != "" {
			return spec{}, bad(u, "memory takes no host, path or parameters (write memory://)")
		}
	case "bolt":
		if err := parseBolt(u, q, &sp); err != nil {
			return spec{}, err
		}
	case "sqlite":
		if err := parseSQLite(u, q, &sp); err != nil {
			return spec{}, err
		}
	case "redis", "rediss":
		if u.Host == "" {
			return spec{}, bad(u, "missing host (write %s://host:port/db)", sp.scheme)
		}
		if err := take(u, q, "prefix", &sp.prefix); err != nil {
			return spec{}, err
		}
		sp.driverURL = withQuery(u, q)
	case "postgres", "postgresql":
		if err := take(u, q, "table", &sp.table); err != nil {
			return spec{}, err
		}
		if err := take(u, q, "schema", &sp.schema); err != nil {
			return spec{}, err
		}
		sp.driverURL = withQuery(u, q)
	default:
		return spec{}, bad(u, "unknown scheme %q (want memory, bolt, sqlite, redis, rediss, postgres or postgresql)", u.Scheme)
	}
	return sp, nil
}

// take moves parameter name out of q into *dst; present but empty is an error.
func take(u *url.URL, q url.Values, name string, dst *string) error {
	vs, ok := q[name]
	if !ok {
		return nil
	}
	if vs[0] == "" {
		return bad(u, "parameter %q is empty", name)
	}
	*dst = vs[0]
	delete(q, name)
	return nil
}

func withQuery(u *url.URL, q url.Values) string {
	c := *u
	c.RawQuery = q.Encode()
	return c.String()
}

// parseFilePath reads the file path of a scheme:///absolute/path.db or
// scheme:relative/path.db URL into sp.path; a host, user or fragment is refused.
func parseFilePath(u *url.URL, scheme string, sp *spec) error {
	switch {
	case u.Opaque != "":
		sp.path = u.Opaque // scheme:relative/path.db
	case u.Host != "":
		return bad(u, "%s URL has host %q: write %s:///absolute/path.db (three slashes) or %s:relative/path.db", scheme, u.Host, scheme, scheme)
	default:
		sp.path = u.Path
	}
	if sp.path == "" || sp.path == "/" {
		return bad(u, "missing file path (write %s:///absolute/path.db)", scheme)
	}
	if u.User != nil || u.Fragment != "" {
		return bad(u, "%s URL takes only a path and parameters", scheme)
	}
	return nil
}

func parseBolt(u *url.URL, q url.Values, sp *spec) error {
	if err := parseFilePath(u, "bolt", sp); err != nil {
		return err
	}
	for k, vs := range q {
		v := vs[0]
		switch k {
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return bad(u, "parameter timeout=%q is not a positive duration (e.g. 5s)", v)
			}
			sp.bolt.Timeout = d
		case "nosync":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return bad(u, "parameter nosync=%q is not a boolean", v)
			}
			sp.bolt.NoSync = b
		default:
			return bad(u, "unknown parameter %q for bolt (want timeout, nosync)", k)
		}
	}
	return nil
}

func parseSQLite(u *url.URL, q url.Values, sp *spec) error {
	if err := parseFilePath(u, "sqlite", sp); err != nil {
		return err
	}
	for k, vs := range q {
		v := vs[0]
		switch k {
		case "table":
			if v == "" {
				return bad(u, "parameter %q is empty", k)
			}
			sp.sqlite.Table = v
		case "busy_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return bad(u, "parameter busy_timeout=%q is not a positive duration (e.g. 5s)", v)
			}
			sp.sqlite.BusyTimeout = d
		case "synchronous":
			switch strings.ToLower(v) {
			case "normal", "full":
				sp.sqlite.Synchronous = strings.ToUpper(v)
			default:
				return bad(u, "parameter synchronous=%q: want normal or full", v)
			}
		default:
			return bad(u, "unknown parameter %q for sqlite (want table, busy_timeout, synchronous)", k)
		}
	}
	return nil
}
