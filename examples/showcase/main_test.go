package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
)

// Patterns of the variable parts of the output.
const (
	isoTime = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}`
	isoStr  = `'` + isoTime + `'`
)

// want is one expected output line: literal text, or a regexp (re).
type want struct {
	text string
	re   *regexp.Regexp
}

func lit(s string) want { return want{text: s} }
func re(s string) want  { return want{re: regexp.MustCompile(`^` + s + `$`)} }

func (w want) String() string {
	if w.re != nil {
		return "re:" + w.re.String()
	}
	return w.text
}

func (w want) match(line string) bool {
	if w.re != nil {
		return w.re.MatchString(line)
	}
	return w.text == line
}

// lines turns literal lines into wants.
func lines(ss ...string) []want {
	out := make([]want, len(ss))
	for i, s := range ss {
		out[i] = lit(s)
	}
	return out
}

func header(title string) []want { return lines("", "## "+title, "") }

// expected builds the whole expected output, in order, for the given
// Redis / PostgreSQL sections and the in-memory section's store.
func expected(redisBlock, postgresBlock []want, memoryNote ...string) []want {
	if len(memoryNote) == 0 {
		memoryNote = []string{"⚠️  Data is in-memory only - lost when process ends"}
	}
	var w []want
	add := func(ws ...[]want) {
		for _, x := range ws {
			w = append(w, x...)
		}
	}
	add(header("Setup"), lines("✓ KRules Framework loaded successfully"))
	add(header("Basic concepts"), lines("✓ App created", "✓ Handlers ready: app.On Rule.When app.Use app.Emit"))
	add(header("Subjects & properties"), lines(
		"Created subjects: user-123, device-456, order-789",
		"",
		"✓ Properties set",
		"Name: John Doe",
		"Email: john@example.com",
		"Age: 30",
		"Address: {'street': '123 Main St', 'city': 'Boston', 'zip': '02101'}",
		"Tags: ['premium', 'verified']",
	))
	add(header("Getting properties"), lines(
		"Name: John Doe",
		"Status: inactive",
		"Has email: True, Has phone: False",
		"All properties: ['name', 'email', 'age', 'address', 'tags']",
	))
	add(header("Lambda values (atomic operations)"),
		lines("Initial count: 0", "After 3 increments: 3"),
		[]want{re(`Login history: \[` + isoStr + `, ` + isoStr + `\]`)},
		lines("High score: 150"))
	add(header("Event handlers"), lines(
		"[Handler] User logged in: user-123",
		"[Logger] Event: subject-property-changed on user-123",
		"[Logger] Event: user.login on user-123",
		"[Handler] User changed: user.created",
		"[Logger] Event: user.created on user-123",
		"[Handler] Device event: device.connected",
		"[Logger] Event: device.connected on device-1",
	))
	add(header("Filters"), lines(
		"Small order (no handler triggered):",
		"",
		"Large order (handler triggered):",
		"[Handler] Large order: $1500",
		"",
		"Large purchase (both filters pass):",
		"[Handler] Large purchase: $600",
	))
	add(header("Middleware"),
		lines("[Middleware] Before: test.event", "[Handler] Processing test.event"),
		[]want{re(`\[Timing\] test\.event took \d+\.\d\dms`)},
		lines("[Middleware] After: test.event"))
	add(header("Property change events"), lines(
		"[Handler] Status changed: None → pending",
		"[Audit] user-123.status = pending",
		"[Handler] Status changed: pending → active",
		"[Audit] user-123.status = active",
		"[Audit] user-123.email = john@example.com",
		"",
		"('john@example.com', None)",
	))
	add(header("Extra context"), lines(
		"Without extra context:",
		"[Handler] Status changed to pending (no extra context)",
		"",
		"With extra context:",
		"[Handler] Status changed to suspended",
		"  Reason: policy_violation",
		"  Changed by: admin-456",
		"[Handler] Property temp_data deleted (reason: expired)",
	))
	add(header("Extended properties"), lines(
		"After normal set: 1 event(s)",
		"After extended sets: 1 event(s) (still same)",
		"",
		"Last IP: 192.168.1.1",
		"All extended properties: {'last_ip': '192.168.1.1', 'user_agent': 'Mozilla/5.0'}",
		"",
		"Full export: {'name': 'John', 'ext': {'last_ip': '192.168.1.1', 'user_agent': 'Mozilla/5.0'}}",
	))
	add(header("Storage backends: 1. in-memory"), lines("Name: John", "Email: john@example.com", ""), lines(memoryNote...))
	add(header("Storage backends: 2. Redis"), redisBlock)
	add(header("Storage backends: 3. PostgreSQL"), postgresBlock)
	rule := strings.Repeat("=", 60)
	add(header("Complete example"), lines(
		rule,
		"Processing Order 1 (valid):",
		rule,
		"",
		"[LOG] Event: order.created",
		"",
		"[LOG] Event: subject-property-changed", // pending -> validate_order
		"",
		"[LOG] Event: subject-property-changed", // validated -> process_payment
		"[Handler] Processing payment: $1500",
		"",
		"[LOG] Event: subject-property-changed", // paid -> ship_order
		"[Handler] Order shipped!",
		"[Handler] Order validated",
		"[Handler] Order created: $1500",
		"",
		rule,
		"Processing Order 2 (invalid):",
		rule,
		"",
		"[LOG] Event: order.created",
		"",
		"[LOG] Event: subject-property-changed", // pending -> validate_order
		"",
		"[LOG] Event: subject-property-changed", // rejected -> handle_rejection
		"[Handler] Order rejected: invalid_amount",
		"[Handler] Order created: $-100",
		"",
		rule,
		"Final State:",
		rule,
	), []want{
		re(`Order 1: \{'name': 'order-1', 'amount': 1500, 'created_at': ` + isoStr +
			`, 'status': 'shipped', 'shipped_at': ` + isoStr + `, 'paid_at': ` + isoStr +
			`, 'ext': \{'processed_by': 'system'\}\}`),
		re(`Order 2: \{'name': 'order-2', 'amount': -100, 'created_at': ` + isoStr +
			`, 'status': 'rejected', 'ext': \{'processed_by': 'system'\}\}`),
	})
	return w
}

var (
	redisSkipped    = lines("⚠️  Redis section skipped: set KRULES_REDIS_URL (e.g. KRULES_REDIS_URL=redis://127.0.0.1:6379/0) to run it")
	postgresSkipped = lines("⚠️  PostgreSQL section skipped: set KRULES_POSTGRES_URL (e.g. KRULES_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test?sslmode=disable) to run it")

	redisRan = append(append(lines(
		"=== Redis Storage Demo ===",
		"",
		"1. Creating new user...",
		"   ✓ User created: Alice (admin)",
		"",
		"2. Loading existing user and updating...",
		"   Loaded: Alice",
		"   ✓ Updated role to: superadmin",
		"",
		"3. Atomic increment (simulating multiple logins)...",
		"   ✓ Login count after 5 increments: 5",
		"",
		"4. Full state verification...",
	), re(`   Complete state: \{'name': 'Alice', 'email': 'alice@example\.com', 'last_login': `+isoStr+
		`, 'login_count': 5, 'role': 'superadmin', 'ext': \{\}\}`)), lines(
		"",
		"5. Atomic list append...",
		"   ✓ Login history entries: 3",
		"",
		"✓ Redis storage demo completed successfully!",
	)...)

	postgresRan = lines(
		"=== PostgreSQL Storage Demo ===",
		"",
		"1. Creating new employee...",
		"   ✓ Employee created: Bob Smith",
		"",
		"2. Loading existing employee and updating...",
		"   Current department: Engineering",
		"   ✓ Updated department to: Platform Engineering",
		"",
		"3. Atomic salary increase (5% raise)...",
		"   ✓ Salary: $75,000 → $78,750",
		"",
		"4. Adding projects atomically...",
		"   ✓ Total projects: 4 - ['project-A', 'project-B', 'project-C', 'project-D']",
		"",
		"5. Updating nested metadata...",
		"   ✓ Updated metadata: {'level': 'Staff', 'location': 'Remote', 'certifications': ['GCP', 'GKE']}",
		"",
		"6. Full state verification (new connection)...",
		"   Name: Bob Smith",
		"   Department: Platform Engineering",
		"   Salary: $78,750",
		"   Projects: 4 active",
		"",
		"✓ PostgreSQL storage demo completed successfully!",
	)
)

// checkOutput compares the output with the expected lines, one by one and in
// order, and reports the first difference with some context.
func checkOutput(t *testing.T, got string, want []want) {
	t.Helper()
	gotLines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	for i, w := range want {
		if i >= len(gotLines) {
			t.Fatalf("output ends at line %d; want next %q\nfull output:\n%s", i+1, w, got)
		}
		if !w.match(gotLines[i]) {
			lo := max(0, i-5)
			t.Fatalf("line %d:\n got %q\nwant %q\ncontext:\n%s", i+1, gotLines[i], w, strings.Join(gotLines[lo:i+1], "\n"))
		}
	}
	if len(gotLines) > len(want) {
		t.Fatalf("unexpected output after line %d:\n%s", len(want), strings.Join(gotLines[len(want):], "\n"))
	}
}

func runOutput(t *testing.T, cfg config) string {
	t.Helper()
	var buf bytes.Buffer
	if err := runWith(context.Background(), &buf, cfg); err != nil {
		t.Fatalf("runWith: %v\noutput so far:\n%s", err, buf.String())
	}
	return buf.String()
}

// TestShowcase runs every in-memory section (the storage servers off) and
// checks the whole output, line by line.
func TestShowcase(t *testing.T) {
	out := runOutput(t, config{})
	checkOutput(t, out, expected(redisSkipped, postgresSkipped))
}

// TestRunReadsEnvironment checks that run (what main calls) takes the
// storage sections' configuration from the environment.
func TestRunReadsEnvironment(t *testing.T) {
	t.Setenv("KRULES_STORAGE", "")
	t.Setenv("KRULES_REDIS_URL", "")
	t.Setenv("KRULES_POSTGRES_URL", "")
	var buf bytes.Buffer
	if err := run(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	checkOutput(t, buf.String(), expected(redisSkipped, postgresSkipped))
}

// TestShowcaseStorageURL points the in-memory section at a bolt file
// (KRULES_STORAGE): the data persists, and a second run on the same file
// prints the same facts.
func TestShowcaseStorageURL(t *testing.T) {
	url := "bolt://" + filepath.Join(t.TempDir(), "showcase.db")
	for range 2 {
		out := runOutput(t, config{storageURL: url})
		checkOutput(t, out, expected(redisSkipped, postgresSkipped, "✓ Data persisted in "+url))
	}
}

var errBoom = errors.New("boom")

// TestShowcaseHandlerErrorFails checks that a failing section or handler
// fails the run instead of being lost in a log.
func TestShowcaseHandlerErrorFails(t *testing.T) {
	var buf bytes.Buffer
	// A storage URL that does not open makes the in-memory section fail.
	err := runWith(context.Background(), &buf, config{storageURL: "nosuch://x"})
	if err == nil || !strings.Contains(err.Error(), "Storage backends: 1. in-memory") {
		t.Fatalf("runWith with a bad storage URL: err = %v, want the in-memory section's error", err)
	}
	o := &out{w: &buf}
	app := newApp(o)
	app.On("x").Do(func(context.Context, *krules.Event) error { return errBoom })
	if err := app.Emit(context.Background(), "x", app.Subject("s"), nil); err != nil {
		t.Fatal(err)
	}
	if err := o.takeErr(); err == nil || !strings.Contains(err.Error(), errBoom.Error()) {
		t.Fatalf("handler error not collected: %v", err)
	}
}

// TestShowcaseRedis runs the Redis section against the real server, twice
// with the same prefix: the section starts from an empty subject, so both
// runs print the notebook's facts.
func TestShowcaseRedis(t *testing.T) {
	url := testenv.RedisURL(t)
	prefix := testenv.Unique("krules:showcase-test") + ":"
	t.Cleanup(func() {
		b, err := redis.Open(context.Background(), url, redis.Config{Prefix: prefix})
		if err != nil {
			t.Error(err)
			return
		}
		defer b.Close()
		if err := b.Flush(context.Background(), "user-redis-123"); err != nil {
			t.Error(err)
		}
	})
	for range 2 {
		out := runOutput(t, config{redisURL: url, redisPrefix: prefix})
		checkOutput(t, out, expected(redisRan, postgresSkipped))
	}
}

// TestShowcasePostgres runs the PostgreSQL section against the real server,
// twice on the same table.
func TestShowcasePostgres(t *testing.T) {
	url := testenv.PostgresURL(t)
	table := testenv.Unique("krules_showcase_test")
	t.Cleanup(func() {
		ctx := context.Background()
		b, err := postgres.Open(ctx, url, postgres.Config{Table: table})
		if err != nil {
			t.Error(err)
			return
		}
		defer b.Close()
		if _, err := b.Pool().Exec(ctx, "DROP TABLE IF EXISTS "+b.Table()); err != nil {
			t.Error(err)
		}
	})
	for range 2 {
		out := runOutput(t, config{postgresURL: url, postgresTable: table})
		checkOutput(t, out, expected(redisSkipped, postgresRan))
	}
}
