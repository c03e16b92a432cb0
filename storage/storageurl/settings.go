package storageurl

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Environment variables of the Python KRules settings (krules_core
// settings.py), read by [EnvURL] below KRULES_STORAGE.
const (
	// EnvProvider selects the store: "empty" or "redis"; inferred when unset.
	EnvProvider = "KRULES_STORAGE_PROVIDER"
	// EnvRedisHost, EnvRedisPort (default 6379), EnvRedisDB (default 0),
	// EnvRedisPassword and EnvRedisUseTLS build the Redis URL.
	EnvRedisHost     = "KRULES_STORAGE_REDIS_HOST"
	EnvRedisPort     = "KRULES_STORAGE_REDIS_PORT"
	EnvRedisDB       = "KRULES_STORAGE_REDIS_DB"
	EnvRedisPassword = "KRULES_STORAGE_REDIS_PASSWORD"
	EnvRedisUseTLS   = "KRULES_STORAGE_REDIS_USE_TLS"
	// EnvRedisKeyPrefix is the key prefix (default "").
	EnvRedisKeyPrefix = "KRULES_STORAGE_REDIS_KEY_PREFIX"
	// EnvLegacyRedisURL is the legacy full Redis URL; it wins over the parts.
	EnvLegacyRedisURL = "SUBJECTS_REDIS_URL"
)

// EnvURL resolves the storage URL from environment variables read through
// getenv (os.Getenv for the process environment; a map lookup in tests),
// with the precedence given in the package documentation: KRULES_STORAGE,
// then KRULES_STORAGE_PROVIDER, SUBJECTS_REDIS_URL, the
// KRULES_STORAGE_REDIS_* parts, then DefaultURL. Errors wrap ErrBadURL and
// name the variable; the password's value is never shown, and the URL is
// not checked further than Open checks it.
func EnvURL(getenv func(string) string) (string, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	if u := get(EnvVar); u != "" {
		return u, nil
	}
	redisURL, err := settingsRedisURL(get, getenv)
	if err != nil {
		return "", err
	}
	switch p := get(EnvProvider); p {
	case "empty":
		return DefaultURL, nil
	case "redis":
		if redisURL == "" {
			return "", fmt.Errorf("storageurl: %w: %s=redis but neither %s nor %s is set", ErrBadURL, EnvProvider, EnvLegacyRedisURL, EnvRedisHost)
		}
		return redisURL, nil
	case "":
		if redisURL != "" {
			return redisURL, nil
		}
		return DefaultURL, nil
	default:
		return "", fmt.Errorf("storageurl: %w: %s=%q: want empty or redis (use %s for other stores)", ErrBadURL, EnvProvider, p, EnvVar)
	}
}

// settingsRedisURL returns the Redis URL of the settings ("" when neither
// the legacy URL nor a host is set), with the key prefix added.
func settingsRedisURL(get, getenv func(string) string) (string, error) {
	raw := get(EnvLegacyRedisURL)
	if raw == "" {
		host := get(EnvRedisHost)
		if host == "" {
			return "", nil
		}
		port, db := 6379, 0
		if v := get(EnvRedisPort); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 65535 {
				return "", fmt.Errorf("storageurl: %w: %s=%q is not a port number", ErrBadURL, EnvRedisPort, v)
			}
			port = n
		}
		if v := get(EnvRedisDB); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return "", fmt.Errorf("storageurl: %w: %s=%q is not a database number", ErrBadURL, EnvRedisDB, v)
			}
			db = n
		}
		tls := false
		if v := get(EnvRedisUseTLS); v != "" {
			b, ok := parsePyBool(v)
			if !ok {
				return "", fmt.Errorf("storageurl: %w: %s=%q is not a boolean", ErrBadURL, EnvRedisUseTLS, v)
			}
			tls = b
		}
		u := &url.URL{Scheme: "redis", Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: "/" + strconv.Itoa(db)}
		if tls {
			u.Scheme = "rediss"
		}
		// The password is not trimmed: spaces may belong to it.
		if pw := getenv(EnvRedisPassword); pw != "" {
			u.User = url.UserPassword("", pw)
		}
		raw = u.String()
	}
	prefix := get(EnvRedisKeyPrefix)
	if prefix == "" {
		return raw, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("storageurl: %w: %s does not parse as a URL", ErrBadURL, EnvLegacyRedisURL)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return "", fmt.Errorf("storageurl: %w: %s: query does not parse", ErrBadURL, EnvLegacyRedisURL)
	}
	if _, ok := q["prefix"]; ok {
		return raw, nil
	}
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// parsePyBool parses the boolean spellings of pydantic settings.
func parsePyBool(s string) (value, ok bool) {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on", "t", "y":
		return true, true
	case "0", "false", "no", "off", "f", "n":
		return false, true
	}
	return false, false
}
