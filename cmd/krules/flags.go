package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/krules-go/krules/storage/storageurl"
)

// globals are the flags every command accepts; a command's own flags start
// from the values given before the command name.
type globals struct {
	storage string
	output  string
	timeout time.Duration
}

// defaultTimeout bounds a whole command (connect included), so an
// unresponsive server never hangs the shell.
const defaultTimeout = 30 * time.Second

func (g *globals) register(fs *flag.FlagSet, parent *globals) {
	// The storage default is resolved by storageURL, after parsing, so that
	// the help shows it once (as text) and a missing store is an error.
	defStorage, defOutput, defTimeout := "", "table", defaultTimeout
	if parent != nil {
		defStorage, defOutput, defTimeout = parent.storage, parent.output, parent.timeout
	}
	fs.StringVar(&g.storage, "storage", defStorage, "storage `URL` (default $KRULES_STORAGE; required when that is not set)")
	fs.StringVar(&g.output, "o", defOutput, "output `format`: table or json")
	fs.StringVar(&g.output, "output", defOutput, "output `format`: table or json (same as -o)")
	fs.DurationVar(&g.timeout, "timeout", defTimeout, "give up after this `duration` (connect included)")
}

// errNoStorage: neither --storage nor the environment names a store.
var errNoStorage = errors.New("no store given: pass --storage URL or set KRULES_STORAGE (memory:// keeps nothing after the command; say --storage memory:// to use it anyway)")

// storageURL returns the store to open: --storage, else the one the
// environment selects (KRULES_STORAGE, or the Python-style settings, see
// storage/storageurl.EnvURL). When none of those variables is set it is a
// usage error instead of the in-memory default, where nothing would
// survive the command.
func (g *globals) storageURL(getenv func(string) string) (string, error) {
	if g.storage != "" {
		return g.storage, nil
	}
	// The variables that select a store (the others only tune one).
	set := false
	for _, k := range []string{storageurl.EnvVar, storageurl.EnvProvider, storageurl.EnvRedisHost, storageurl.EnvLegacyRedisURL} {
		if strings.TrimSpace(getenv(k)) != "" {
			set = true
		}
	}
	u, err := storageurl.EnvURL(getenv)
	switch {
	case err != nil:
		return "", &exitError{exitUsage, err}
	case !set:
		return "", &exitError{exitUsage, errNoStorage}
	}
	return u, nil
}

func (g *globals) check() error {
	if g.timeout <= 0 {
		return usageErr("--timeout must be positive, got %v", g.timeout)
	}
	switch g.output {
	case "table", "json":
		return nil
	}
	return usageErr("unknown output format %q (want table or json)", g.output)
}

// newFlagSet returns a flag set that prints usage (text, then the flags) to
// w on --help, and reports errors through parseFlags instead of exiting.
func newFlagSet(name, usage string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprint(w, usage)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(w, "\nFlags:")
			fs.SetOutput(w)
			fs.PrintDefaults()
			fs.SetOutput(io.Discard)
		}
	}
	return fs
}

// parseFlags parses args; --help prints usage to stdout and yields errHelp,
// any other flag error is a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp): // fs.Parse already printed the usage
		return errHelp
	}
	return usageErr("%s: %v (run %s --help)", fs.Name(), err, fs.Name())
}
