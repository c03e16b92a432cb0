package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
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
	defStorage, defOutput, defTimeout := storageurl.URLFromEnv(), "table", defaultTimeout
	if parent != nil {
		defStorage, defOutput, defTimeout = parent.storage, parent.output, parent.timeout
	}
	fs.StringVar(&g.storage, "storage", defStorage, "storage `URL` (default $KRULES_STORAGE, else memory://)")
	fs.StringVar(&g.output, "o", defOutput, "output `format`: table or json")
	fs.StringVar(&g.output, "output", defOutput, "output `format`: table or json (same as -o)")
	fs.DurationVar(&g.timeout, "timeout", defTimeout, "give up after this `duration` (connect included)")
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
