package redis_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/storage/storagetest"
)

// TestCluster runs the conformance suite through a ClusterClient on a
// private one-node Redis Cluster holding all 16384 slots. Redis refuses a
// command or transaction spanning keys of different slots (CROSSSLOT) even
// on one node, so this proves every operation stays on one key. It runs in
// parallel with the other tests (its own server on its own port).
func TestCluster(t *testing.T) {
	t.Parallel()
	srv := startPrivateRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	ctx := context.Background()
	addr := fmt.Sprintf("127.0.0.1:%d", srv.port)
	admin := goredis.NewClient(&goredis.Options{Addr: addr})
	defer admin.Close()
	if err := admin.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("CLUSTER ADDSLOTSRANGE: %v", err)
	}
	// The node reports the cluster as ok once it has processed its slots.
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := admin.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not ok: %v %q", err, info)
		}
		time.Sleep(50 * time.Millisecond)
	}
	client := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{addr}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { client.Close() })
	// The setup is meaningful: a command on keys of two slots is refused.
	if err := client.Del(ctx, "s:a", "s:b").Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("multi-slot DEL: err = %v, want CROSSSLOT", err)
	}

	// Under the race detector the concurrent subtests make a quarter of their
	// rounds (raceScaleDown): the cluster changes where keys live, not the
	// scripts that serialise updates, and TestConformance runs the full counts.
	storagetest.RunConfig(t, storagetest.Config{Parallel: conformanceParallel, ScaleDown: raceScaleDown(), New: func(t *testing.T) storage.Backend {
		b := redis.New(client, redis.Config{Prefix: testenv.Unique("cluster") + ":"})
		t.Cleanup(func() { b.Close() })
		return b
	}})

	// Keyed writes touch a key record beside the hash: it must be in the
	// hash's slot, with and without a hash tag in the subject's key.
	for _, brace := range []bool{false, true} {
		t.Run(fmt.Sprintf("hashtag=%v", brace), func(t *testing.T) {
			storagetest.RunIdempotency(t, func(t *testing.T) storage.Backend {
				prefix := testenv.Unique("cluster") + ":"
				if brace {
					prefix = "{" + prefix + "}"
				}
				b := redis.New(client, redis.Config{Prefix: prefix, IdempotencyWindow: time.Minute})
				t.Cleanup(func() { b.Close() })
				return b
			})
		})
	}

	t.Run("List", func(t *testing.T) {
		b := redis.New(client, redis.Config{Prefix: "list:"})
		for i := range 50 {
			mustSet(t, b, fmt.Sprintf("subject-%d", i), P("x"), i)
		}
		seen := map[string]bool{}
		for name, err := range b.List(ctx, "subject-") {
			if err != nil {
				t.Fatal(err)
			}
			seen[name] = true
		}
		if len(seen) != 50 {
			t.Errorf("List found %d subjects, want 50", len(seen))
		}
		for range b.List(ctx, "") {
			break // stopping early ends the per-node scans
		}
	})
}

// raceScaleDown is storagetest.Config.ScaleDown for the suites here that
// run a quarter of the concurrent rounds under the race detector, where
// every write costs an order of magnitude more; without it (CI's full-size
// step) they run the full counts.
func raceScaleDown() int {
	if testenv.Race {
		return 4
	}
	return 1
}
