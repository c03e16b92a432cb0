package main_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/krules-go/krules/storage/bolt"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binary builds the krules command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "krules-cli-test")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "krules")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binPath
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the binary with KRULES_STORAGE=storageURL (when not empty).
func cli(t *testing.T, storageURL string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	env := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KRULES_STORAGE=") {
			env = append(env, e)
		}
	}
	if storageURL != "" {
		env = append(env, "KRULES_STORAGE="+storageURL)
	}
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return r
}

func (r result) want(t *testing.T, code int, args ...string) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("krules %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	if code != 0 {
		if lines := strings.Count(strings.TrimSpace(r.stderr), "\n"); lines != 0 || r.stderr == "" {
			t.Fatalf("krules %s: stderr should be one line, got %q", strings.Join(args, " "), r.stderr)
		}
	}
	return r
}

func run(t *testing.T, storageURL string, code int, args ...string) result {
	t.Helper()
	return cli(t, storageURL, args...).want(t, code, args...)
}

func decode(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output %q is not JSON: %v", s, err)
	}
	return v
}

// exercise runs the whole command set against one store; subjects are
// prefixed with p so that a shared server stays clean. ordered: the store
// keeps insertion order (memory and bolt do; Redis and PostgreSQL need not).
func exercise(t *testing.T, u, p string, ordered bool) {
	user := p + "user-1"
	run(t, u, 0, "subject", "set", user, "name", `"John"`)
	r := run(t, u, 0, "subject", "set", user, "age", "30")
	if want := user + " age = 30 (was not set)\n"; r.stdout != want {
		t.Fatalf("set output %q, want %q", r.stdout, want)
	}
	r = run(t, u, 0, "subject", "set", "-o", "json", user, "age", "-31.5")
	if got, want := decode(t, r.stdout), map[string]any{"subject": user, "property": "age", "kind": "default", "value": -31.5, "old_value": 30.0, "old_exists": true}; !reflect.DeepEqual(got, want) {
		t.Fatalf("set -o json = %v, want %v", got, want)
	}
	// A stored null is told apart from a missing property.
	run(t, u, 0, "subject", "set", user, "nothing", "null")
	if r := run(t, u, 0, "subject", "set", user, "nothing", "1"); r.stdout != user+" nothing = 1 (was null)\n" {
		t.Fatalf("set over a stored null: %q", r.stdout)
	}
	if r := run(t, u, 0, "subject", "set", "-o", "json", p+"fresh", "n", "1"); !reflect.DeepEqual(decode(t, r.stdout),
		map[string]any{"subject": p + "fresh", "property": "n", "kind": "default", "value": 1.0, "old_value": nil, "old_exists": false}) {
		t.Fatalf("set -o json of a new property = %q", r.stdout)
	}
	run(t, u, 0, "subject", "flush", p+"fresh")
	run(t, u, 0, "subject", "delete", user, "nothing")
	run(t, u, 0, "subject", "set", "--ext", user, "source", `{"via":"cli","n":[1,2]}`)
	run(t, u, 0, "subject", "set", p+"user-2", "tags", `["a","b"]`)
	run(t, u, 0, "subject", "set", p+"device-1", "on", "true")

	if r := run(t, u, 0, "subject", "get", user, "name"); r.stdout != "\"John\"\n" {
		t.Fatalf("get name = %q", r.stdout)
	}
	if r := run(t, u, 0, "subject", "get", "--ext", "-o", "json", user, "source"); !reflect.DeepEqual(decode(t, r.stdout),
		map[string]any{"subject": user, "property": "source", "kind": "extended", "value": map[string]any{"via": "cli", "n": []any{1.0, 2.0}}}) {
		t.Fatalf("get --ext -o json = %q", r.stdout)
	}
	run(t, u, 1, "subject", "get", user, "source") // default kind: not there
	run(t, u, 1, "subject", "get", user, "missing")
	run(t, u, 1, "subject", "get", p+"nobody", "name")

	r = run(t, u, 0, "subject", "dump", user)
	wantTable := "KIND      PROPERTY  VALUE\n" +
		"default   name      \"John\"\n" +
		"default   age       -31.5\n" +
		"extended  source    {\"n\":[1,2],\"via\":\"cli\"}\n"
	if got := r.stdout; got != wantTable && (ordered || !sameLines(got, wantTable)) {
		t.Fatalf("dump:\n%s\nwant:\n%s", r.stdout, wantTable)
	}
	r = run(t, u, 0, "subject", "dump", "-o", "json", user)
	if got, want := decode(t, r.stdout), map[string]any{"name": "John", "age": -31.5, "ext": map[string]any{"source": map[string]any{"via": "cli", "n": []any{1.0, 2.0}}}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("dump -o json = %v, want %v", got, want)
	}
	run(t, u, 1, "subject", "dump", p+"nobody")

	r = run(t, u, 0, "subject", "list", p+"user-")
	if got := strings.Fields(r.stdout); !reflect.DeepEqual(sorted(got), []string{p + "user-1", p + "user-2"}) {
		t.Fatalf("list user- = %q", r.stdout)
	}
	r = run(t, u, 0, "subject", "list", "-o", "json", p)
	if got := decode(t, r.stdout); !reflect.DeepEqual(sortedAny(got), []string{p + "device-1", p + "user-1", p + "user-2"}) {
		t.Fatalf("list -o json = %q", r.stdout)
	}
	if r := run(t, u, 0, "subject", "list", "-o", "json", p+"zzz"); !reflect.DeepEqual(decode(t, r.stdout), []any{}) {
		t.Fatalf("empty list -o json = %q", r.stdout)
	}

	run(t, u, 0, "subject", "delete", user, "age")
	run(t, u, 1, "subject", "delete", user, "age")
	run(t, u, 0, "subject", "delete", "--ext", user, "source")
	run(t, u, 1, "subject", "get", user, "age")

	// Bad input writes nothing.
	run(t, u, 2, "subject", "set", user, "name", "Jane") // not JSON
	run(t, u, 2, "subject", "set", user, "name", `{"a":`)
	run(t, u, 2, "subject", "set", user, "name", `"x" "y"`)
	run(t, u, 2, "subject", "set", user, "", `1`)
	if r := run(t, u, 0, "subject", "get", user, "name"); r.stdout != "\"John\"\n" {
		t.Fatalf("bad set changed name to %q", r.stdout)
	}

	r = run(t, u, 0, "subject", "flush", user)
	if r.stdout != "flushed "+user+" (1 properties, 0 extended)\n" {
		t.Fatalf("flush output %q", r.stdout)
	}
	run(t, u, 1, "subject", "flush", user)
	run(t, u, 1, "subject", "dump", user)
	for _, s := range []string{p + "user-2", p + "device-1"} {
		run(t, u, 0, "subject", "flush", "-o", "json", s)
	}
	if r := run(t, u, 0, "subject", "list", p); r.stdout != "" {
		t.Fatalf("after flush, list = %q", r.stdout)
	}
}

func sameLines(a, b string) bool {
	return reflect.DeepEqual(sorted(strings.Split(a, "\n")), sorted(strings.Split(b, "\n")))
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func sortedAny(v any) []string {
	var s []string
	for _, e := range v.([]any) {
		s = append(s, e.(string))
	}
	return sorted(s)
}

func TestCLIBolt(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "cli.db")
	exercise(t, "bolt://"+path, "", true)
	// --storage overrides KRULES_STORAGE, before or after "subject".
	other := "bolt://" + filepath.Join(t.TempDir(), "other.db")
	run(t, "bolt://"+path, 0, "--storage", other, "subject", "set", "x", "n", "1")
	run(t, "bolt://"+path, 1, "subject", "get", "x", "n")
	run(t, "bolt://"+path, 0, "subject", "get", "--storage", other, "x", "n")
	run(t, "", 0, "subject", "--storage", other, "get", "x", "n")
}

func TestCLIBoltPersistsBetweenRuns(t *testing.T) {
	t.Parallel()
	u := "bolt://" + filepath.Join(t.TempDir(), "p.db")
	run(t, u, 0, "subject", "set", "counter", "n", "41")
	run(t, u, 0, "subject", "set", "counter", "n", "42")
	if r := run(t, u, 0, "subject", "get", "counter", "n"); r.stdout != "42\n" {
		t.Fatalf("get = %q", r.stdout)
	}
}

func TestCLINoStorageIsAUsageError(t *testing.T) {
	t.Parallel()
	// Without --storage and KRULES_STORAGE the command refuses to work on a
	// memory:// store that nothing survives.
	for _, args := range [][]string{{"subject", "set", "a", "n", "1"}, {"subject", "get", "a", "n"}, {"subject", "list"}} {
		r := run(t, "", 2, args...)
		if !strings.Contains(r.stderr, "--storage") || !strings.Contains(r.stderr, "KRULES_STORAGE") {
			t.Errorf("krules %v: stderr %q", args, r.stderr)
		}
	}
	// memory:// when asked for: nothing survives between runs.
	run(t, "memory://", 0, "subject", "set", "a", "n", "1")
	run(t, "memory://", 1, "subject", "get", "a", "n")
	run(t, "", 0, "subject", "list", "--storage", "memory://")
}

func TestCLIHelpShowsEachDefaultOnce(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"subject", "--help"}, {"subject", "get", "--help"}, {"events", "tail", "--help"}, {"events", "dead", "--help"}, {"events", "replay", "--help"}} {
		r := run(t, "", 0, args...)
		for _, line := range strings.Split(r.stdout, "\n") {
			if strings.Count(line, "default") > 1 {
				t.Errorf("krules %v: line %q states its default twice", args, line)
			}
		}
	}
	r := run(t, "", 0, "subject", "dump", "--help")
	if strings.Contains(r.stdout, "in insertion order") || !strings.Contains(r.stdout, "by name on Redis") {
		t.Errorf("dump help: %q", r.stdout)
	}
}

func TestCLIBadStorageURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"mongodb://h/db", "bolt://relative/x.db", "http://[::1", "/tmp/no-scheme.db", "bolt:///x.db?bogus=1"} {
		r := run(t, "", 2, "subject", "--storage", u, "get", "a", "n")
		if !strings.Contains(r.stderr, "storage URL") {
			t.Errorf("%s: stderr %q", u, r.stderr)
		}
		run(t, u, 2, "subject", "list") // from KRULES_STORAGE as well
	}
}

func TestCLIBadInputCreatesNoFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "never.db")
	u := "bolt://" + path
	run(t, u, 2, "subject", "set", "a", "n", "not-json")
	run(t, u, 2, "subject", "set", "a", "n")
	run(t, u, 2, "subject", "get", "-o", "yaml", "a", "n")
	run(t, u, 2, "subject", "get", "--nope", "a", "n")
	run(t, u, 2, "subject", "frobnicate", "a")
	run(t, u, 2, "subject")
	run(t, u, 2, "nothing")
	run(t, u, 2)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("bad input created the store file: %v", err)
	}
}

func TestCLIHelpOnEveryCommand(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"}, {"subject", "--help"},
		{"subject", "get", "--help"}, {"subject", "set", "--help"}, {"subject", "delete", "--help"},
		{"subject", "dump", "--help"}, {"subject", "flush", "--help"}, {"subject", "list", "-h"},
	} {
		r := run(t, "", 0, args...)
		if !strings.HasPrefix(r.stdout, "Usage: krules") || r.stderr != "" {
			t.Errorf("krules %v: stdout %q stderr %q", args, r.stdout, r.stderr)
		}
	}
}

func TestCLILockedFileIsAFailure(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "locked.db")
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := run(t, "bolt://"+path+"?timeout=10ms", 3, "subject", "get", "a", "n")
	if !strings.Contains(r.stderr, "locked") {
		t.Fatalf("stderr %q", r.stderr)
	}
}
