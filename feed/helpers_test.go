package feed_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/internal/testenv"
	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	knats "github.com/krules-go/krules/transport/nats"
)

func connect(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := knats.Connect(testenv.NATSURL(t), natsgo.RetryOnFailedConnect(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func newStream(t testing.TB, js jetstream.JetStream) string {
	t.Helper()
	name := testenv.Unique("krfeed")
	if _, err := knats.EnsureStream(context.Background(), js, knats.StreamConfig{Name: name, Partitions: 16}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range []string{name, knats.DeadLetterStream(name)} {
			if err := js.DeleteStream(context.Background(), s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	return name
}

// openRedis opens a Redis backend in feed mode with a unique prefix; its
// subject and feed keys are removed at the end.
func openRedis(t testing.TB, prefix string) *redis.Backend {
	t.Helper()
	if prefix == "" {
		prefix = testenv.Unique("krfeed") + ":"
	}
	b, err := redis.Open(context.Background(), testenv.RedisURL(t), redis.Config{Prefix: prefix, ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		c := b.Client()
		it := c.Scan(ctx, 0, "s:"+prefix+"*", 1000).Iterator()
		for it.Next(ctx) {
			c.Del(ctx, it.Val())
		}
		c.Del(ctx, "f:"+prefix+"changes", "f:"+prefix+"seq", "f:"+prefix+"lease")
		b.Close()
	})
	return b
}

func startRelay(t testing.TB, store storage.FeedStore, js jetstream.JetStream, cfg feed.RelayConfig) (*feed.Relay, func()) {
	t.Helper()
	r, err := feed.NewRelay(context.Background(), store, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return r, stop
}

func startWorker(t testing.TB, js jetstream.JetStream, app *krules.App, cfg knats.WorkerConfig) {
	t.Helper()
	w, err := knats.NewWorker(context.Background(), js, app, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// seen collects, per subject, the versions a worker-side handler saw.
type seen struct {
	mu    sync.Mutex
	seqs  map[string][]int64
	n     int
	want  int
	done  chan struct{}
	extra map[string]krules.Extra
	depth map[string]int
	trace string // traceparent|tracestate metadata of the last event
}

func newSeen(want int) *seen {
	return &seen{seqs: map[string][]int64{}, want: want, done: make(chan struct{}), extra: map[string]krules.Extra{}, depth: map[string]int{}}
}

func (s *seen) handler(ctx context.Context, ev *krules.Event) error {
	v, _ := ev.Meta(knats.MetaChangeSeq)
	q, _ := v.(int64)
	s.mu.Lock()
	defer s.mu.Unlock()
	name := ev.Subject.Name()
	s.seqs[name] = append(s.seqs[name], q)
	if ev.Extra != nil {
		s.extra[name+"/"+ev.PropertyName] = ev.Extra
	}
	s.depth[name+"/"+ev.PropertyName] = krules.CascadeDepth(ctx)
	tp, _ := ev.Meta("traceparent")
	ts, _ := ev.Meta("tracestate")
	s.trace = fmt.Sprint(tp, "|", ts)
	s.n++
	if s.n == s.want {
		close(s.done)
	}
	return nil
}

func (s *seen) wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(d):
		s.mu.Lock()
		defer s.mu.Unlock()
		t.Fatalf("timed out: %d of %d changes handled", s.n, s.want)
	}
}

// checkOrder asserts that every subject's versions are 1, 2, ..., n.
func (s *seen) checkOrder(t testing.TB, perSubject int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, qs := range s.seqs {
		if len(qs) != perSubject {
			t.Errorf("subject %s: %d changes handled, want %d (%v)", name, len(qs), perSubject, qs)
			continue
		}
		for i, q := range qs {
			if q != int64(i+1) {
				t.Errorf("subject %s: versions %v, want 1..%d in order", name, qs, perSubject)
				break
			}
		}
	}
}

// openPostgres opens a PostgreSQL backend in feed mode on tables of its
// own (table "" : a new unique one), dropped at the end.
func openPostgres(t testing.TB, table string) *postgres.Backend {
	t.Helper()
	if table == "" {
		table = testenv.Unique("krfeed")
	}
	b, err := postgres.Open(context.Background(), testenv.PostgresURL(t), postgres.Config{Table: table, ChangeFeed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		for _, n := range []string{table, table + "_feed", table + "_feed_seq"} {
			_, _ = b.Pool().Exec(ctx, `DROP TABLE IF EXISTS "`+n+`"`)
		}
		b.Close()
	})
	return b
}

// feedBackend is a backend with a change feed.
type feedBackend interface {
	storage.Backend
	storage.FeedStore
}

// backends are the stores the relay tests run on (bolt: the relays run in
// the writer's process, the only one that can open the file).
var backends = []struct {
	name string
	open func(testing.TB) feedBackend
}{
	{"redis", func(t testing.TB) feedBackend { return openRedis(t, "") }},
	{"postgres", func(t testing.TB) feedBackend { return openPostgres(t, "") }},
	{"bolt", func(t testing.TB) feedBackend { return openBolt(t) }},
}

// openBolt opens a bolt file in feed mode (NoSync: these tests check the
// relay, not durability; TestCrash uses durable files).
func openBolt(t testing.TB) *bolt.Backend {
	t.Helper()
	b, err := bolt.Open(filepath.Join(t.TempDir(), "feed.db"), bolt.Config{ChangeFeed: true, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func jetstreamOrdered() jetstream.OrderedConsumerConfig { return jetstream.OrderedConsumerConfig{} }

func fetchWait(d time.Duration) jetstream.FetchOpt { return jetstream.FetchMaxWait(d) }

// watchPublished subscribes to the stream's partition subjects and returns
// a function that gives a copy of what was published so far, as
// "subject/value" in publish order.
func watchPublished(t *testing.T, js jetstream.JetStream, stream string) func() []string {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	sub, err := js.Conn().Subscribe(stream+".p.*", func(m *natsgo.Msg) {
		var ce struct {
			Subject string         `json:"subject"`
			Data    map[string]any `json:"data"`
		}
		if err := json.Unmarshal(m.Data, &ce); err != nil {
			t.Errorf("published message: %v", err)
			return
		}
		mu.Lock()
		seen = append(seen, ce.Subject+"/"+jsonText(ce.Data["value"]))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}
