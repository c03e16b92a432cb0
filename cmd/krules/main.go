// Command krules inspects and edits the subjects of any krules store from the
// shell.
//
//	krules subject set user-1 name '"John"'        # value is JSON
//	krules subject set --ext user-1 source '"cli"' # extended property
//	krules subject get user-1 name
//	krules subject get --storage redis://127.0.0.1:6379/0?prefix=app: user-1 name
//	krules subject dump -o json user-1
//	krules subject delete user-1 name
//	krules subject flush user-1
//	krules subject list user-
//	krules events tail --nats nats://127.0.0.1:4222 --stream orders 'order.*'
//	krules events dead --stream orders
//	krules events replay --stream orders --seq 3
//
// The store is named by --storage URL (default: $KRULES_STORAGE, or the
// Python-style settings; with none of them set the command fails with exit
// code 2 rather than work on a memory:// store that nothing survives), see
// package storage/storageurl for the schemes: memory://,
// bolt:///path.db, redis://host:port/db?prefix=..., rediss://...,
// postgres://user@host/db?table=... Flags go before the positional
// arguments: everything after the first positional argument is positional, so
// "krules subject set user-1 score -5" sets -5.
//
// A bolt file is locked while the command runs: stop the program that has it
// open first (the command fails with exit code 3 after the lock timeout,
// bolt:///path.db?timeout=5s to wait longer). Opening a bolt URL creates the
// file when it does not exist, even for get and list.
//
// Writes go through the krules App (atomic NoCache calls), so they follow the
// same rules as a program: values are validated and normalised, and a set
// that changes nothing is still a success.
//
// The events commands read a krules NATS JetStream stream (package
// transport/nats): tail prints its events live through an ephemeral ordered
// consumer that acknowledges nothing (worker groups are not disturbed);
// dead lists the dead letters (stream "<stream>_dead") with their reason
// and error; replay publishes dead letters back to their partition and
// deletes them. --nats defaults to $NATS_URL, else nats://127.0.0.1:4222.
//
// Output is a human-readable table by default; -o json prints JSON.
// --timeout (default 30s) bounds the whole command, connecting included; an
// unresponsive server gives exit code 3 when it expires.
//
// Exit codes:
//
//	0  success
//	1  not found (property or subject)
//	2  usage error or bad input (unknown command or flag, malformed storage
//	   URL, unknown scheme, JSON value that does not parse, invalid name);
//	   nothing was written
//	3  any other failure (store unreachable, file locked, I/O error)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes (see the command documentation).
const (
	exitOK       = 0
	exitNotFound = 1
	exitUsage    = 2
	exitFailure  = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries an exit code and a one-line message for stderr.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, args...)}
}

// errHelp reports that help was printed: exit 0.
var errHelp = errors.New("help requested")

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	if err == nil || errors.Is(err, errHelp) {
		return exitOK
	}
	fmt.Fprintln(stderr, "krules:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

const rootUsage = `Usage: krules [--storage URL] [-o table|json] <command> ...

Commands:
  subject    read and write subjects (get, set, delete, dump, flush, list)
  events     watch a NATS event stream (tail), list and replay dead letters

Run "krules subject --help" or "krules events --help" for details. The storage URL defaults to
$KRULES_STORAGE; without it --storage is required.
Exit codes: 0 ok, 1 not found, 2 usage or bad input, 3 other failure.
`

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var g globals
	fs := newFlagSet("krules", rootUsage, stdout)
	g.register(fs, nil)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usageErr("missing command (run krules --help)")
	}
	switch rest[0] {
	case "subject", "subjects":
		return subjectCmd(ctx, &g, rest[1:], stdout, stderr)
	case "events":
		if err := g.check(); err != nil {
			return err
		}
		return eventsCmd(ctx, &g, rest[1:], stdout, stderr)
	case "help":
		fmt.Fprint(stdout, rootUsage)
		return errHelp
	}
	return usageErr("unknown command %q (run krules --help)", rest[0])
}
