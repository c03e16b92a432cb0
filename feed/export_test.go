package feed

import (
	"context"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
)

// WrapPublish lets a test wrap the relay's asynchronous publish (to hold
// acknowledgements back, for example). Call it before Run.
func WrapPublish(r *Relay, wrap func(jetstream.PubAckFuture) jetstream.PubAckFuture) {
	pub := r.publishAsync
	r.publishAsync = func(ctx context.Context, stream string, e *event.Event) (jetstream.PubAckFuture, error) {
		f, err := pub(ctx, stream, e)
		if err != nil {
			return nil, err
		}
		return wrap(f), nil
	}
}

// ReplacePublish lets a test replace the relay's asynchronous publish
// (f gets the real one). Call it before Run.
func ReplacePublish(r *Relay, f func(pub PublishFunc) PublishFunc) {
	r.publishAsync = f(r.publishAsync)
}

// PublishFunc is the relay's asynchronous publish.
type PublishFunc = func(ctx context.Context, stream string, e *event.Event) (jetstream.PubAckFuture, error)
