package nats_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/internal/testenv"
	knats "github.com/krules-go/krules/transport/nats"
)

func connect(t testing.TB) (*natsgo.Conn, jetstream.JetStream) {
	t.Helper()
	url := testenv.NATSURL(t)
	nc, err := knats.Connect(url, natsgo.RetryOnFailedConnect(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// newStream creates a stream with a unique name, deleted at cleanup.
func newStream(t testing.TB, js jetstream.JetStream, partitions int) string {
	t.Helper()
	return newStreamRetention(t, js, partitions, knats.RetentionInterest)
}

// newLogStream is newStream with RetentionLimits: for tests that count the
// messages of a stream nobody consumes.
func newLogStream(t testing.TB, js jetstream.JetStream, partitions int) string {
	t.Helper()
	return newStreamRetention(t, js, partitions, knats.RetentionLimits)
}

func newStreamRetention(t testing.TB, js jetstream.JetStream, partitions int, r knats.Retention) string {
	t.Helper()
	name := testenv.Unique("krtest")
	ctx := context.Background()
	if _, err := knats.EnsureStream(ctx, js, knats.StreamConfig{Name: name, Partitions: partitions, Retention: r}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deleteLeaseBuckets(t, js, name)
		for _, s := range []string{name, knats.DeadLetterStream(name)} {
			if err := js.DeleteStream(context.Background(), s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	return name
}

// startWorker runs w until the test ends; stop() cancels it and returns
// Run's error.
func startWorker(t testing.TB, w *knats.Worker) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(time.Minute):
				err = errors.New("worker did not stop within a minute")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func newWorker(t testing.TB, js jetstream.JetStream, app *krules.App, cfg knats.WorkerConfig) *knats.Worker {
	t.Helper()
	w, err := knats.NewWorker(context.Background(), js, app, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// record is what a test handler saw.
type record struct {
	subject string
	seq     int64
	id      string
	meta    map[string]any
	deliv   uint64
}

// recorder collects records and signals when n have arrived.
type recorder struct {
	mu   sync.Mutex
	recs []record
	want int
	done chan struct{}
}

func newRecorder(want int) *recorder { return &recorder{want: want, done: make(chan struct{})} }

func (r *recorder) add(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	if len(r.recs) == r.want {
		close(r.done)
	}
}

func (r *recorder) all() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]record(nil), r.recs...)
}

func (r *recorder) wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(d):
		t.Fatalf("timed out: %d of %d events handled", len(r.all()), r.want)
	}
}

func seqOf(ev *krules.Event) int64 {
	s, _ := ev.Payload()["seq"].(int64)
	return s
}

// drainQueue waits until every consumer of the stream has nothing pending
// or unacknowledged.
func waitIdle(t testing.TB, js jetstream.JetStream, stream string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		rem, err := remaining(context.Background(), js, stream)
		if err == nil && rem == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s not idle after %s: %d remaining (%v)", stream, d, rem, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// remaining returns how many events of the stream's worker consumers are
// not yet delivered or not yet acked.
func remaining(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	total := 0
	l := s.ListConsumers(ctx)
	for info := range l.Info() {
		total += int(info.NumPending) + info.NumAckPending
	}
	return total, l.Err()
}

// deadLetters reads the stream's dead-letter subject until n messages came.
func deadLetters(t testing.TB, js jetstream.JetStream, stream string, n int) []jetstream.Msg {
	t.Helper()
	ctx := context.Background()
	c, err := js.OrderedConsumer(ctx, knats.DeadLetterStream(stream), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		b, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range b.Messages() {
			out = append(out, m)
			got++
		}
		if got == 0 {
			t.Fatalf("%d of %d dead letters arrived (%v)", len(out), n, b.Error())
		}
	}
	return out
}

type (
	natsOptions = natsgo.Options
	natsConn    = natsgo.Conn
)

// deleteLeaseBuckets deletes the lease buckets of every group of a stream.
func deleteLeaseBuckets(t testing.TB, js jetstream.JetStream, stream string) {
	ctx := context.Background()
	prefix := "KV_" + knats.LeaseBucket(stream, "")
	names := js.StreamNames(ctx)
	var buckets []string
	for n := range names.Name() {
		if strings.HasPrefix(n, prefix) {
			buckets = append(buckets, strings.TrimPrefix(n, "KV_"))
		}
	}
	for _, b := range buckets {
		if err := js.DeleteKeyValue(ctx, b); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Errorf("delete lease bucket %s: %v", b, err)
		}
	}
}
