package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Change types of a change record: the krules built-in event types.
const (
	ChangePropertyChanged = "subject-property-changed"
	ChangePropertyDeleted = "subject-property-deleted"
	ChangeSubjectDeleted  = "subject-deleted"
)

// Change is one change record of a backend's change feed (see the feed
// package): written in the same atomic operation as the data change it
// describes, and moved to NATS JetStream by a feed.Relay.
type Change struct {
	// ID is unique and stable: the relay publishes the record under it
	// (Nats-Msg-Id), so a record published twice is stored once.
	ID string `json:"id"`
	// Type is ChangePropertyChanged, ChangePropertyDeleted or
	// ChangeSubjectDeleted.
	Type    string `json:"type"`
	Subject string `json:"subject"`
	// Property is the property's name ("" for ChangeSubjectDeleted).
	// Extended reports an extended property (Flush only).
	Property string `json:"property,omitempty"`
	Extended bool   `json:"ext,omitempty"`
	// Old and New are the stored values before and after the change (Old
	// nil when the property was missing, New nil for a deletion).
	Old any `json:"old,omitempty"`
	New any `json:"new,omitempty"`
	// Props and ExtProps hold the last content of a deleted subject
	// (ChangeSubjectDeleted).
	Props    map[string]any `json:"props,omitempty"`
	ExtProps map[string]any `json:"ext_props,omitempty"`
	// Extra is the caller context of the write (krules.WithExtra).
	Extra map[string]any `json:"extra,omitempty"`
	// Seq is the subject's version: it increases by one with every record of
	// the subject, in commit order, and is never reused (not even after a
	// Flush).
	Seq int64 `json:"seq"`
	// Depth is the cascade depth of the write (0 outside handlers).
	Depth int `json:"depth,omitempty"`
	// TraceParent and TraceState are the W3C trace context of the write.
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
	// Time is when the record was written (backend clock where it has one).
	Time time.Time `json:"time"`
}

// ChangeMeta is the per-call metadata a krules App hands to a backend in
// change-feed mode, through the context (WithChange), so that the Backend
// interface stays as it is. A backend without a feed ignores it.
type ChangeMeta struct {
	// Muted: the write emits no event, so it writes no change record.
	Muted bool
	// Extra, Depth, TraceParent and TraceState go into the records.
	Extra       map[string]any
	Depth       int
	TraceParent string
	TraceState  string
	// Props, for Backend.Store, gives the metadata of each default property
	// of the batch (cached writes each had their own options); a property
	// missing from it uses the outer values.
	Props map[string]*ChangeMeta
}

// For returns the metadata of one property of a Store batch: m.Props[prop]
// when present, else m itself. A nil m gives an empty ChangeMeta.
func (m *ChangeMeta) For(prop string) *ChangeMeta {
	if m == nil {
		return &ChangeMeta{}
	}
	if p, ok := m.Props[prop]; ok && p != nil {
		return p
	}
	return m
}

// EncodeChangeMeta returns the JSON text the built-in backends store beside
// a change record: m's Extra, Depth, TraceParent and TraceState under the
// keys "extra", "depth", "tp" and "ts". It returns nil when m is nil or
// carries none of them. m.Muted is the caller's business (a muted write
// writes no record). An Extra outside the value model gives Normalize's
// error: the write must then be refused before anything is written.
// DecodeChangeMeta reads the text back.
func EncodeChangeMeta(m *ChangeMeta) ([]byte, error) {
	if m == nil {
		return nil, nil
	}
	out := map[string]any{}
	if m.Extra != nil {
		out["extra"] = map[string]any(m.Extra)
	}
	if m.Depth != 0 {
		out["depth"] = int64(m.Depth)
	}
	if m.TraceParent != "" {
		out["tp"] = m.TraceParent
	}
	if m.TraceState != "" {
		out["ts"] = m.TraceState
	}
	if len(out) == 0 {
		return nil, nil
	}
	v, err := Normalize(out)
	if err != nil {
		return nil, fmt.Errorf("change feed extra: %w", err)
	}
	return Marshal(v)
}

// DecodeChangeMeta reads a text written by EncodeChangeMeta into c's Extra,
// Depth, TraceParent and TraceState. A text that is not a JSON object, or
// whose "extra" is not an object, is an error (the relay dead-letters such
// a record).
func DecodeChangeMeta(text []byte, c *Change) error {
	v, err := Unmarshal(text)
	if err != nil {
		return err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return errors.New("not a JSON object")
	}
	if e, ok := m["extra"]; ok {
		if c.Extra, ok = e.(map[string]any); !ok {
			return errors.New("extra is not an object")
		}
	}
	if d, ok := m["depth"].(int64); ok {
		c.Depth = int(d)
	}
	c.TraceParent, _ = m["tp"].(string)
	c.TraceState, _ = m["ts"].(string)
	return nil
}

type changeKey struct{}

// WithChange returns ctx carrying m for the backend call made with it.
func WithChange(ctx context.Context, m *ChangeMeta) context.Context {
	return context.WithValue(ctx, changeKey{}, m)
}

// ChangeFrom returns the metadata ctx carries (nil when none).
func ChangeFrom(ctx context.Context) *ChangeMeta {
	m, _ := ctx.Value(changeKey{}).(*ChangeMeta)
	return m
}

// idPrefix makes the ids of this process unique: 16 random hex digits.
var (
	idPrefix = func() string {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	idCounter atomic.Uint64
)

// NewChangeID returns a new record id, unique across processes: 16 random
// hex digits fixed per process and 16 hex digits of a counter (32 in all).
func NewChangeID() string {
	var b [32]byte
	copy(b[:16], idPrefix)
	n := idCounter.Add(1)
	const digits = "0123456789abcdef"
	for i := 31; i >= 16; i-- {
		b[i] = digits[n&15]
		n >>= 4
	}
	return string(b[:])
}

// ChangeFeeder is implemented by backends that can write change records.
// ChangeFeed reports whether this backend writes them (its feed mode is
// on); a krules App then passes ChangeMeta with every write.
type ChangeFeeder interface {
	ChangeFeed() bool
}

// PendingChange is a change record read from a backend's feed, not yet
// removed. Ref is the backend's handle for AckChanges. Err is set (and
// Change partial) when the stored record cannot be decoded: the relay
// dead-letters it.
type PendingChange struct {
	Ref    string
	Change Change
	Err    error
}

// FeedStore is the relay's side of a backend's change feed. One relay per
// store holds the feed lease at a time; ReadChanges and AckChanges are
// only called by the lease holder.
type FeedStore interface {
	// ReadChanges returns up to max of the oldest pending records, in an
	// order that keeps every subject's records in commit order. When there
	// is none it waits up to wait for one (woken by a store notification,
	// not by polling) and may return none.
	ReadChanges(ctx context.Context, max int, wait time.Duration) ([]PendingChange, error)
	// AckChanges removes published records.
	AckChanges(ctx context.Context, refs []string) error
	// FeedLease acquires or renews the feed lease for owner, for ttl, and
	// reports whether owner holds it.
	FeedLease(ctx context.Context, owner string, ttl time.Duration) (bool, error)
	// ReleaseFeedLease gives the lease up if owner holds it.
	ReleaseFeedLease(ctx context.Context, owner string) error
}
