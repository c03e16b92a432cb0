package feed_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	knats "github.com/krules-go/krules/transport/nats"
)

// writeSubjects makes perSubject committed changes on each of n subjects
// from 8 goroutines: NoCache Sets, built-in Inc, and cached Sets committed
// by Store (two properties per Store), so every kind of write is relayed.
func writeSubjects(t testing.TB, app *krules.App, n int) (perSubject int) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			ctx := context.Background()
			for i := g; i < n; i += 8 {
				s := app.Subject(fmt.Sprintf("subj-%03d", i))
				for k := 0; k < 3; k++ {
					if _, _, err := s.Set(ctx, "v", k+1, krules.NoCache(), krules.WithExtra(krules.Extra{"k": k})); err != nil {
						errs <- err
						return
					}
				}
				for k := 0; k < 2; k++ {
					if _, _, err := s.Set(ctx, "count", krules.Inc(1), krules.NoCache()); err != nil {
						errs <- err
						return
					}
				}
				_, _, _ = s.Set(ctx, "a", "x")
				_, _, _ = s.Set(ctx, "b", "y")
				if err := s.Store(ctx); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return 3 + 2 + 2
}

// TestRelayOrder: a writer App on Redis / PostgreSQL in feed mode, two
// relays (one active, one standby) and a worker group of two workers in
// this process; every change of 200 subjects reaches the handlers, each
// subject's versions strictly increasing without a gap. The stores run in
// parallel (each its own stream, key prefix, table or file).
func TestRelayOrder(t *testing.T) {
	t.Parallel()
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) { t.Parallel(); testRelayOrder(t, bk.open(t)) })
	}
}

func testRelayOrder(t *testing.T, b feedBackend) {
	js := connect(t)
	stream := newStream(t, js)
	const subjects = 200
	const per = 7
	s := newSeen(subjects * per)
	for i := 0; i < 2; i++ {
		wapp := krules.New()
		wapp.On(krules.PropertyChanged).Do(s.handler)
		startWorker(t, js, wapp, knats.WorkerConfig{Stream: stream})
	}
	r1, _ := startRelay(t, b, js, feed.RelayConfig{Stream: stream, LeaseTTL: 3 * time.Second})
	r2, _ := startRelay(t, b, js, feed.RelayConfig{Stream: stream, LeaseTTL: 3 * time.Second})

	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	writer := krules.New(krules.WithStorage(b), krules.WithChangeFeed(krules.FeedConfig{
		Policy: krules.FeedRemote,
		Trace:  func(context.Context) (string, string) { return tp, "k=v" },
	}))
	local := 0
	writer.On(krules.PropertyChanged).Do(func(context.Context, *krules.Event) error { local++; return nil })
	if got := writeSubjects(t, writer, subjects); got != per {
		t.Fatalf("per = %d", got)
	}
	s.wait(t, time.Minute)
	s.checkOrder(t, per)
	if local != 0 {
		t.Errorf("FeedRemote: the writer's handler ran %d times", local)
	}
	if s.trace != tp+"|k=v" {
		t.Errorf("trace context at the worker %q, want %q", s.trace, tp+"|k=v")
	}
	if e := s.extra["subj-007/v"]; e == nil || fmt.Sprint(e["k"]) != "2" {
		t.Errorf("Extra of the last Set of v: %v", e)
	}
	// The relay removes the records just after JetStream's ack, which may
	// come after the workers handled them. A lease handover (a slow
	// machine) may make both relays publish some records: JetStream drops
	// the copies (Nats-Msg-Id), so handlers still saw each change once.
	st1, st2 := r1.Stats(), r2.Stats()
	for end := time.Now().Add(10 * time.Second); st1.Published+st2.Published < subjects*per && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		st1, st2 = r1.Stats(), r2.Stats()
	}
	if st1.Published+st2.Published < subjects*per {
		t.Errorf("relays published %d + %d records, want %d", st1.Published, st2.Published, subjects*per)
	}
	if r1.Active() && r2.Active() {
		t.Errorf("both relays active")
	}
}
