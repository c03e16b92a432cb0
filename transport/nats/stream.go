package nats

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultPartitions is the number of partitions EnsureStream gives a new
// stream when StreamConfig.Partitions is 0. 12 splits evenly over 1, 2, 3,
// 4, 6 and 12 workers. It was 32 before: every partition is a filtered
// consumer per worker group, and nats-server's CPU per event grows with the
// number of filtered consumers on a stream (with 32 it spent about twice
// as much per event as with 1). Existing streams keep their count:
// EnsureStream with Partitions 0 accepts it.
const DefaultPartitions = 12

// MaxPartitions bounds StreamConfig.Partitions.
const MaxPartitions = 4096

// DefaultDuplicates is the default de-duplication window of a stream: a
// message whose Nats-Msg-Id (the CloudEvent id) was seen within it is dropped.
// It is above the span of the default redelivery backoff (DefaultBackoff
// over DefaultMaxDeliver deliveries, about 3.2 minutes), so that events a
// handler re-publishes on a redelivery are dropped as duplicates.
const DefaultDuplicates = 5 * time.Minute

// Retention says when a stream deletes an event.
type Retention int

const (
	// RetentionInterest (the default) deletes an event once every worker
	// group of the stream (every durable consumer) has acknowledged it:
	// handled events do not stay on disk. An event published while the
	// stream has no worker group at all is not kept — create the group
	// (NewWorker, which creates its consumers, even if it does not Run yet)
	// before publishing; consumers are durable, so a group whose workers
	// are all stopped keeps receiving. A group created later does not see
	// the events published before it.
	RetentionInterest Retention = iota
	// RetentionLimits keeps events until MaxAge or MaxBytes, whether handled
	// or not (an event log: a group created later reads the history).
	RetentionLimits
)

// ErrPartitionMismatch: the stream exists with another partition count.
// Changing it would send a subject's events to another partition and break
// their order, so it is refused.
var ErrPartitionMismatch = errors.New("stream partition count mismatch")

// ErrNotKrulesStream: the stream exists but was not made by EnsureStream.
var ErrNotKrulesStream = errors.New("not a krules stream")

// ErrStreamLayout: an existing stream (or its dead-letter stream) could
// not be brought to the current layout; the error says what is in the way.
var ErrStreamLayout = errors.New("krules stream layout")

const descPrefix = "krules-go partitions="

// StreamConfig describes a krules event stream.
type StreamConfig struct {
	// Name is the JetStream stream name and the subject prefix: events go to
	// "<Name>.p.<k>" (k the partition), dead letters to the subject
	// "<Name>.dead" in their own stream DeadLetterStream(Name).
	// Required; letters, digits, '-' and '_' only.
	Name string
	// Partitions is the number of partitions (see the package doc). It is
	// fixed for the life of the stream. 0 (the default) means: the count of
	// the existing stream, whatever it is, or DefaultPartitions for a new
	// one. A count other than 0 must match an existing stream's
	// (ErrPartitionMismatch).
	Partitions int
	// Replicas of the stream (clustered JetStream). Default 1.
	Replicas int
	// Retention: RetentionInterest (default: an event is deleted once every
	// worker group acked it) or RetentionLimits. Fixed when the stream is
	// created; an existing stream keeps its retention.
	Retention Retention
	// MaxAge discards events older than this, handled or not. Default 0:
	// no age limit.
	MaxAge time.Duration
	// MaxBytes bounds the stream size; the oldest messages go first.
	// Default 0: unlimited.
	MaxBytes int64
	// Memory keeps the stream in memory instead of files. Default false.
	Memory bool
	// Duplicates is the de-duplication window. Default DefaultDuplicates;
	// keep it above the span of the workers' redelivery Backoff.
	Duplicates time.Duration
	// DeadLetterMaxAge discards dead letters older than this. Default 0:
	// kept until deleted (or replayed and deleted).
	DeadLetterMaxAge time.Duration
}

// PartitionOf returns the partition (0 <= k < n) of a subject: the 32-bit
// FNV-1a hash of its name modulo n.
func PartitionOf(subject string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(subject))
	return int(h.Sum32() % uint32(n))
}

// PartitionSubject returns the NATS subject of partition k of a stream.
func PartitionSubject(stream string, k int) string {
	return stream + ".p." + strconv.Itoa(k) // not Sprintf: it showed in the publisher's profile (~8%)
}

// DeadLetterSubject returns the NATS subject dead letters of a stream go to
// (stored in DeadLetterStream(stream)).
func DeadLetterSubject(stream string) string { return stream + ".dead" }

// DeadLetterStream returns the name of the JetStream stream that keeps the
// dead letters of a stream: "<stream>_dead", subject DeadLetterSubject,
// limits retention (kept until deleted or DeadLetterMaxAge). EnsureStream
// creates it. Each dead letter is the original message's data with its
// headers plus the Krules-Dead-* headers (HeaderDeadReason, ...).
func DeadLetterStream(stream string) string { return stream + "_dead" }

func validStreamName(name string) error {
	if name == "" {
		return errors.New("krules/nats: empty stream name")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("krules/nats: stream name %q: only letters, digits, '-' and '_' are allowed", name)
		}
	}
	return nil
}

// EnsureStream creates the stream and its dead-letter stream
// (DeadLetterStream) if they do not exist and returns the stream. An
// existing stream is checked: it must have been made by EnsureStream
// (else ErrNotKrulesStream) and, when cfg.Partitions is not 0, with that
// partition count (else ErrPartitionMismatch; with Partitions 0 any count
// is accepted, so a stream created with an earlier DefaultPartitions keeps
// working); its other settings are left as they are.
//
// Migration: a stream made by an earlier version also held its dead letters
// (subject "<Name>.dead"). EnsureStream takes that subject out of it and
// creates the dead-letter stream for it; dead letters already stored stay
// in the old stream (read them with a consumer filtered on
// DeadLetterSubject). Anything else in the way of the layout fails with
// ErrStreamLayout. Safe to call from several processes at once.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if err := validStreamName(cfg.Name); err != nil {
		return nil, err
	}
	n := cfg.Partitions
	if n == 0 {
		n = DefaultPartitions
	}
	if n < 1 || n > MaxPartitions {
		return nil, fmt.Errorf("krules/nats: stream %q: partitions %d out of range [1, %d]", cfg.Name, n, MaxPartitions)
	}
	sc := jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: descPrefix + fmt.Sprint(n),
		Subjects:    []string{cfg.Name + ".p.*"},
		Retention:   jetstream.InterestPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(cfg.Replicas, 1),
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Duplicates:  cfg.Duplicates,
	}
	switch cfg.Retention {
	case RetentionInterest:
	case RetentionLimits:
		sc.Retention = jetstream.LimitsPolicy
	default:
		return nil, fmt.Errorf("krules/nats: stream %q: unknown retention %d", cfg.Name, cfg.Retention)
	}
	if cfg.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	if sc.Duplicates == 0 {
		sc.Duplicates = DefaultDuplicates
	}
	if sc.MaxBytes == 0 {
		sc.MaxBytes = -1
	}
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, sc)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, cfg.Name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("krules/nats: stream %q: %w", cfg.Name, err)
	}
	info := s.CachedInfo()
	got, err := partitionsOf(info)
	if err != nil {
		return nil, err
	}
	if cfg.Partitions != 0 && got != n {
		return nil, fmt.Errorf("krules/nats: stream %q has %d partitions, config says %d: %w", cfg.Name, got, n, ErrPartitionMismatch)
	}
	dead := DeadLetterSubject(cfg.Name)
	if i := slices.Index(info.Config.Subjects, dead); i >= 0 {
		// Old layout: the dead letters shared the stream.
		up := info.Config
		up.Subjects = slices.Delete(slices.Clone(up.Subjects), i, i+1)
		if s, err = js.UpdateStream(ctx, up); err != nil {
			return nil, fmt.Errorf("krules/nats: stream %q: moving subject %q to stream %q: %w (%w)", cfg.Name, dead, DeadLetterStream(cfg.Name), ErrStreamLayout, err)
		}
	}
	dc := jetstream.StreamConfig{
		Name:        DeadLetterStream(cfg.Name),
		Description: "krules-go dead letters of " + cfg.Name,
		Subjects:    []string{dead},
		Retention:   jetstream.LimitsPolicy,
		Storage:     sc.Storage,
		Replicas:    sc.Replicas,
		MaxAge:      cfg.DeadLetterMaxAge,
		Duplicates:  sc.Duplicates,
	}
	ds, err := js.Stream(ctx, dc.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		ds, err = js.CreateStream(ctx, dc)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			ds, err = js.Stream(ctx, dc.Name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("krules/nats: dead-letter stream %q: %w (%w)", dc.Name, ErrStreamLayout, err)
	}
	if !slices.Contains(ds.CachedInfo().Config.Subjects, dead) {
		return nil, fmt.Errorf("krules/nats: stream %q exists but does not take subject %q: %w", dc.Name, dead, ErrStreamLayout)
	}
	return s, nil
}

func partitionsOf(info *jetstream.StreamInfo) (int, error) {
	var n int
	d := info.Config.Description
	if !strings.HasPrefix(d, descPrefix) {
		return 0, fmt.Errorf("krules/nats: stream %q (description %q): %w", info.Config.Name, d, ErrNotKrulesStream)
	}
	if _, err := fmt.Sscanf(d[len(descPrefix):], "%d", &n); err != nil || n < 1 || n > MaxPartitions {
		return 0, fmt.Errorf("krules/nats: stream %q (description %q): %w", info.Config.Name, d, ErrNotKrulesStream)
	}
	return n, nil
}

// streamInfo returns the partition count of an existing krules stream and
// its creation time (which tells a re-created stream from the old one).
func streamInfo(ctx context.Context, js jetstream.JetStream, name string) (int, time.Time, error) {
	if err := validStreamName(name); err != nil {
		return 0, time.Time{}, err
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("krules/nats: stream %q: %w", name, err)
	}
	info := s.CachedInfo()
	n, err := partitionsOf(info)
	return n, info.Created, err
}

// Connect connects to NATS with options suited to a long-running worker or
// publisher: reconnect forever (every 250 ms, with jitter), keep buffering
// publishes while disconnected, and retry the first connection too. opts
// are applied after these defaults and may override them.
func Connect(url string, opts ...natsgo.Option) (*natsgo.Conn, error) {
	all := append([]natsgo.Option{
		natsgo.MaxReconnects(-1),
		natsgo.ReconnectWait(250 * time.Millisecond),
		natsgo.ReconnectJitter(100*time.Millisecond, time.Second),
		natsgo.RetryOnFailedConnect(true),
	}, opts...)
	nc, err := natsgo.Connect(url, all...)
	if err != nil {
		return nil, fmt.Errorf("krules/nats: connect %s: %w", url, err)
	}
	return nc, nil
}
