package middleware

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"

	"github.com/krules-go/krules"
)

// Environment variables read by PartitionerFromEnv.
const (
	EnvPartitionID    = "PARTITION_ID"
	EnvPartitionCount = "PARTITION_COUNT"
)

// PartitionMetaKey is the event metadata key Partitioner.Middleware sets to
// the event's partition (an int), as in the KRules guide.
const PartitionMetaKey = "partition"

// PartitionOf returns the partition, in [0, count), of a subject name: the
// 32-bit FNV-1a hash of the name's UTF-8 bytes modulo count. The hash is
// stable across processes, machines, restarts and languages, unlike
// Python's randomised hash() used by the guide. The same partition in Python:
//
//	def partition_of(name, count):
//	    h = 0x811C9DC5
//	    for b in name.encode():
//	        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
//	    return h % count
//
// count < 1 gives 0.
func PartitionOf(subject string, count int) int {
	if count < 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(subject))
	return int(uint64(h.Sum32()) % uint64(count))
}

// Partitioner tells whether this instance owns a subject, so that N
// instances sharing a store and receiving every event each process the
// events of 1/N of the subjects (the guide's PARTITION_ID pattern).
type Partitioner struct {
	id, count int
}

// NewPartitioner returns the Partitioner of instance id among count. It
// fails with ErrInvalidPartition unless count >= 1 and 0 <= id < count.
func NewPartitioner(id, count int) (*Partitioner, error) {
	if count < 1 || id < 0 || id >= count {
		return nil, fmt.Errorf("krules/middleware: partition id %d of %d: %w", id, count, ErrInvalidPartition)
	}
	return &Partitioner{id: id, count: count}, nil
}

// PartitionerFromEnv builds a Partitioner from PARTITION_ID (default 0) and
// PARTITION_COUNT (default 1, which owns everything). A value that is not an
// integer, or out of range, is an error wrapping ErrInvalidPartition.
func PartitionerFromEnv() (*Partitioner, error) {
	id, err := envInt(EnvPartitionID, 0)
	if err != nil {
		return nil, err
	}
	count, err := envInt(EnvPartitionCount, 1)
	if err != nil {
		return nil, err
	}
	return NewPartitioner(id, count)
}

func envInt(name string, def int) (int, error) {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("krules/middleware: %s=%q: %w", name, v, ErrInvalidPartition)
	}
	return n, nil
}

// ID returns this instance's partition.
func (p *Partitioner) ID() int { return p.id }

// Count returns the number of partitions.
func (p *Partitioner) Count() int { return p.count }

// Owns reports whether the subject's partition is this instance's.
func (p *Partitioner) Owns(subject string) bool { return PartitionOf(subject, p.count) == p.id }

// Filter returns a filter for Rule.When that passes the events of the
// subjects this instance owns: use it on the handlers to partition.
func (p *Partitioner) Filter() krules.Filter {
	return func(_ context.Context, ev *krules.Event) bool { return p.Owns(subjectName(ev)) }
}

// Middleware returns the guide's partition middleware: it sets the event's
// PartitionMetaKey metadata to the subject's partition and runs the handler
// only when this instance owns it (otherwise it skips it, returning nil).
// It applies to every handler; prefer Filter to partition some handlers only.
func (p *Partitioner) Middleware() krules.Middleware {
	return func(ctx context.Context, ev *krules.Event, next krules.Next) error {
		part := PartitionOf(subjectName(ev), p.count)
		ev.SetMeta(PartitionMetaKey, part)
		if part != p.id {
			return nil
		}
		return next(ctx)
	}
}
