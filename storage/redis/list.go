package redis

import (
	"context"
	"fmt"
	"iter"
	"strings"

	goredis "github.com/redis/go-redis/v9"
)

// scanCount is the COUNT hint of each SCAN call.
const scanCount = 1000

// List implements storage.Lister with SCAN ... MATCH "s:<Prefix><prefix>*"
// TYPE hash (the prefixes glob-escaped, so subject names may contain '*',
// '?', '[' or '\'). On a ClusterClient every master is scanned; on a Ring
// every shard. Names are streamed, never collected.
//
// SCAN semantics apply: a subject present for the whole scan is yielded; one
// created or flushed meanwhile may or may not be; and, if Redis resizes its
// keyspace during the scan, a name may rarely be yielded twice. A subject
// whose properties were all deleted no longer exists in Redis and is not
// listed.
func (b *Backend) List(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if err := b.open(ctx); err != nil {
			yield("", err)
			return
		}
		keyPrefix := b.Key("")
		match := "s:" + globEscape(b.cfg.Prefix+prefix) + "*"
		var err error
		switch c := b.client.(type) {
		case *goredis.ClusterClient:
			err = scanNodes(ctx, c.ForEachMaster, match, keyPrefix, yield)
		case *goredis.Ring:
			err = scanNodes(ctx, c.ForEachShard, match, keyPrefix, yield)
		default:
			_, err = scanNode(ctx, b.client, match, keyPrefix, yield)
		}
		if err != nil {
			yield("", fmt.Errorf("redis: list subjects with prefix %q: %w", prefix, err))
		}
	}
}

// scanNode scans one server; it reports false when yield asked to stop.
func scanNode(ctx context.Context, c goredis.Cmdable, match, keyPrefix string, yield func(string, error) bool) (bool, error) {
	var cursor uint64
	for {
		keys, next, err := c.ScanType(ctx, cursor, match, scanCount, "hash").Result()
		if err != nil {
			return true, err
		}
		for _, k := range keys {
			if !yield(strings.TrimPrefix(k, keyPrefix), nil) {
				return false, nil
			}
		}
		if next == 0 {
			return true, nil
		}
		cursor = next
	}
}

// scanNodes scans every node reported by forEach (concurrently, as go-redis
// runs the callbacks) and hands the names to yield from this goroutine.
func scanNodes(parent context.Context,
	forEach func(context.Context, func(context.Context, *goredis.Client) error) error,
	match, keyPrefix string, yield func(string, error) bool,
) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	names := make(chan string)
	done := make(chan error, 1)
	go func() {
		done <- forEach(ctx, func(ctx context.Context, node *goredis.Client) error {
			_, err := scanNode(ctx, node, match, keyPrefix, func(name string, _ error) bool {
				select {
				case names <- name:
					return true
				case <-ctx.Done():
					return false
				}
			})
			return err
		})
		close(names)
	}()
	for name := range names {
		if !yield(name, nil) {
			cancel()
			for range names { // let the scanners see the cancellation and finish
			}
			<-done
			return nil
		}
	}
	if err := <-done; err != nil {
		return err
	}
	// A scanner that gave up because the caller's ctx ended reports no
	// error of its own: the list is incomplete, so say so.
	return parent.Err()
}

// globEscape quotes the characters special to Redis glob patterns.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\^`) {
		return s
	}
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\', '^':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}
