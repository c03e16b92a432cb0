// Command showcase runs the KRules showcase notebook in Go: every section of
// the notebook, in order, printing the same facts.
//
//	go run ./examples/showcase
//
// The in-memory sections always run. The storage sections use real servers
// when their variables are set, and print how to enable them otherwise:
//
//	KRULES_STORAGE        store of the "in-memory" storage section (a storageurl
//	                      URL, default memory://)
//	KRULES_REDIS_URL      e.g. redis://127.0.0.1:6379/0 (keys under "krules:showcase:")
//	KRULES_POSTGRES_URL   e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable
//	                      (table "krules_showcase")
//
// The storage sections start by flushing their subject, so they give the same
// facts on every run.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/storageurl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "showcase:", err)
		os.Exit(1)
	}
}

// config says where the storage sections keep their data.
type config struct {
	// storageURL is the storageurl URL of the in-memory section; "" means a
	// plain in-memory store.
	storageURL string
	// redisURL enables the Redis section; redisPrefix is its key prefix.
	redisURL, redisPrefix string
	// postgresURL enables the PostgreSQL section; postgresTable its table.
	postgresURL, postgresTable string
}

// Defaults of the storage sections (the notebook's prefix for Redis).
const (
	defaultRedisPrefix   = "krules:showcase:"
	defaultPostgresTable = "krules_showcase"
)

func configFromEnv() config {
	return config{
		storageURL:    storageurl.URLFromEnv(),
		redisURL:      os.Getenv("KRULES_REDIS_URL"),
		redisPrefix:   defaultRedisPrefix,
		postgresURL:   os.Getenv("KRULES_POSTGRES_URL"),
		postgresTable: defaultPostgresTable,
	}
}

// run runs the whole notebook with the configuration of the environment.
func run(ctx context.Context, w io.Writer) error {
	return runWith(ctx, w, configFromEnv())
}

// runWith runs every section in the notebook's order and stops at the first
// error: a failed call, a failed write to w, or an error of a handler.
func runWith(ctx context.Context, w io.Writer, cfg config) error {
	nb := &notebook{o: &out{w: w}, cfg: cfg}
	steps := []struct {
		title string
		fn    func(context.Context) error
	}{
		{"Setup", nb.setup},
		{"Basic concepts", nb.basicConcepts},
		{"Subjects & properties", nb.subjectsAndProperties},
		{"Getting properties", nb.gettingProperties},
		{"Lambda values (atomic operations)", nb.lambdaValues},
		{"Event handlers", nb.eventHandlers},
		{"Filters", nb.filters},
		{"Middleware", nb.middleware},
		{"Property change events", nb.propertyChanges},
		{"Extra context", nb.extraContext},
		{"Extended properties", nb.extendedProperties},
		{"Storage backends: 1. in-memory", nb.memoryStorage},
		{"Storage backends: 2. Redis", nb.redisStorage},
		{"Storage backends: 3. PostgreSQL", nb.postgresStorage},
		{"Complete example", nb.completeExample},
	}
	for _, st := range steps {
		nb.o.printf("\n## %s\n\n", st.title)
		err := st.fn(ctx)
		if err == nil {
			err = nb.o.takeErr()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", st.title, err)
		}
	}
	return nil
}

// notebook holds what the notebook's cells share: the output, the
// configuration, and the App and user of the first sections (the notebook
// keeps its first container until "Event handlers" resets it).
type notebook struct {
	o    *out
	cfg  config
	app  *krules.App
	user *krules.Subject
}

// out prints the notebook's output and collects the first error of a write
// or of a handler (reported through the App's error handler).
type out struct {
	w   io.Writer
	mu  sync.Mutex
	err error
}

func (o *out) printf(format string, args ...any) {
	_, err := fmt.Fprintf(o.w, format, args...)
	o.fail(err)
}

func (o *out) println(args ...any) {
	_, err := fmt.Fprintln(o.w, args...)
	o.fail(err)
}

func (o *out) fail(err error) {
	if err == nil {
		return
	}
	o.mu.Lock()
	if o.err == nil {
		o.err = err
	}
	o.mu.Unlock()
}

func (o *out) takeErr() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	err := o.err
	o.err = nil
	return err
}

// newApp is krules.New with an error handler that makes a failing handler
// fail the section (the notebook would show its traceback in the log).
func newApp(o *out, opts ...krules.Option) *krules.App {
	onErr := krules.WithErrorHandler(func(_ context.Context, ev *krules.Event, handler string, err error) {
		o.fail(fmt.Errorf("handler %s on %s: %w", handler, ev, err))
	})
	return krules.New(append([]krules.Option{onErr}, opts...)...)
}

// now is Python's datetime.now().isoformat().
func now() string { return time.Now().Format("2006-01-02T15:04:05.000000") }

// dictOrder is the key order for printing Subject.Dict: "name", then the
// properties in the order Keys gives, then "ext".
func dictOrder(ctx context.Context, s *krules.Subject) ([]string, error) {
	keys, err := s.Keys(ctx)
	if err != nil {
		return nil, err
	}
	return append(append([]string{"name"}, keys...), "ext"), nil
}

// pyDict prints Subject.Dict in the notebook's form.
func pyDict(ctx context.Context, s *krules.Subject) (string, error) {
	d, err := s.Dict(ctx)
	if err != nil {
		return "", err
	}
	order, err := dictOrder(ctx, s)
	if err != nil {
		return "", err
	}
	return py(d, order...), nil
}
