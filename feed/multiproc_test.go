package feed_test

import (
	"context"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/internal/testenv"
)

// TestOrderAcrossProcesses: 3 writer processes and 3 worker processes over
// Redis and over PostgreSQL, 200 subjects: every worker-side handler sees
// each subject's versions one after the other (checked in Redis by the
// handlers themselves), and every committed change is handled.
func TestOrderAcrossProcesses(t *testing.T) {
	t.Parallel()
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		prefix := testenv.Unique("krmulti") + ":"
		b := openRedis(t, prefix)
		testOrderAcrossProcesses(t, b, []string{"KRULES_FEED_PREFIX=" + prefix})
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		table := testenv.Unique("krmulti")
		b := openPostgres(t, table)
		testOrderAcrossProcesses(t, b, []string{"KRULES_POSTGRES_URL=" + testenv.PostgresURL(t), "KRULES_FEED_TABLE=" + table})
	})
}

func testOrderAcrossProcesses(t *testing.T, b feedBackend, env []string) {
	url, nurl := testenv.RedisURL(t), testenv.NATSURL(t)
	js := connect(t)
	stream := newStream(t, js)
	check := testenv.Unique("krmulti-check")
	rc := openRedis(t, testenv.Unique("krmulti-c")+":").Client()
	t.Cleanup(func() { rc.Del(context.Background(), check) })
	const subjects, writers = 200, 3
	rounds := 2 // cached Store and NoCache Inc
	if testenv.Race {
		rounds = 1
	}
	base := append(append([]string{}, "KRULES_REDIS_URL="+url, "KRULES_NATS_URL="+nurl, "KRULES_FEED_STREAM="+stream,
		"KRULES_FEED_CHECK="+check, "KRULES_FEED_SUBJECTS="+strconv.Itoa(subjects), "KRULES_FEED_ROUNDS="+strconv.Itoa(rounds)), env...)
	var workers []*exec.Cmd
	t.Cleanup(func() {
		for _, w := range workers {
			_ = w.Process.Kill()
			_ = w.Wait()
		}
	})
	for i := 0; i < 3; i++ {
		workers = append(workers, startChild(t, "worker", true, base...))
	}
	startRelay(t, b, js, feed.RelayConfig{Stream: stream})
	var ws []*exec.Cmd
	for i := 0; i < writers; i++ {
		ws = append(ws, startChild(t, "writer", false, base...))
	}
	for _, w := range ws {
		if err := w.Wait(); err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	total := int64(subjects * rounds * writers)
	ctx := context.Background()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		n, _ := rc.HGet(ctx, check, "!n").Int64()
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d changes handled", n, total)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n, _ := rc.HGet(ctx, check, "!n").Int64(); n != total {
		t.Errorf("%d changes handled, want %d", n, total)
	}
	if bad, _ := rc.HGet(ctx, check, "!bad").Int64(); bad != 0 {
		t.Errorf("%d versions out of order or with a gap", bad)
	}
	for i := 0; i < subjects; i++ {
		if v, _ := rc.HGet(ctx, check, "m-"+pad3(i)).Int64(); v != int64(rounds*writers) {
			t.Errorf("subject m-%s: last version %d, want %d", pad3(i), v, rounds*writers)
			break
		}
	}
}

func pad3(i int) string {
	s := strconv.Itoa(i)
	for len(s) < 3 {
		s = "0" + s
	}
	return s
}
