package middleware

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/krules-go/krules"
)

// DefaultDeadLetterEvent is the event type DeadLetter emits (the KRules
// guide's name).
const DefaultDeadLetterEvent = "error.handler_failed"

// Payload keys of the dead-letter event, and property names of the
// dead-letter subject (the first four are the guide's).
const (
	DLOriginalEvent = "original_event" // original event type
	DLSubject       = "subject"        // original subject name (event payload)
	DLSubjectName   = "subject_name"   // original subject name (dead-letter subject property, as in the guide)
	DLError         = "error"          // error message
	DLTimestamp     = "timestamp"      // failure time, RFC 3339 with nanoseconds, UTC
	DLPayload       = "payload"        // shallow copy of the original payload
	DLHandler       = "handler"        // failed handler's name
	DLAttempts      = "attempts"       // attempts made (see Attempts)
	DLDeadLetter    = "dlq_subject"    // name of the dead-letter subject, when stored
)

// DeadLetterConfig configures DeadLetter. The zero value emits the event
// and stores nothing.
type DeadLetterConfig struct {
	// EventType is the type of the emitted event.
	// Default DefaultDeadLetterEvent ("error.handler_failed").
	EventType string
	// Store also writes the failure to a new dead-letter subject (muted
	// properties original_event, subject_name, error, timestamp, payload,
	// handler, attempts, written in one Store) before the event is emitted;
	// the event then carries its name under "dlq_subject". Default false.
	Store bool
	// SubjectName names the dead-letter subject. Default "dlq-<uuid4>".
	SubjectName func(ctx context.Context, ev *krules.Event) string
	// Match decides which errors are dead-lettered. Default: every error
	// except context.Canceled (the caller went away; nothing failed).
	Match func(error) bool
	// Absorb makes the middleware return nil once the failure is dead-
	// lettered, so the App's error handler does not log it a second time.
	// Default false: the handler's error is returned.
	Absorb bool
	// Now is the clock of the timestamp. Default time.Now.
	Now func() time.Time
}

// DeadLetter records the final failure of a handler: when the rest of the
// chain returns an error (after Retry, if Retry is inside), it emits
// EventType on the same subject with the payload
//
//	{"original_event", "subject", "payload", "error", "handler",
//	 "attempts", "timestamp"[, "dlq_subject"]}
//
// and, with Store, keeps the record in a dead-letter subject first. The emit
// and the store run with context.WithoutCancel(ctx): a failure is recorded
// even when the caller's ctx has ended (trace and cascade depth are kept).
// An error while dead-lettering is joined to the handler's error. Failures
// of handlers of EventType itself are never dead-lettered, so a failing
// dead-letter handler cannot loop. Panics are not seen unless Recover is
// inside DeadLetter (Resilient does that).
//
// DeadLetter fires once per failed invocation, not once per event: under an
// at-least-once transport that redelivers events whose handlers failed (the
// NATS worker of transport/nats, for instance), it fires on every failed
// delivery, up to the transport's delivery limit, and the transport then
// dead-letters the event itself as well. Set Absorb to make the first
// dead-lettered failure final: the error no longer reaches the App's error
// handler, so such a transport sees the event as handled, acks it and does
// not redeliver it.
func DeadLetter(cfg DeadLetterConfig) krules.Middleware {
	if cfg.EventType == "" {
		cfg.EventType = DefaultDeadLetterEvent
	}
	if cfg.SubjectName == nil {
		cfg.SubjectName = func(context.Context, *krules.Event) string { return "dlq-" + uuid4() }
	}
	if cfg.Match == nil {
		cfg.Match = func(err error) bool { return !errors.Is(err, context.Canceled) }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		err := next(ctx)
		if err == nil || ev.Type == cfg.EventType || !cfg.Match(err) {
			return err
		}
		dctx := context.WithoutCancel(ctx)
		handler := krules.HandlerName(ctx)
		ts := cfg.Now().UTC().Format(time.RFC3339Nano)
		attempts := Attempts(err)
		payload := krules.Payload{
			DLOriginalEvent: ev.Type,
			DLSubject:       subjectName(ev),
			DLPayload:       maps.Clone(map[string]any(ev.Payload())),
			DLError:         err.Error(),
			DLHandler:       handler,
			DLAttempts:      attempts,
			DLTimestamp:     ts,
		}
		var dlErr error
		if cfg.Store {
			name := cfg.SubjectName(dctx, ev)
			if serr := storeDeadLetter(dctx, ev.App().Subject(name), payload); serr != nil {
				dlErr = fmt.Errorf("krules/middleware: dead letter of %s for handler %q: store %q: %w", ev, handler, name, serr)
			} else {
				payload[DLDeadLetter] = name
			}
		}
		if eerr := ev.Emit(dctx, cfg.EventType, payload); eerr != nil {
			dlErr = errors.Join(dlErr, fmt.Errorf("krules/middleware: dead letter of %s for handler %q: emit %s: %w", ev, handler, cfg.EventType, eerr))
		}
		if dlErr != nil {
			return errors.Join(err, dlErr)
		}
		if cfg.Absorb {
			return nil
		}
		return err
	}
}

func storeDeadLetter(ctx context.Context, s *krules.Subject, p krules.Payload) error {
	props := []struct {
		name string
		v    any
	}{
		{DLOriginalEvent, p[DLOriginalEvent]},
		{DLSubjectName, p[DLSubject]},
		{DLError, p[DLError]},
		{DLTimestamp, p[DLTimestamp]},
		{DLPayload, p[DLPayload]},
		{DLHandler, p[DLHandler]},
		{DLAttempts, p[DLAttempts]},
	}
	for _, pr := range props {
		_, _, err := s.Set(ctx, pr.name, pr.v, krules.Muted())
		if errors.Is(err, krules.ErrInvalidValue) && pr.name == DLPayload {
			// A payload outside the data model is kept as text.
			_, _, err = s.Set(ctx, pr.name, fmt.Sprintf("%v", pr.v), krules.Muted())
		}
		if err != nil {
			return err
		}
	}
	return s.Store(ctx)
}

// uuid4 returns a random RFC 4122 version 4 UUID.
func uuid4() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics on a broken system source)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
