package feed_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

// relayKills is how many relay processes TestRelayKilled kills.
const relayKills = 50

// relayChildTTL is the lease of the relays TestRelayKilled starts.
const relayChildTTL = 300 * time.Millisecond

// TestRelayKilled: two relay child processes (one active, one standby)
// while this process writes continuously; a relay is SIGKILLed at a random
// moment and replaced, relayKills times. Every committed change reaches
// the handler once (JetStream drops the re-published copies) and in order.
func TestRelayKilled(t *testing.T) {
	t.Parallel()
	url, nurl := testenv.RedisURL(t), testenv.NATSURL(t)
	js := connect(t)
	stream := newStream(t, js)
	prefix := testenv.Unique("krrelay") + ":"
	b := openRedis(t, prefix)
	const subjects = 20

	var mu sync.Mutex
	got := map[string][]int64{}
	wapp := krules.New()
	wapp.On(krules.PropertyChanged).Do(func(ctx context.Context, ev *krules.Event) error {
		v, _ := ev.Meta(knats.MetaChangeSeq)
		mu.Lock()
		got[ev.Subject.Name()] = append(got[ev.Subject.Name()], v.(int64))
		mu.Unlock()
		return nil
	})
	startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})

	start := func() *exec.Cmd {
		return startChild(t, "relay", true, "KRULES_REDIS_URL="+url, "KRULES_NATS_URL="+nurl,
			"KRULES_FEED_PREFIX="+prefix, "KRULES_FEED_STREAM="+stream, "KRULES_FEED_TTL="+strconv.Itoa(int(relayChildTTL.Milliseconds())))
	}
	relays := []*exec.Cmd{start(), start()}
	defer func() {
		for _, r := range relays {
			kill(r)
		}
	}()

	// The writer: NoCache increments until told to stop.
	writer := krules.New(krules.WithStorage(b))
	var stop atomic.Bool
	wdone := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for i := 0; !stop.Load(); i++ {
			if _, _, err := writer.Subject(fmt.Sprintf("r-%02d", i%subjects), krules.NoCache()).Set(ctx, "n", krules.Inc(1)); err != nil {
				wdone <- err
				return
			}
			if i%10 == 9 {
				time.Sleep(5 * time.Millisecond) // a steady flow, not a flood
			}
		}
		wdone <- nil
	}()
	// Kill one of the two relays at a random moment, mostly mid-publish
	// (the writer keeps the feed busy), relayKills times; a kill of the
	// lease holder hands the feed to the standby within the lease TTL.
	for kills := 0; kills < relayKills; kills++ {
		time.Sleep(time.Duration(20+rand.IntN(80)) * time.Millisecond)
		i := rand.IntN(2)
		kill(relays[i])
		relays[i] = start()
	}
	stop.Store(true)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d relay processes killed", relayKills)

	ctx := context.Background()
	want, err := b.Client().HGetAll(ctx, "f:"+prefix+"seq").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, v := range want {
		n, _ := strconv.Atoi(v)
		total += n
	}
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := 0
		for _, q := range got {
			n += len(q)
		}
		mu.Unlock()
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d committed changes handled", n, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would show up now
	mu.Lock()
	defer mu.Unlock()
	for name, v := range want {
		n, _ := strconv.Atoi(v)
		q := got[name]
		ok := len(q) == n
		for i := 0; ok && i < n; i++ {
			ok = q[i] == int64(i+1)
		}
		if !ok {
			t.Errorf("subject %s: %d changes committed, handled versions %v", name, n, q)
		}
	}
}
