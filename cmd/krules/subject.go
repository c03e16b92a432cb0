package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/storageurl"
)

const subjectUsage = `Usage: krules subject <command> [flags] args...

Commands:
  get     SUBJECT PROPERTY         print a property's value (JSON)
  set     SUBJECT PROPERTY VALUE   set a property to a JSON value
  delete  SUBJECT PROPERTY         delete a property
  dump    SUBJECT                  print every property of a subject (its Dict)
  flush   SUBJECT                  delete a subject with all its properties
  list    [PREFIX]                 list subject names (optionally by prefix)

Every command takes --storage URL and -o table|json; get, set and delete take
--ext for extended properties. Run "krules subject <command> --help".
Exit codes: 0 ok, 1 not found, 2 usage or bad input, 3 other failure.
`

// command is one "krules subject" subcommand.
type command struct {
	args    string // positional arguments, for usage
	summary string
	ext     bool // accepts --ext
	nargs   [2]int
	run     func(c *call) error
}

var commands = map[string]*command{
	"get": {
		args: "SUBJECT PROPERTY", ext: true, nargs: [2]int{2, 2}, run: cmdGet,
		summary: "Print the value of a property as JSON. Exit 1 when it does not exist.",
	},
	"set": {
		args: "SUBJECT PROPERTY VALUE", ext: true, nargs: [2]int{3, 3}, run: cmdSet,
		summary: `Set a property. VALUE is JSON: strings need quotes, e.g.
  krules subject set user-1 name '"John"'
  krules subject set user-1 tags '["a","b"]'
  krules subject set user-1 score -5
Prints the new and the old value: "(was not set)" when the property did not
exist, "(was null)" when it held null; -o json tells them apart with
"old_exists". The write is atomic; a change event is emitted as by any krules
program (no handlers run in the CLI).`,
	},
	"delete": {
		args: "SUBJECT PROPERTY", ext: true, nargs: [2]int{2, 2}, run: cmdDelete,
		summary: "Delete a property. Exit 1 when it does not exist.",
	},
	"dump": {
		args: "SUBJECT", nargs: [2]int{1, 1}, run: cmdDump,
		summary: `Print every property of a subject, default then extended, in the order the
store returns them: insertion order on memory and bolt, by name on Redis,
PostgreSQL and SQLite.
With -o json, print the subject's Dict: {"name": SUBJECT, PROPERTY: VALUE, ..., "ext": {...}}.
Exit 1 when the subject has no properties.`,
	},
	"flush": {
		args: "SUBJECT", nargs: [2]int{1, 1}, run: cmdFlush,
		summary: "Delete a subject with all its properties. Exit 1 when it has none.",
	},
	"list": {
		args: "[PREFIX]", nargs: [2]int{0, 1}, run: cmdList,
		summary: "List the names of the stored subjects that start with PREFIX (all without one),\nstreamed from the store.",
	},
}

// call is one execution of a subcommand.
type call struct {
	ctx    context.Context
	g      globals
	ext    bool
	args   []string
	value  any // set: the parsed JSON value
	stdout io.Writer
	store  storageurl.Backend
	app    *krules.App
}

func subjectCmd(ctx context.Context, parent *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("krules subject", subjectUsage, stdout)
	var g globals
	g.register(fs, parent)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usageErr("missing subject command: get, set, delete, dump, flush or list (run krules subject --help)")
	}
	name := rest[0]
	cmd, ok := commands[name]
	if !ok {
		return usageErr("unknown subject command %q (want get, set, delete, dump, flush or list)", name)
	}
	usage := fmt.Sprintf("Usage: krules subject %s [flags] %s\n\n%s\n", name, cmd.args, cmd.summary)
	cfs := newFlagSet("krules subject "+name, usage, stdout)
	c := &call{ctx: ctx, stdout: stdout}
	c.g.register(cfs, &g)
	if cmd.ext {
		cfs.BoolVar(&c.ext, "ext", false, "use the extended property (metadata, never emits events)")
	}
	if err := parseFlags(cfs, rest[1:]); err != nil {
		return err
	}
	c.args = cfs.Args()
	if n := len(c.args); n < cmd.nargs[0] || n > cmd.nargs[1] {
		return usageErr("%s needs %s, got %d argument(s) (run krules subject %s --help)", name, cmd.args, n, name)
	}
	if err := c.g.check(); err != nil {
		return err
	}
	// Validate every input before opening (and possibly creating) the store.
	if len(c.args) > 0 && name != "list" {
		if err := storage.ValidateName("subject", c.args[0]); err != nil {
			return &exitError{exitUsage, err}
		}
	}
	if len(c.args) > 1 && name != "list" {
		if err := storage.ValidateName("property", c.args[1]); err != nil {
			return &exitError{exitUsage, err}
		}
	}
	if name == "set" {
		v, err := storage.Unmarshal([]byte(c.args[2]))
		if err != nil {
			hint := ""
			if !strings.ContainsAny(c.args[2], `"[{`) {
				hint = fmt.Sprintf(` (a string needs JSON quotes: '"%s"')`, c.args[2])
			}
			return usageErr("value for property %q of subject %q is not JSON: %v%s", c.args[1], c.args[0], err, hint)
		}
		c.value = v
	}

	u, err := c.g.storageURL(os.Getenv)
	if err != nil {
		return err
	}
	c.g.storage = u
	ctx, cancel := context.WithTimeout(ctx, c.g.timeout)
	defer cancel()
	c.ctx = ctx
	store, err := storageurl.Open(ctx, u)
	if err != nil {
		if errors.Is(err, storageurl.ErrBadURL) {
			return &exitError{exitUsage, err}
		}
		return err
	}
	defer store.Close()
	c.store = store
	c.app = krules.New(krules.WithStorage(store),
		krules.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	return classify(cmd.run(c))
}

// classify maps store errors to exit codes.
func classify(err error) error {
	var ee *exitError
	switch {
	case err == nil, errors.As(err, &ee):
		return err
	case errors.Is(err, storage.ErrNotFound):
		return &exitError{exitNotFound, err}
	case errors.Is(err, storage.ErrInvalidName), errors.Is(err, storage.ErrInvalidValue):
		return &exitError{exitUsage, err}
	}
	return err
}

func (c *call) subject() *krules.Subject { return c.app.Subject(c.args[0], krules.NoCache()) }

func (c *call) kind() string {
	if c.ext {
		return "extended"
	}
	return "default"
}

func (c *call) json(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// text renders a value as compact JSON for tables.
func text(v any) string {
	b, err := storage.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}

func cmdGet(c *call) error {
	s, prop := c.subject(), c.args[1]
	var v any
	var err error
	if c.ext {
		v, err = s.GetExt(c.ctx, prop, krules.NoCache())
	} else {
		v, err = s.Get(c.ctx, prop, krules.NoCache())
	}
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return &exitError{exitNotFound, fmt.Errorf("subject %q has no %s property %q", c.args[0], c.kind(), prop)}
		}
		return err
	}
	if c.g.output == "json" {
		return c.json(map[string]any{"subject": c.args[0], "property": prop, "kind": c.kind(), "value": v})
	}
	_, err = fmt.Fprintln(c.stdout, text(v))
	return err
}

func cmdSet(c *call) error {
	s, prop, value := c.subject(), c.args[1], c.value
	// An update function sees whether the property existed, in the same
	// atomic write (the last call is the one applied).
	var existed bool
	op := krules.UpdateAny(func(_ any, exists bool) (any, error) {
		existed = exists
		return value, nil
	})
	var nv, ov any
	var err error
	if c.ext {
		nv, ov, err = s.SetExt(c.ctx, prop, op, krules.NoCache())
	} else {
		nv, ov, err = s.Set(c.ctx, prop, op, krules.NoCache())
	}
	if err != nil {
		return err
	}
	if c.g.output == "json" {
		return c.json(map[string]any{"subject": c.args[0], "property": prop, "kind": c.kind(), "value": nv, "old_value": ov, "old_exists": existed})
	}
	was := "not set"
	if existed {
		was = text(ov)
	}
	_, err = fmt.Fprintf(c.stdout, "%s %s = %s (was %s)\n", c.args[0], prop, text(nv), was)
	return err
}

func cmdDelete(c *call) error {
	s, prop := c.subject(), c.args[1]
	var err error
	if c.ext {
		err = s.DeleteExt(c.ctx, prop, krules.NoCache())
	} else {
		err = s.Delete(c.ctx, prop, krules.NoCache())
	}
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return &exitError{exitNotFound, fmt.Errorf("subject %q has no %s property %q", c.args[0], c.kind(), prop)}
		}
		return err
	}
	if c.g.output == "json" {
		return c.json(map[string]any{"subject": c.args[0], "property": prop, "kind": c.kind(), "deleted": true})
	}
	_, err = fmt.Fprintf(c.stdout, "deleted %s property %q of %s\n", c.kind(), prop, c.args[0])
	return err
}

// load reads the subject's snapshot; an empty subject is not found.
func (c *call) load() (storage.Snapshot, error) {
	snap, err := c.store.Load(c.ctx, c.args[0])
	if err != nil {
		return snap, err
	}
	if len(snap.Props)+len(snap.Ext) == 0 {
		return snap, &exitError{exitNotFound, fmt.Errorf("subject %q not found (no properties)", c.args[0])}
	}
	return snap, nil
}

func cmdDump(c *call) error {
	snap, err := c.load()
	if err != nil {
		return err
	}
	if c.g.output == "json" {
		d, err := c.subject().Dict(c.ctx)
		if err != nil {
			return err
		}
		return c.json(d)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "KIND\tPROPERTY\tVALUE\n")
	for _, p := range snap.Props {
		fmt.Fprintf(tw, "default\t%s\t%s\n", p.Name, text(p.Value))
	}
	for _, p := range snap.Ext {
		fmt.Fprintf(tw, "extended\t%s\t%s\n", p.Name, text(p.Value))
	}
	return tw.Flush()
}

func cmdFlush(c *call) error {
	snap, err := c.load()
	if err != nil {
		return err
	}
	if err := c.subject().Flush(c.ctx); err != nil {
		return err
	}
	if c.g.output == "json" {
		return c.json(map[string]any{"subject": c.args[0], "flushed": true, "properties": len(snap.Props), "ext_properties": len(snap.Ext)})
	}
	_, err = fmt.Fprintf(c.stdout, "flushed %s (%d properties, %d extended)\n", c.args[0], len(snap.Props), len(snap.Ext))
	return err
}

func cmdList(c *call) error {
	l, ok := c.store.(storage.Lister)
	if !ok {
		return fmt.Errorf("storage %s cannot list subjects", storageurl.Redact(c.g.storage))
	}
	prefix := ""
	if len(c.args) > 0 {
		prefix = c.args[0]
	}
	asJSON := c.g.output == "json"
	if asJSON {
		fmt.Fprint(c.stdout, "[")
	}
	n := 0
	for name, err := range l.List(c.ctx, prefix) {
		if err != nil {
			if asJSON {
				fmt.Fprintln(c.stdout, "]")
			}
			return err
		}
		if asJSON {
			b, _ := json.Marshal(name)
			sep := ","
			if n == 0 {
				sep = ""
			}
			fmt.Fprintf(c.stdout, "%s\n  %s", sep, b)
		} else {
			fmt.Fprintln(c.stdout, name)
		}
		n++
	}
	if asJSON {
		if n > 0 {
			fmt.Fprint(c.stdout, "\n")
		}
		fmt.Fprintln(c.stdout, "]")
	}
	return nil
}
