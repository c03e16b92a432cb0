package nats

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/krules-go/krules/internal/testenv"
)

func internalJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := natsgo.Connect(testenv.NATSURL(t), natsgo.RetryOnFailedConnect(false))
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

// TestLeaseBucketConcurrentCreates: workers starting together each open the
// group's lease bucket, which none of them finds: every create in flight at
// once must end with the bucket (ErrBucketExists, a name in use or, as
// seen once under load, "subjects overlap" from the server are all "the
// other worker made it").
func TestLeaseBucketConcurrentCreates(t *testing.T) {
	conns := make([]jetstream.JetStream, 8) // one connection per worker, as processes
	for i := range conns {
		conns[i] = internalJS(t)
	}
	js := conns[0]
	ctx := context.Background()
	for round := range 10 {
		stream := testenv.Unique("krlb")
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, errs[i] = ensureLeaseBucket(ctx, conns[i], stream, "g", 5*time.Second, 1)
			}()
		}
		wg.Wait()
		_ = js.DeleteKeyValue(ctx, LeaseBucket(stream, "g"))
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, worker %d: %v", round, i, err)
			}
		}
	}
}

// TestLeaseBucketForeignOverlap: a stream of someone else's that captures
// the bucket's subjects is not taken for the bucket: the create's overlap
// error is returned.
func TestLeaseBucketForeignOverlap(t *testing.T) {
	js := internalJS(t)
	ctx := context.Background()
	stream := testenv.Unique("krlb")
	bucket := LeaseBucket(stream, "g")
	foreign := testenv.Unique("krforeign")
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: foreign, Subjects: []string{"$KV." + bucket + ".>"}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), foreign) })
	_, _, err := ensureLeaseBucket(ctx, js, stream, "g", 5*time.Second, 1)
	if !isSubjectOverlap(err) {
		t.Fatalf("err = %v, want the subjects-overlap API error", err)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("err = %v: the lookup's error replaced the create's", err)
	}
}
