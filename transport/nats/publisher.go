package nats

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// Metadata keys (krules.WithMeta, Event.Meta).
const (
	// MetaTopic names the stream an event is published to by the
	// Publisher's middleware: a string or a func(subject, eventType string)
	// string.
	MetaTopic = "topic"
	// MetaStream, MetaSequence and MetaDeliveries are set by the Worker on
	// the events it delivers: the stream name (string), the message's stream
	// sequence (uint64) and how many times it was delivered (uint64, 1 the
	// first time).
	MetaStream     = "nats_stream"
	MetaSequence   = "nats_sequence"
	MetaDeliveries = "nats_deliveries"
	// MetaPublished is set to true on an event once the middleware has
	// published it; MetaPublishError holds the error text of a failed try.
	MetaPublished    = "_published"
	MetaPublishError = "_publish_error"
)

// ContentType is the Content-Type header of published messages: the
// CloudEvent in structured JSON mode.
const ContentType = "application/cloudevents+json"

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Stream is the stream Publish and the forwarded Patterns publish to.
	// Required; it must exist (EnsureStream).
	Stream string
	// Source is the CloudEvent source attribute. Default
	// cloudevents.DefaultSource().
	Source string
	// Patterns are the event types (fnmatch globs) that Install forwards to
	// Stream. Local handlers of these events still run.
	Patterns []string
	// DefaultPolicy applies to events carrying MetaTopic without a
	// cloudevents.MetaDispatchPolicy: PolicyDirect (the default) publishes
	// them and runs no local handler, PolicyBoth publishes and runs them.
	DefaultPolicy cloudevents.Policy
}

// Publisher publishes KRules events to JetStream streams as CloudEvents
// (structured JSON), each on the partition of its subject, with the event id
// as Nats-Msg-Id so the stream drops a duplicate publish within its
// de-duplication window. Events published from one goroutine reach the
// stream in call order (and so are handled in that order per subject).
// Safe for concurrent use.
type Publisher struct {
	js  jetstream.JetStream
	cfg PublisherConfig

	mu    sync.Mutex
	parts map[string]int // stream -> partitions
}

// NewPublisher returns a Publisher for cfg.Stream, reading its partition
// count from the stream.
func NewPublisher(ctx context.Context, js jetstream.JetStream, cfg PublisherConfig) (*Publisher, error) {
	if cfg.Source == "" {
		cfg.Source = cloudevents.DefaultSource()
	}
	if cfg.DefaultPolicy == "" {
		cfg.DefaultPolicy = cloudevents.PolicyDirect
	}
	p := &Publisher{js: js, cfg: cfg, parts: map[string]int{}}
	if _, err := p.partitions(ctx, cfg.Stream); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Publisher) partitions(ctx context.Context, stream string) (int, error) {
	p.mu.Lock()
	n, ok := p.parts[stream]
	p.mu.Unlock()
	if ok {
		return n, nil
	}
	n, _, err := streamInfo(ctx, p.js, stream)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	p.parts[stream] = n
	p.mu.Unlock()
	return n, nil
}

// Publish builds a CloudEvent (cloudevents.NewEvent: a new id — random, or
// deterministic when ctx is a handler's ctx inside a Worker's delivery, see
// the package doc —, the configured source, originid from ctx) and
// publishes it to the configured stream, waiting for the stream's
// acknowledgement. It returns the event id.
func (p *Publisher) Publish(ctx context.Context, eventType, subject string, payload krules.Payload) (string, error) {
	e, err := cloudevents.NewEvent(ctx, eventType, subject, payload, cloudevents.EventOptions{Source: p.cfg.Source})
	if err != nil {
		return "", err
	}
	if _, err := p.PublishEvent(ctx, p.cfg.Stream, e); err != nil {
		return e.ID(), err
	}
	return e.ID(), nil
}

// PublishEvent publishes a CloudEvent to a stream and waits for the
// acknowledgement. The event must pass cloudevents.Check.
func (p *Publisher) PublishEvent(ctx context.Context, stream string, e *event.Event) (*jetstream.PubAck, error) {
	msg, err := p.message(ctx, stream, e)
	if err != nil {
		return nil, err
	}
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(e.ID()))
	if err != nil {
		return nil, fmt.Errorf("krules/nats: publish %q (id %s) on %q to %s: %w", e.Type(), e.ID(), e.Subject(), stream, err)
	}
	return ack, nil
}

// PublishEventAsync publishes without waiting: the returned future resolves
// to the acknowledgement. Use it to publish many events fast; order per
// connection is kept. Wait for completion with the JetStream context's
// PublishAsyncComplete.
//
// Backpressure: when the JetStream context already has its maximum of
// unacknowledged async publishes (jetstream.WithPublishAsyncMaxPending,
// default 4000), PublishEventAsync waits for room — until ctx is done, then
// it returns ctx's error (wrapped) and the event was not sent. It never
// fails with jetstream.ErrTooManyStalledMsgs.
func (p *Publisher) PublishEventAsync(ctx context.Context, stream string, e *event.Event) (jetstream.PubAckFuture, error) {
	msg, err := p.message(ctx, stream, e)
	if err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("krules/nats: publish %q (id %s) on %q to %s: waiting for room among the async publishes: %w", e.Type(), e.ID(), e.Subject(), stream, err)
		}
		wait := stallSlice
		if d, ok := ctx.Deadline(); ok {
			wait = min(wait, max(time.Until(d), time.Millisecond))
		}
		f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.ID()), jetstream.WithStallWait(wait))
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			// Nothing was sent: try again, keeping the call order.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("krules/nats: publish %q (id %s) on %q to %s: %w", e.Type(), e.ID(), e.Subject(), stream, err)
		}
		return f, nil
	}
}

// stallSlice is how long one try of an async publish waits for room before
// PublishEventAsync checks its ctx again.
const stallSlice = 200 * time.Millisecond

func (p *Publisher) message(ctx context.Context, stream string, e *event.Event) (*natsgo.Msg, error) {
	if err := cloudevents.Check(e); err != nil {
		return nil, err
	}
	n, err := p.partitions(ctx, stream)
	if err != nil {
		return nil, err
	}
	// The event's own encoder: json.Marshal would re-scan and compact
	// what it returns (~25% more in the profile).
	data, err := e.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("krules/nats: encode %q (id %s): %w", e.Type(), e.ID(), err)
	}
	msg := natsgo.NewMsg(PartitionSubject(stream, PartitionOf(e.Subject(), n)))
	msg.Header.Set("Content-Type", ContentType)
	msg.Data = data
	return msg, nil
}

// Install registers the publisher on app: Middleware (for events carrying
// MetaTopic) and, when Patterns are configured, a handler that publishes
// every matching event to Stream. Events that a Worker delivered from Stream
// itself are not forwarded back to it.
func (p *Publisher) Install(app *krules.App) {
	app.Use(p.Middleware())
	if len(p.cfg.Patterns) > 0 {
		app.On(p.cfg.Patterns...).Named("nats.forward").Do(p.forward)
	}
}

func (p *Publisher) forward(ctx context.Context, ev *krules.Event) error {
	if s, ok := ev.Meta(MetaStream); ok && s == p.cfg.Stream {
		return nil
	}
	return p.publishKrules(ctx, ev, p.cfg.Stream)
}

func (p *Publisher) publishKrules(ctx context.Context, ev *krules.Event, stream string) error {
	e, err := cloudevents.FromKrules(ctx, ev, p.cfg.Source)
	if err != nil {
		return err
	}
	_, err = p.PublishEvent(ctx, stream, e)
	return err
}

// publishState is kept in the event's metadata so the middleware, which
// runs once per matching handler, publishes once per event. After a failed
// publish, failedIn names the handler whose chain published, so that a
// retry of that chain (middleware.Retry outside this middleware) publishes
// again instead of being a silent no-op.
type publishState struct {
	policy   cloudevents.Policy
	sent     bool   // a publish succeeded (or was never due: PolicyNever)
	failed   bool   // the last publish failed
	failedIn string // HandlerName of the chain of the last failed publish
}

const metaPublishState = "_krules_publish_state"

// Middleware returns a middleware that publishes every event carrying
// MetaTopic to that stream, once per event, and then by policy
// (cloudevents.MetaDispatchPolicy, else the configured default) runs no
// local handler ("direct") or all of them ("both"). A failed publish is
// recorded in MetaPublishError and returned from the middleware of the
// handler that published, so it reaches the App's error handler.
//
// Retries: place this middleware inside middleware.Retry
// (app.Use(middleware.Retry(...), p.Middleware())). When the chain of the
// handler whose publish failed runs again, the event is published again,
// and the failure of the last attempt is what Retry reports; the other
// handlers' middleware does not publish again after a failure.
// Middleware only runs for events with a matching handler.
func (p *Publisher) Middleware() krules.Middleware {
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		topic, ok := ev.Meta(MetaTopic)
		if !ok || topic == nil {
			return next(ctx)
		}
		var st *publishState
		if v, ok := ev.Meta(metaPublishState); ok {
			st, _ = v.(*publishState)
		}
		if st != nil && (st.sent || !st.failed || st.failedIn != krules.HandlerName(ctx)) {
			// Already published, or failed in another handler's chain
			// (reported there): apply the policy only.
			if st.policy == cloudevents.PolicyDirect {
				return nil
			}
			return next(ctx)
		}
		if st == nil {
			policy := p.cfg.DefaultPolicy
			if v, ok := ev.Meta(cloudevents.MetaDispatchPolicy); ok {
				switch x := v.(type) {
				case string:
					policy = cloudevents.Policy(x)
				case cloudevents.Policy:
					policy = x
				}
			}
			switch policy {
			case cloudevents.PolicyAlways:
				policy = cloudevents.PolicyBoth
			case cloudevents.PolicyBoth, cloudevents.PolicyNever:
			default:
				policy = cloudevents.PolicyDirect
			}
			st = &publishState{policy: policy}
			ev.SetMeta(metaPublishState, st)
		}
		policy := st.policy
		if policy == cloudevents.PolicyNever {
			st.sent = true
			return next(ctx)
		}
		name := ev.Subject.Name()
		var stream string
		switch t := topic.(type) {
		case string:
			stream = t
		case func(subject, eventType string) string:
			stream = t(name, ev.Type)
		}
		var err error
		if stream == "" {
			err = fmt.Errorf("krules/nats: publish %q on %q: %s metadata %v (%T) names no stream", ev.Type, name, MetaTopic, topic, topic)
		} else {
			err = p.publishKrules(ctx, ev, stream)
		}
		if err != nil {
			ev.SetMeta(MetaPublishError, err.Error())
			st.failedIn = krules.HandlerName(ctx)
		} else {
			if st.failed {
				ev.SetMeta(MetaPublishError, nil)
			}
			ev.SetMeta(MetaPublished, true)
		}
		st.failed = err != nil
		st.sent = err == nil
		if policy == cloudevents.PolicyDirect {
			return err
		}
		return errors.Join(err, next(ctx))
	}
}
