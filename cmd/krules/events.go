package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
	knats "github.com/krules-go/krules/transport/nats"
)

const eventsUsage = `Usage: krules events <command> [flags] args...

Commands:
  tail    [PATTERN...]   print the events of a stream live, one line each
  dead                   list the dead letters of a stream with reason and error
  replay  --seq N|--all  send dead letters back to their stream

Every command takes --nats URL (default $NATS_URL, else nats://127.0.0.1:4222),
--stream NAME (required) and -o table|json. Run "krules events <command> --help".
Exit codes: 0 ok, 1 not found, 2 usage or bad input, 3 other failure.
`

// defaultNATSURL is the NATS server when neither --nats nor $NATS_URL says.
const defaultNATSURL = "nats://127.0.0.1:4222"

// eventsFlags are the flags of every events command.
type eventsFlags struct {
	nats    string
	stream  string
	output  string
	timeout time.Duration
}

func (f *eventsFlags) register(fs *flag.FlagSet, parent *globals, withTimeout bool) {
	fs.StringVar(&f.nats, "nats", "", "NATS server `URL` (default $NATS_URL, else "+defaultNATSURL+")")
	fs.StringVar(&f.stream, "stream", "", "krules event stream `NAME` (required)")
	fs.StringVar(&f.output, "o", parent.output, "output `format`: table or json")
	fs.StringVar(&f.output, "output", parent.output, "output `format`: table or json (same as -o)")
	if withTimeout {
		fs.DurationVar(&f.timeout, "timeout", parent.timeout, "give up after this `duration` (connect included)")
	}
}

func (f *eventsFlags) check(withTimeout bool) error {
	if f.stream == "" {
		return usageErr("--stream is required")
	}
	if f.output != "table" && f.output != "json" {
		return usageErr("unknown output format %q (want table or json)", f.output)
	}
	if withTimeout && f.timeout <= 0 {
		return usageErr("--timeout must be positive, got %v", f.timeout)
	}
	if f.nats == "" {
		f.nats = os.Getenv("NATS_URL")
	}
	if f.nats == "" {
		f.nats = defaultNATSURL
	}
	return nil
}

// connect opens the connection (one try: a CLI should fail fast) and the
// JetStream context, and checks that the stream exists.
func (f *eventsFlags) connect(ctx context.Context) (*natsgo.Conn, jetstream.JetStream, error) {
	opts := []natsgo.Option{natsgo.Name("krules-cli"), natsgo.Timeout(5 * time.Second)}
	if d, ok := ctx.Deadline(); ok {
		opts = append(opts, natsgo.Timeout(max(time.Until(d), time.Millisecond)))
	}
	nc, err := natsgo.Connect(f.nats, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", f.nats, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	if _, err := js.Stream(ctx, f.stream); err != nil {
		nc.Close()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, nil, &exitError{exitNotFound, fmt.Errorf("stream %q not found on %s", f.stream, f.nats)}
		}
		if errors.Is(err, jetstream.ErrInvalidStreamName) {
			return nil, nil, usageErr("invalid stream name %q", f.stream)
		}
		return nil, nil, fmt.Errorf("stream %q: %w", f.stream, err)
	}
	return nc, js, nil
}

func eventsCmd(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("missing events command: tail, dead or replay (run krules events --help)")
	}
	switch args[0] {
	case "tail":
		return tailCmd(ctx, g, args[1:], stdout)
	case "dead":
		return deadCmd(ctx, g, args[1:], stdout)
	case "replay":
		return replayCmd(ctx, g, args[1:], stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, eventsUsage)
		return errHelp
	}
	return usageErr("unknown events command %q (want tail, dead or replay)", args[0])
}

const tailUsage = `Usage: krules events tail --stream NAME [flags] [PATTERN...]

Print the events of a stream as they arrive, one line each: time, type,
subject, and for property events "property old → new" (else the payload).
PATTERNs are krules event-type patterns (globs: * ? [abc]); default all.
-o json prints one JSON object per line.

Tail reads with an ephemeral ordered consumer that acknowledges nothing: the
worker groups of the stream are not disturbed. It starts with the next event
published (--all: with the oldest one the stream still holds; on a stream
with interest retention that is the events not yet handled by every group).
It runs until interrupted, or until -n events were printed.
`

// tailRecord is the -o json line of tail.
type tailRecord struct {
	Time      string         `json:"time"`
	StreamSeq uint64         `json:"stream_seq"`
	ID        string         `json:"id"`
	Type      string         `json:"type"`
	Subject   string         `json:"subject"`
	Source    string         `json:"source"`
	Property  string         `json:"property,omitempty"`
	OldValue  any            `json:"old_value,omitempty"`
	Value     any            `json:"value,omitempty"`
	Data      krules.Payload `json:"data"`
}

func tailCmd(ctx context.Context, g *globals, args []string, stdout io.Writer) error {
	fs := newFlagSet("krules events tail", tailUsage, stdout)
	var f eventsFlags
	f.register(fs, g, false)
	all := fs.Bool("all", false, "start with the oldest event the stream holds instead of the next one")
	count := fs.Int("n", 0, "stop after this many events (0: run until interrupted)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := f.check(false); err != nil {
		return err
	}
	if *count < 0 {
		return usageErr("-n must not be negative, got %d", *count)
	}
	patterns := fs.Args()
	if len(patterns) == 0 {
		patterns = []string{"*"}
	}
	cctx, cancel := context.WithTimeout(ctx, defaultTimeout)
	nc, js, err := f.connect(cctx)
	cancel()
	if err != nil {
		return err
	}
	defer nc.Close()

	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.stream + ".p.*"},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	}
	if *all {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := js.OrderedConsumer(ctx, f.stream, cfg)
	if err != nil {
		return fmt.Errorf("stream %q: ordered consumer: %w", f.stream, err)
	}

	// A private App matches the patterns with krules' own semantics; its
	// handler prints. Nothing is stored (memory) or sent anywhere.
	app := krules.New(krules.WithLogger(slog.New(slog.DiscardHandler)))
	printed := 0
	var printErr error
	var cur struct {
		e   *event.Event
		seq uint64
		ts  time.Time
	}
	app.On(patterns...).Do(func(ctx context.Context, ev *krules.Event) error {
		if printed > 0 && *count > 0 && printed >= *count {
			return nil
		}
		printed++
		printErr = printTail(stdout, f.output, cur.e, cur.seq, cur.ts, ev)
		return nil
	})

	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("stream %q: %w", f.stream, err)
	}
	defer it.Stop()
	go func() { <-ctx.Done(); it.Stop() }()
	for *count == 0 || printed < *count {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil // interrupted
			}
			return fmt.Errorf("stream %q: %w", f.stream, err)
		}
		md, _ := m.Metadata()
		e := new(event.Event)
		if err := json.Unmarshal(m.Data(), e); err != nil || cloudevents.Check(e) != nil {
			fmt.Fprintf(stdout, "# stream seq %d: not a krules CloudEvent (%d bytes)\n", seqOf(md), len(m.Data()))
			continue
		}
		payload, err := cloudevents.Payload(e)
		if err != nil {
			fmt.Fprintf(stdout, "# stream seq %d: %v\n", seqOf(md), err)
			continue
		}
		cur.e, cur.seq = e, seqOf(md)
		cur.ts = e.Time()
		if cur.ts.IsZero() && md != nil {
			cur.ts = md.Timestamp
		}
		if err := app.Emit(ctx, e.Type(), app.Subject(e.Subject()), payload); err != nil {
			fmt.Fprintf(stdout, "# stream seq %d: %v\n", cur.seq, err)
		}
		if printErr != nil {
			return printErr
		}
	}
	return nil
}

func seqOf(md *jetstream.MsgMetadata) uint64 {
	if md == nil {
		return 0
	}
	return md.Sequence.Stream
}

func printTail(w io.Writer, output string, e *event.Event, seq uint64, ts time.Time, ev *krules.Event) error {
	if output == "json" {
		rec := tailRecord{
			Time: ts.UTC().Format(time.RFC3339Nano), StreamSeq: seq, ID: e.ID(), Type: e.Type(),
			Subject: e.Subject(), Source: e.Source(), Data: ev.Payload(),
		}
		if ev.PropertyName != "" {
			rec.Property, rec.OldValue, rec.Value = ev.PropertyName, ev.OldValue, ev.NewValue
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	detail := text(map[string]any(ev.Payload()))
	if ev.PropertyName != "" {
		switch ev.Type {
		case krules.PropertyDeleted:
			detail = fmt.Sprintf("%s %s → (deleted)", ev.PropertyName, text(ev.OldValue))
		default:
			detail = fmt.Sprintf("%s %s → %s", ev.PropertyName, text(ev.OldValue), text(ev.NewValue))
		}
	}
	_, err := fmt.Fprintf(w, "%s  %s  %s  %s\n", ts.UTC().Format("2006-01-02T15:04:05.000Z"), e.Type(), e.Subject(), detail)
	return err
}

const deadUsage = `Usage: krules events dead --stream NAME [flags]

List the dead letters of a stream (kept in the stream NAME_dead): the
dead-letter sequence (what replay --seq takes), when, the reason
(handler-error, max-deliveries, malformed), the event's type and subject,
how many deliveries it had, and the error. -o json prints a JSON array with
every header. Reading changes nothing.
`

// deadLetter is one message of the dead-letter stream.
type deadLetter struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Reason     string    `json:"reason"`
	Error      string    `json:"error"`
	ID         string    `json:"id,omitempty"`
	Type       string    `json:"type,omitempty"`
	Subject    string    `json:"subject,omitempty"`
	NATSSubj   string    `json:"nats_subject"`
	StreamSeq  uint64    `json:"stream_seq"`
	Deliveries uint64    `json:"deliveries"`

	header natsgo.Header
	data   []byte
}

func newDeadLetter(seq uint64, ts time.Time, h natsgo.Header, data []byte) deadLetter {
	d := deadLetter{
		Seq: seq, Time: ts.UTC(), header: h, data: data,
		Reason: h.Get(knats.HeaderDeadReason), Error: h.Get(knats.HeaderDeadError), NATSSubj: h.Get(knats.HeaderDeadSubject),
	}
	d.StreamSeq, _ = strconv.ParseUint(h.Get(knats.HeaderDeadSequence), 10, 64)
	d.Deliveries, _ = strconv.ParseUint(h.Get(knats.HeaderDeadDeliveries), 10, 64)
	var head struct{ ID, Type, Subject string }
	if json.Unmarshal(data, &head) == nil {
		d.ID, d.Type, d.Subject = head.ID, head.Type, head.Subject
	}
	return d
}

// readDead returns every dead letter of the stream, oldest first.
func readDead(ctx context.Context, js jetstream.JetStream, stream string) ([]deadLetter, error) {
	name := knats.DeadLetterStream(stream)
	s, err := js.Stream(ctx, name)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, &exitError{exitNotFound, fmt.Errorf("dead-letter stream %q not found (is %q a krules stream?)", name, stream)}
		}
		return nil, fmt.Errorf("dead-letter stream %q: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %q: %w", name, err)
	}
	var out []deadLetter
	if info.State.Msgs == 0 {
		return out, nil
	}
	last := info.State.LastSeq
	cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %q: %w", name, err)
	}
	for {
		b, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("dead-letter stream %q: %w", name, err)
		}
		got := 0
		for m := range b.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			out = append(out, newDeadLetter(md.Sequence.Stream, md.Timestamp, m.Headers(), m.Data()))
			if md.Sequence.Stream >= last || md.NumPending == 0 {
				return out, nil
			}
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("dead-letter stream %q: %w", name, err)
		}
		if got == 0 {
			return out, nil // deleted meanwhile
		}
	}
}

func deadCmd(ctx context.Context, g *globals, args []string, stdout io.Writer) error {
	fs := newFlagSet("krules events dead", deadUsage, stdout)
	var f eventsFlags
	f.register(fs, g, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("dead takes no arguments, got %q", fs.Args())
	}
	if err := f.check(true); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	nc, js, err := f.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	dls, err := readDead(ctx, js, f.stream)
	if err != nil {
		return err
	}
	if f.output == "json" {
		if dls == nil {
			dls = []deadLetter{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(dls)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SEQ\tTIME\tREASON\tTYPE\tSUBJECT\tDELIVERIES\tERROR\n")
	for _, d := range dls {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", d.Seq, d.Time.Format(time.RFC3339), d.Reason, d.Type, d.Subject, d.Deliveries, d.Error)
	}
	return tw.Flush()
}

const replayUsage = `Usage: krules events replay --stream NAME (--seq N | --all) [flags]

Send dead letters back to the stream, each to the partition it came from,
with the dead-letter headers removed, then delete them from the dead-letter
stream (--keep: leave them there). --seq takes the sequence "krules events
dead" shows. A replayed event is published under a new message id
("replay:<stream>:<seq>"), so the stream's de-duplication does not drop it,
while replaying the same dead letter twice within the window publishes it
once. Malformed dead letters (reason malformed) are not replayed: they would
only come back.
`

func replayCmd(ctx context.Context, g *globals, args []string, stdout io.Writer) error {
	fs := newFlagSet("krules events replay", replayUsage, stdout)
	var f eventsFlags
	f.register(fs, g, true)
	seq := fs.Uint64("seq", 0, "replay the dead letter with this `sequence`")
	all := fs.Bool("all", false, "replay every dead letter")
	keep := fs.Bool("keep", false, "keep the dead letters after replaying them")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("replay takes no arguments, got %q (use --seq N or --all)", fs.Args())
	}
	if err := f.check(true); err != nil {
		return err
	}
	if (*seq == 0) == !*all {
		return usageErr("replay needs exactly one of --seq N and --all")
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	nc, js, err := f.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	dname := knats.DeadLetterStream(f.stream)
	ds, err := js.Stream(ctx, dname)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return &exitError{exitNotFound, fmt.Errorf("dead-letter stream %q not found", dname)}
		}
		return err
	}
	var dls []deadLetter
	if *all {
		if dls, err = readDead(ctx, js, f.stream); err != nil {
			return err
		}
	} else {
		m, err := ds.GetMsg(ctx, *seq)
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return &exitError{exitNotFound, fmt.Errorf("no dead letter %d in stream %q", *seq, dname)}
			}
			return err
		}
		d := newDeadLetter(m.Sequence, m.Time, m.Header, m.Data)
		if d.Reason == knats.ReasonMalformed {
			return usageErr("dead letter %d is malformed (%s): not replayed", d.Seq, d.Error)
		}
		dls = []deadLetter{d}
	}
	type result struct {
		Seq       uint64 `json:"seq"`
		Type      string `json:"type,omitempty"`
		Subject   string `json:"subject,omitempty"`
		To        string `json:"to,omitempty"`
		StreamSeq uint64 `json:"stream_seq,omitempty"`
		Skipped   string `json:"skipped,omitempty"`
	}
	results := []result{}
	for _, d := range dls {
		r := result{Seq: d.Seq, Type: d.Type, Subject: d.Subject}
		if d.Reason == knats.ReasonMalformed {
			r.Skipped = "malformed: " + d.Error
			results = append(results, r)
			continue
		}
		to := d.NATSSubj
		if !strings.HasPrefix(to, f.stream+".p.") {
			return fmt.Errorf("dead letter %d: original subject %q is not a partition of stream %q", d.Seq, to, f.stream)
		}
		msg := natsgo.NewMsg(to)
		for k, v := range d.header {
			if strings.HasPrefix(k, "Krules-Dead-") || strings.HasPrefix(k, "Nats-") {
				continue
			}
			msg.Header[k] = v
		}
		msg.Data = d.data
		ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(fmt.Sprintf("replay:%s:%d", f.stream, d.Seq)))
		if err != nil {
			return fmt.Errorf("replay dead letter %d to %s: %w", d.Seq, to, err)
		}
		if !*keep {
			if err := ds.DeleteMsg(ctx, d.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("dead letter %d was replayed (stream seq %d) but not deleted: %w", d.Seq, ack.Sequence, err)
			}
		}
		r.To, r.StreamSeq = to, ack.Sequence
		results = append(results, r)
	}
	if f.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(results)
	}
	for _, r := range results {
		if r.Skipped != "" {
			fmt.Fprintf(stdout, "skipped dead letter %d: %s\n", r.Seq, r.Skipped)
			continue
		}
		fmt.Fprintf(stdout, "replayed dead letter %d (%s on %s) to %s, stream seq %d\n", r.Seq, r.Type, r.Subject, r.To, r.StreamSeq)
	}
	return nil
}
