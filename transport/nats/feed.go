package nats

import (
	"context"
	"strconv"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// CloudEvent extensions of the events a change-feed relay (package feed)
// publishes. The Worker reads them back (see feedEmit).
const (
	// ExtChangeSeq is the subject's version of the change (decimal).
	ExtChangeSeq = "krulesseq"
	// ExtDepth is the cascade depth of the write (decimal, absent for 0).
	ExtDepth = "krulesdepth"
	// ExtExtra is the write's krules.Extra as JSON text (absent when nil).
	ExtExtra = "krulesextra"
)

// MetaChangeSeq is set by the Worker on an event relayed from a change feed:
// the subject's version of the change (int64), increasing by one per
// committed change of the subject.
const MetaChangeSeq = "change_seq"

// feedEmit adapts the emit of a delivered event that a change-feed relay
// published: its handlers run at the cascade depth of the write that made
// the change (so a handler loop spanning processes ends in
// krules.ErrCascadeDepth), see the write's Extra as ev.Extra, and find the
// subject's version in MetaChangeSeq. Other events are unchanged.
func feedEmit(ctx context.Context, e *event.Event, opts []krules.EmitOption) (context.Context, []krules.EmitOption) {
	ext := e.Extensions()
	if s, ok := ext[ExtChangeSeq].(string); ok {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			opts = append(opts, krules.WithMeta(MetaChangeSeq, n))
		}
	}
	if s, ok := ext[ExtDepth].(string); ok {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			ctx = krules.WithCascadeDepth(ctx, n)
		}
	}
	if s, ok := ext[ExtExtra].(string); ok {
		if v, err := storage.Unmarshal([]byte(s)); err == nil {
			if m, ok := v.(map[string]any); ok {
				opts = append(opts, krules.WithExtra(krules.Extra(m)))
			}
		}
	}
	return ctx, opts
}
