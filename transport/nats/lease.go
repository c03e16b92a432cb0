package nats

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LeaseBucket returns the name of the NATS KV bucket in which the workers of
// a group keep their membership and partition leases: "<stream>_leases_<group>"
// (TTL = the group's AckWait). NewWorker creates it; it is not deleted with
// the stream.
func LeaseBucket(stream, group string) string { return stream + "_leases_" + group }

const (
	memberPrefix = "m."
	leasePrefix  = "p."
	// leaseFree is the value of a lease released cleanly: nothing of the
	// partition is held by anyone (every event it had received was acked,
	// or handed back with a nak in stream order), so the next owner may
	// pull at once.
	leaseFree = "free"
)

// partitionMaxAckPending is the MaxAckPending of a partition's consumer: how
// many events of the partition its owner may hold unacknowledged.
const partitionMaxAckPending = 1000

// fetchBatch is how many events an owner asks for per pull.
const fetchBatch = 128

// maxHeld is how many received and not yet acked events an owner holds per
// partition before it stops taking more from its pull (while it is not
// holding the partition for a gap or a takeover: then it must receive
// everything the server has out). The server keeps a consumer's
// unacknowledged events in its state file and rewrites it up to 10 times
// a second: the fewer, the cheaper. A subject stuck on a failing event
// holds its later events in its lane; once maxHeld are held, the other
// subjects of the partition wait too. With 256 (and fetchBatch 128) the
// server spent ~30% less CPU per event than with the 1000 of
// MaxAckPending in the 3-worker bench, at the same throughput.
const maxHeld = 256

// resumeHeld: an owner that stopped taking events at maxHeld takes more once
// it holds resumeHeld or fewer (then a batch of them in a row, rather than
// one wake-up per finished event).
const resumeHeld = maxHeld - fetchBatch/2

func newMemberID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, host)
	if len(host) > 32 {
		host = host[:32]
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// jsErrSubjectOverlap is the JetStream API error code of a stream create
// whose subjects overlap an existing stream's (nats.go names no constant).
const jsErrSubjectOverlap jetstream.ErrorCode = 10065

func isSubjectOverlap(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrSubjectOverlap
}

// ensureLeaseBucket opens (or creates) the group's lease bucket and checks
// its TTL.
func ensureLeaseBucket(ctx context.Context, js jetstream.JetStream, stream, group string, ttl time.Duration, replicas int) (jetstream.KeyValue, time.Time, error) {
	name := LeaseBucket(stream, group)
	desc := fmt.Sprintf("krules-go leases of stream %s, group %s", stream, group)
	kv, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, Description: desc, History: 1, TTL: ttl,
			Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
		})
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			kv, err = js.KeyValue(ctx, name)
		} else if isSubjectOverlap(err) {
			// Another worker's create of the same bucket was in flight (seen
			// once in TestEndToEndThreeWorkerProcesses on a loaded machine):
			// look again. A stream of someone else's that overlaps the
			// bucket's subjects keeps the create's error.
			if again, aerr := js.KeyValue(ctx, name); aerr == nil {
				kv, err = again, nil
			}
		}
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("lease bucket %s: %w", name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("lease bucket %s: %w", name, err)
	}
	if st.TTL() != ttl {
		return nil, time.Time{}, fmt.Errorf("%w: lease bucket %s has TTL %s (this worker's AckWait: %s)", ErrConsumerMismatch, name, st.TTL(), ttl)
	}
	si, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("lease bucket %s: unexpected status %T", name, st)
	}
	if si.StreamInfo().Config.Description != desc {
		return nil, time.Time{}, fmt.Errorf("%w: bucket %s is not the lease bucket of stream %s, group %s", ErrConsumerMismatch, name, stream, group)
	}
	return kv, si.StreamInfo().Created, nil
}

// assign picks the member that should own each of n partitions: every
// member gets n/len(members) partitions, rounded up or down (a fair share,
// which plain rendezvous hashing does not guarantee: with 4 partitions and
// 2 members it gives one member all 4 one time in 8). Partition k goes to
// the member with the highest rendezvous score for k that still has room,
// so the result depends only on the set of members, not their order, and a
// join or leave moves few partitions.
func assign(members []string, n int) []string {
	out := make([]string, n)
	if len(members) == 0 {
		return out
	}
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	room := make(map[string]int, len(ms))
	base, extra := n/len(ms), n%len(ms)
	for _, m := range ms {
		room[m] = base
	}
	// The members that get one more: the extra best by score over all
	// partitions, so which ones does not depend on the order either.
	if extra > 0 {
		type ranked struct {
			m string
			h uint64
		}
		rs := make([]ranked, len(ms))
		for i, m := range ms {
			rs[i] = ranked{m, score(m, -1)}
		}
		slices.SortFunc(rs, func(a, b ranked) int {
			if a.h != b.h {
				return cmp.Compare(b.h, a.h)
			}
			return strings.Compare(a.m, b.m)
		})
		for _, r := range rs[:extra] {
			room[r.m]++
		}
	}
	for k := range n {
		best, bestH := "", uint64(0)
		for _, m := range ms {
			if room[m] == 0 {
				continue
			}
			if h := score(m, k); best == "" || h > bestH || (h == bestH && m < best) {
				best, bestH = m, h
			}
		}
		out[k] = best
		room[best]--
	}
	return out
}

// score is the rendezvous hash of member m and partition k.
func score(m string, k int) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(m))
	_, _ = h.Write([]byte{'/'})
	_, _ = h.Write([]byte(strconv.Itoa(k)))
	return mix64(h.Sum64())
}

// mix64 is the splitmix64 finalizer: FNV alone orders ids that differ only
// in their last bytes badly.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// partition is a partition this worker holds the lease of.
type partition struct {
	k     int
	key   string
	c     jetstream.Consumer
	hctx  context.Context // the handlers' context
	epoch uint64          // the lease's revision when acquired: grows with every new owner
	dbg   *partDebug      // the stall watchdog's state (EnvDebug), else nil
	pulls atomic.Uint64   // +1 before and after every Next of the pull: odd while waiting in it

	kvMu     sync.Mutex // serialises the lease's KV writes (renew, release)
	rev      uint64     // revision of our last lease write
	released bool

	validUntil atomic.Int64  // monotonic nanos (since Worker.t0) until which the lease is surely ours
	lost       atomic.Bool   // fenced: lease lost (or given up at the shutdown deadline); set by fence
	lostCh     chan struct{} // closed by fence
	lostOnce   sync.Once

	stop     chan struct{} // closed: stop pulling, drain, hand back, release
	stopOnce sync.Once
	done     chan struct{} // closed when the partition is finished

	mu    sync.Mutex
	held  map[uint64]*item // every event received and not yet acked, by stream sequence
	gated bool             // events go to gate, not to lanes, until openGate
	gate  []*item
	dseq  uint64 // consumer (delivery) sequence of the last delivery received
	rseq  uint64 // consumer sequence of the last delivery dispatch finished with (held, replaced or dropped)
	lanes map[string]*lane
	wg    sync.WaitGroup // lanes
	room  chan struct{}  // a lane finished an event (waitRoom), capacity 1
	gates chan struct{}  // the partition was gated (a delivery gap): wakes watchGate, capacity 1

	// The stream sequences of the events this owner finished last (acked,
	// dead-lettered, duplicates): a delivery of one of them is a copy the
	// server sent before it had our ack, dropped by dispatch. finRing holds
	// them in finishing order (finKeep at most), fin is its set.
	fin     map[uint64]struct{}
	finRing []uint64
	finNext int
}

// finKeep is how many finished sequences a partition remembers: twice the
// consumer's MaxAckPending, the most events that can be out (delivered and
// not acked at the server) besides the copy of a finished one.
const finKeep = 2 * partitionMaxAckPending

// finishedLocked records that the event of stream sequence seq is finished.
// p.mu is held.
func (p *partition) finishedLocked(seq uint64) {
	if p.fin == nil {
		p.fin = make(map[uint64]struct{}, finKeep)
		p.finRing = make([]uint64, 0, finKeep)
	}
	if len(p.finRing) < finKeep {
		p.finRing = append(p.finRing, seq)
	} else {
		delete(p.fin, p.finRing[p.finNext])
		p.finRing[p.finNext] = seq
		p.finNext = (p.finNext + 1) % finKeep
	}
	p.fin[seq] = struct{}{}
}

func (p *partition) requestStop() { p.stopOnce.Do(func() { close(p.stop) }) }

// fence marks the lease as lost (or given up): the worker acts on nothing
// of the partition any more, and its pull stops.
func (p *partition) fence() {
	p.lost.Store(true)
	p.lostOnce.Do(func() { close(p.lostCh) })
}

func (p *partition) stopping() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// valid reports whether the worker may act (ack, commit, start a handler)
// for the partition, waiting while the lease is in doubt: past its validity
// (a renewal is late) the worker does nothing until a renewal tells — it
// succeeded (the key never expired, so nobody else took the partition: go
// on) or found the lease changed (lost for good: false). It also returns
// false once the handlers' context is cancelled (shutdown deadline).
func (w *Worker) valid(p *partition) bool {
	for {
		if p.lost.Load() {
			return false
		}
		if w.mono() < p.validUntil.Load() {
			return true
		}
		if p.hctx == nil || p.hctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *Worker) mono() int64 { return int64(time.Since(w.t0)) }

// leaseGuard is the part of the TTL a lease holder does not count on: it
// stops acting that long before the server can expire its lease.
func (w *Worker) leaseGuard() time.Duration { return w.cfg.AckWait / 5 }

// coordinate keeps this worker's membership and leases and runs the
// partitions it owns, until ctx is cancelled; then it stops them
// (gracefully, then forced at the deadline) and leaves the group.
func (w *Worker) coordinate(ctx, hctx context.Context, forced <-chan struct{}, fatal func(error)) {
	owned := map[int]*partition{}
	trigger := make(chan struct{}, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if watcher, err := w.kv.Watch(wctx, ">", jetstream.UpdatesOnly()); err == nil {
		go func() {
			defer func() { _ = watcher.Stop() }()
			for {
				select {
				case <-wctx.Done():
					return
				case e, ok := <-watcher.Updates():
					if !ok {
						return
					}
					if e == nil {
						continue
					}
					if strings.HasPrefix(e.Key(), memberPrefix) || e.Operation() != jetstream.KeyValuePut || string(e.Value()) == leaseFree {
						select {
						case trigger <- struct{}{}:
						default:
						}
					}
				}
			}
		}()
	} else {
		w.log.Warn("krules/nats: lease watch failed; rebalancing on the timer only", "error", err)
	}
	tick := time.NewTicker(w.cfg.AckWait / 3)
	defer tick.Stop()
	memberKey := memberPrefix + w.id
	w.renewMember(ctx, memberKey)
	for {
		for k, p := range owned {
			select {
			case <-p.done:
				delete(owned, k)
			default:
			}
		}
		if ctx.Err() == nil {
			w.rebalance(ctx, hctx, owned, forced, fatal)
		}
		w.setOwned(owned)
		select {
		case <-ctx.Done():
			w.shutdown(owned, forced)
			w.setOwned(nil)
			dctx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait)
			_ = w.kv.Delete(dctx, memberKey)
			cancel()
			return
		case <-tick.C:
		case <-trigger:
		}
	}
}

func (w *Worker) setOwned(owned map[int]*partition) {
	ks := make([]int, 0, len(owned))
	for k, p := range owned {
		if !p.stopping() && !p.lost.Load() {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	w.ownedMu.Lock()
	w.owned = ks
	w.ownedMu.Unlock()
}

func (w *Worker) renewMember(ctx context.Context, key string) {
	if ctx.Err() != nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, w.cfg.AckWait/3)
	defer cancel()
	if _, err := w.kv.Put(rctx, key, []byte(w.id)); err != nil {
		w.log.Warn("krules/nats: membership renewal failed", "stream", w.cfg.Stream, "group", w.cfg.Group, "error", err)
	}
}

// renewLeases extends the leases of the owned partitions (also of those
// still draining). A lease found changed is lost: the partition is fenced.
func (w *Worker) renewLeases(ctx context.Context, owned []*partition) {
	var wg sync.WaitGroup
	for _, p := range owned {
		if p.lost.Load() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.renewLease(ctx, p)
		}()
	}
	wg.Wait()
}

func (w *Worker) renewLease(ctx context.Context, p *partition) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.AckWait/3)
	defer cancel()
	p.kvMu.Lock()
	defer p.kvMu.Unlock()
	if p.released {
		return
	}
	sent := w.mono()
	rev, err := w.kv.Update(rctx, p.key, []byte(w.id), p.rev)
	if errors.Is(err, jetstream.ErrKeyExists) {
		// An earlier renewal may have been applied after we gave up
		// waiting for it: the key still holds our id (nobody else writes
		// it) under a newer revision. Then it is still ours.
		if e, gerr := w.kv.Get(rctx, p.key); gerr == nil && string(e.Value()) == w.id && e.Revision() > p.rev {
			p.rev = e.Revision()
			sent = w.mono()
			rev, err = w.kv.Update(rctx, p.key, []byte(w.id), p.rev)
		}
	}
	switch {
	case err == nil:
		p.rev = rev
		p.validUntil.Store(sent + int64(w.cfg.AckWait-w.leaseGuard()))
	case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound):
		p.fence()
		w.log.Warn("krules/nats: partition lease lost", "stream", w.cfg.Stream, "partition", p.k, "error", err)
	default:
		w.log.Warn("krules/nats: partition lease renewal failed", "stream", w.cfg.Stream, "partition", p.k, "error", err)
	}
}

// rebalance computes this worker's fair share from the live members, starts
// releasing what is no longer its share and tries to take what is.
func (w *Worker) rebalance(ctx, hctx context.Context, owned map[int]*partition, forced <-chan struct{}, fatal func(error)) {
	lctx, cancel := context.WithTimeout(ctx, w.cfg.AckWait/3)
	defer cancel()
	// ListKeys, not ListKeysFiltered: filtered listing needs a 2.10 server.
	lister, err := w.kv.ListKeys(lctx)
	if err != nil {
		w.log.Warn("krules/nats: listing members failed", "error", err)
		return
	}
	members := []string{w.id}
	for k := range lister.Keys() {
		if id, ok := strings.CutPrefix(k, memberPrefix); ok && id != w.id {
			members = append(members, id)
		}
	}
	var mu sync.Mutex // guards got
	var got []*partition
	var wg sync.WaitGroup
	owners := assign(members, w.parts)
	for k := range w.parts {
		mine := owners[k] == w.id
		p, have := owned[k]
		switch {
		case have && !mine:
			p.requestStop()
		case !have && mine:
			wg.Add(1)
			go func() {
				defer wg.Done()
				actx, cancel := context.WithTimeout(ctx, w.cfg.AckWait/3)
				defer cancel()
				if np := w.acquire(actx, k); np != nil {
					np.hctx = hctx
					mu.Lock()
					got = append(got, np)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	for _, np := range got {
		owned[np.k] = np
		go w.runPartition(hctx, np, forced, fatal)
	}
}

// acquire takes the lease of partition k if it is free (released or
// expired) and returns the partition, or nil.
func (w *Worker) acquire(ctx context.Context, k int) *partition {
	key := leasePrefix + strconv.Itoa(k)
	sent := w.mono()
	var rev uint64
	e, err := w.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		rev, err = w.kv.Create(ctx, key, []byte(w.id))
	case err != nil:
	case string(e.Value()) == leaseFree:
		rev, err = w.kv.Update(ctx, key, []byte(w.id), e.Revision())
	default:
		return nil // held by another member until it releases it or it expires
	}
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			w.log.Warn("krules/nats: taking a partition lease failed", "partition", k, "error", err)
		}
		return nil
	}
	p := &partition{
		k: k, key: key, c: w.consum[k], epoch: rev, rev: rev,
		stop: make(chan struct{}), done: make(chan struct{}), lostCh: make(chan struct{}),
		held: map[uint64]*item{}, lanes: map[string]*lane{}, gated: true,
		room: make(chan struct{}, 1), gates: make(chan struct{}, 1),
	}
	p.validUntil.Store(sent + int64(w.cfg.AckWait-w.leaseGuard()))
	if w.debug {
		p.dbg = &partDebug{start: time.Now()}
	}
	return p
}

// shutdown stops every owned partition and waits for them: up to
// ShutdownTimeout for a graceful drain, then (forced is closed by Run) up
// to ShutdownGrace.
func (w *Worker) shutdown(owned map[int]*partition, forced <-chan struct{}) {
	for _, p := range owned {
		p.requestStop()
	}
	// renewLoop keeps renewing the leases while the partitions drain.
	for _, p := range owned {
		select {
		case <-p.done:
		case <-w.abandon:
			return // Run returned without us
		}
	}
}

// renewLoop renews the membership (until ctx is cancelled) and the leases
// of the running partitions every AckWait/3, on its own so that slow
// rebalancing never delays a renewal, until stop is closed.
func (w *Worker) renewLoop(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(w.cfg.AckWait / 3)
	defer t.Stop()
	memberKey := memberPrefix + w.id
	var ps []*partition
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if ctx.Err() == nil {
			go w.renewMember(ctx, memberKey)
		}
		ps = ps[:0]
		w.pmu.Lock()
		for p := range w.active {
			ps = append(ps, p)
		}
		w.pmu.Unlock()
		w.renewLeases(ctx, ps)
	}
}

// runPartition pulls the partition while the lease is ours, feeds the lanes,
// and at the end drains them, hands back what was not done and releases the
// lease.
func (w *Worker) runPartition(hctx context.Context, p *partition, forced <-chan struct{}, fatal func(error)) {
	defer close(p.done)
	w.pmu.Lock()
	w.active[p] = struct{}{}
	w.pmu.Unlock()
	defer func() {
		w.pmu.Lock()
		delete(w.active, p)
		w.pmu.Unlock()
	}()
	if p.dbg != nil {
		dogDone := make(chan struct{})
		defer close(dogDone)
		go w.watchdog(p, dogDone)
	}
	if w.waitQuiet(p) {
		if p.dbg != nil {
			p.dbg.quiet.Store(time.Now().UnixNano())
		}
		w.pull(p, fatal)
	}
	// Drain: lanes finish (or, on stop, give up what waits for a retry).
	drained := make(chan struct{})
	go func() { p.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-forced:
		select {
		case <-drained:
		case <-time.After(ShutdownGrace / 2):
		}
	}
	if !w.valid(p) {
		return // someone else may own it: touch nothing
	}
	// Fence the lanes that did not finish; wait until our pull requests are
	// gone, then hand the events not done back in stream order, so that
	// the next owner gets them first, in order.
	p.fence()
	w.waitNoPull(p, time.Now().Add(w.pullExpiry()+time.Second))
	p.mu.Lock()
	var rest []*item
	for _, it := range p.held {
		rest = append(rest, it)
	}
	p.mu.Unlock()
	slices.SortFunc(rest, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	clean := w.nakInOrder(rest)
	if nc := w.js.Conn(); nc != nil {
		_ = nc.FlushTimeout(w.cfg.AckWait / 3)
	}
	// Clean only if the server holds nothing else of the partition as
	// delivered (an event sent to a pull request we had already given up
	// would be): then the next owner may pull at once.
	clean = clean && w.waitPending(p, len(rest), time.Now().Add(time.Second))
	rctx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait/3)
	defer cancel()
	p.kvMu.Lock()
	defer p.kvMu.Unlock()
	var err error
	if clean {
		_, err = w.kv.Update(rctx, p.key, []byte(leaseFree), p.rev)
	} else {
		// Released, but the next owner waits until the server redelivers.
		err = w.kv.Delete(rctx, p.key, jetstream.LastRevision(p.rev))
	}
	if err != nil {
		w.log.Warn("krules/nats: releasing a partition lease failed; it expires after AckWait", "partition", p.k, "error", err)
	}
	p.released = true
}

// waitNoPull waits (until deadline) until no pull request of the
// partition's consumer is waiting at the server.
func (w *Worker) waitNoPull(p *partition, deadline time.Time) {
	for time.Now().Before(deadline) {
		ictx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait/3)
		info, err := p.c.Info(ictx)
		cancel()
		if err == nil && info.NumWaiting == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPending waits (until deadline) until the consumer has at most n
// events delivered and unacknowledged, and reports whether it got there.
func (w *Worker) waitPending(p *partition, n int, deadline time.Time) bool {
	for {
		ictx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait/3)
		info, err := p.c.Info(ictx)
		cancel()
		if err == nil && info.NumAckPending <= n && info.NumWaiting == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nakInOrder hands events back (nak, no delay) in the given order; the last
// nak is confirmed by the server, which processes the naks of one
// connection in order, so on true all of them are queued for redelivery.
func (w *Worker) nakInOrder(items []*item) bool {
	if len(items) == 0 {
		return true
	}
	nc := w.js.Conn()
	for i, it := range items {
		if i == len(items)-1 && nc != nil && it.m.Reply() != "" {
			if _, err := nc.Request(it.m.Reply(), []byte("-NAK"), w.cfg.AckWait/3); err != nil {
				w.log.Warn("krules/nats: nak not confirmed", "error", err)
				return false
			}
			return true
		}
		if err := it.m.Nak(); err != nil {
			return false
		}
	}
	return true
}

// waitQuiet waits, before the first pull, until no pull request of the
// partition is waiting at the server (a previous owner's could still
// receive events).
func (w *Worker) waitQuiet(p *partition) bool {
	for {
		if p.stopping() || !w.valid(p) {
			return false
		}
		ictx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait/3)
		info, err := p.c.Info(ictx)
		cancel()
		if err == nil && info.NumWaiting == 0 {
			return true
		}
		select {
		case <-p.stop:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// watchGate opens the partition's gate (openGate) as soon as the server
// counts no more events of the partition delivered and unacknowledged than
// this worker holds (allInHand): then whatever a previous owner had left
// (acked late, handed back, or expired and redelivered) is settled or in
// our hands, and sorting by stream sequence restores the order. It asks the
// server every 50 ms while the partition is gated, and sleeps (no timer)
// while it is not, until dispatch gates it again (p.gates).
func (w *Worker) watchGate(p *partition, done <-chan struct{}) {
	for {
		p.mu.Lock()
		gated := p.gated
		p.mu.Unlock()
		var t *time.Timer
		var tick <-chan time.Time
		if gated {
			ictx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait/3)
			info, err := p.c.Info(ictx)
			cancel()
			if err == nil && w.allInHand(p, info) {
				w.openGate(p)
			} else {
				t = time.NewTimer(50 * time.Millisecond)
				tick = t.C
			}
		}
		select {
		case <-done:
			return
		case <-p.stop:
			return
		case <-tick:
		case <-p.gates:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// allInHand reports whether every event the consumer counted as delivered
// and unacknowledged (info, asked at time T) is held by this owner.
//
// It counts the held events that were first delivered up to the server's
// last delivery at T (info.Delivered.Consumer) and whose ack was not sent
// (item.acked): each of them was delivered and unacknowledged at T, so the
// server's count includes it; if the server's count is not above theirs,
// it is exactly them and nothing of the partition is elsewhere. An event
// whose ack was sent is left out (the server may or may not have had the
// ack at T), and so is a delivery made after T: counting either could hide
// one that went to another pull. Deliveries the server had made by T may
// still be on their way to us (a burst during a takeover): allInHand waits
// up to gateSettle for dispatch to be through the last of them before it
// reports false. A delivery that went to another pull never arrives; then
// the count stays short and it reports false.
func (w *Worker) allInHand(p *partition, info *jetstream.ConsumerInfo) bool {
	d := info.Delivered.Consumer
	deadline := time.Now().Add(gateSettle)
	for {
		p.mu.Lock()
		n := 0
		for _, it := range p.held {
			if it.dseq <= d && !it.acked {
				n++
			}
		}
		through := p.rseq >= d
		p.mu.Unlock()
		if info.NumAckPending <= n {
			return true
		}
		if through || time.Now().After(deadline) || p.stopping() {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// gateSettle bounds how long allInHand waits for the deliveries in flight.
const gateSettle = 200 * time.Millisecond

// pull consumes the partition (a continuous pull, up to fetchBatch events
// requested ahead) while the lease is valid and the partition is not
// stopping; then it drains what was already received into the lanes. When
// watchPull finds the pull request gone at the server (see there), it
// drains the iterator and pull goes on with a new one.
func (w *Worker) pull(p *partition, fatal func(error)) {
	it, err := w.messages(p)
	if err != nil {
		fatal(fmt.Errorf("krules/nats: consumer %s: %w", p.c.CachedInfo().Name, err))
		return
	}
	// itMu guards it (written only by this goroutine, under itMu), ended
	// (stopping or lost: no new iterator) and restart (watchPull drained
	// it: take a new one once it is empty).
	var itMu sync.Mutex
	var ended, restart bool
	kick := func() bool {
		itMu.Lock()
		defer itMu.Unlock()
		if ended || restart {
			return false
		}
		restart = true
		it.Drain()
		return true
	}
	watchDone := make(chan struct{})
	var watchWG sync.WaitGroup
	watchWG.Add(2)
	go func() { defer watchWG.Done(); w.watchGate(p, watchDone) }()
	go func() { defer watchWG.Done(); w.watchPull(p, watchDone, kick) }()
	defer watchWG.Wait() // no gate opening once pull returned (the lanes drain then)
	defer close(watchDone)
	go func() {
		select {
		case <-p.stop:
			itMu.Lock()
			ended = true
			it.Drain()
			itMu.Unlock()
		case <-p.lostCh:
			itMu.Lock()
			ended = true
			it.Stop() // lease gone: touch nothing more
			itMu.Unlock()
		case <-watchDone:
		}
	}()
	for {
		w.waitRoom(p)
		p.pulls.Add(1) // odd: waiting in Next
		m, err := it.Next()
		p.pulls.Add(1)
		if p.dbg != nil {
			if err != nil {
				p.dbg.nextErr(err)
			} else {
				p.dbg.next.Store(time.Now().UnixNano())
				p.dbg.nexts.Add(1)
			}
		}
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if p.stopping() || p.lost.Load() {
					return
				}
				if !errors.Is(err, natsgo.ErrConnectionClosed) {
					itMu.Lock()
					again := restart && !ended
					var nerr error
					if again {
						var nit jetstream.MessagesContext
						if nit, nerr = w.messages(p); nerr == nil {
							it, restart = nit, false
						}
					}
					itMu.Unlock()
					if again && nerr == nil {
						continue
					}
					if nerr != nil {
						err = nerr
					}
				}
				fatal(fmt.Errorf("krules/nats: consumer %s: %w", p.c.CachedInfo().Name, err))
				return
			}
			if w.fetchFatal(p, err, fatal) {
				it.Stop()
				return
			}
			continue
		}
		w.dispatch(p, m)
	}
}

// messages starts a pull of the partition's consumer.
func (w *Worker) messages(p *partition) (jetstream.MessagesContext, error) {
	if hook := testHookMessages.Load(); hook != nil {
		if it := (*hook)(p.k, p.c); it != nil {
			return it, nil
		}
	}
	return p.c.Messages(jetstream.PullMaxMessages(fetchBatch), jetstream.PullExpiry(w.pullExpiry()))
}

// testHookMessages is set by tests (export_test.go) to give a partition's
// pull an iterator of their own (nil: the real one).
var testHookMessages atomic.Pointer[func(partition int, c jetstream.Consumer) jetstream.MessagesContext]

// stallAfter is how long a pull may wait in Next without receiving
// anything before watchPull asks the server whether it still has a pull
// request of the partition: 1 s, or a quarter of the pull expiry if that
// is shorter (well before the client would miss the request's heartbeats,
// after twice pullExpiry/2). watchPull looks four times as often.
func (w *Worker) stallAfter() time.Duration { return min(time.Second, w.pullExpiry()/4) }

// watchPull repairs a pull whose request the server dropped without
// telling. The client (nats.go's Messages) asks for fetchBatch events
// ahead and asks again when fewer than half are outstanding, counting a
// request as outstanding until its events came or the server's 408
// (request timeout) said how many did not. nats-server 2.9.10 sometimes
// ends an expiring request without the 408 when an event arrives as it
// expires (its nextWaiting drops the expired request; fixed in later
// servers); the client then waits for events the server will not send
// until it misses the request's heartbeats: pullExpiry (5 s by default)
// with the partition idle. A probe of 20 Messages iterators fed 50
// events/s each, 1 s expiry, saw 29 such waits of 1 s in 30 s; the bench
// row nats/ordered-3-workers one of ~5 s in some 1 of 30 runs. So when
// the pull has been waiting in Next for stallAfter without receiving
// anything (then every 2*stallAfter while it stays idle: a request can
// also be dropped before it delivered anything, after a long idle wait),
// watchPull asks the server; if it has events of the partition to deliver
// and no pull request waiting, kick drains the iterator (pull takes a new
// one). It ends when done or p.stop is closed.
func (w *Worker) watchPull(p *partition, done <-chan struct{}, kick func() bool) {
	stallAfter := w.stallAfter()
	t := time.NewTicker(stallAfter / 4)
	defer t.Stop()
	last, since, wait := p.pulls.Load(), time.Now(), stallAfter
	for {
		select {
		case <-done:
			return
		case <-p.stop:
			return
		case <-t.C:
		}
		n := p.pulls.Load()
		if n != last || n%2 == 0 {
			// Received something, or not waiting in Next (waitRoom).
			last, since, wait = n, time.Now(), stallAfter
			continue
		}
		if time.Since(since) < wait {
			continue
		}
		ictx, cancel := context.WithTimeout(context.Background(), w.cfg.AckWait/3)
		info, err := p.c.Info(ictx)
		cancel()
		since = time.Now()
		if err != nil || p.pulls.Load() != n || info.NumWaiting > 0 || info.NumPending == 0 {
			wait = min(2*wait, 2*stallAfter)
			continue
		}
		if kick() {
			lvl := slog.LevelInfo
			if p.dbg != nil {
				lvl = slog.LevelWarn
			}
			w.log.Log(context.Background(), lvl, "krules/nats: the server has no pull request of the partition but events for it; pulling again",
				"consumer", info.Name, "pending", info.NumPending, "ack_pending", info.NumAckPending, "idle", wait)
		}
		wait = stallAfter
	}
}

// waitRoom returns at once if the partition holds fewer than maxHeld events
// (or is gated); else it waits until it holds resumeHeld or fewer (or is
// gated), the partition stops or the lease is lost.
func (w *Worker) waitRoom(p *partition) {
	limit := maxHeld
	for {
		p.mu.Lock()
		ok := p.gated || len(p.held) < limit
		p.mu.Unlock()
		if ok || p.lost.Load() {
			return
		}
		limit = resumeHeld + 1
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-p.room:
		case <-p.stop:
			t.Stop()
			return
		case <-t.C:
		}
		t.Stop()
	}
}

// pullExpiry is the expiry of the pull requests (at least 1 s, the client's
// minimum).
func (w *Worker) pullExpiry() time.Duration {
	return max(time.Second, min(w.cfg.AckWait/5, 5*time.Second))
}

func (w *Worker) fetchFatal(p *partition, err error, fatal func(error)) bool {
	if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, natsgo.ErrConnectionClosed) {
		fatal(fmt.Errorf("krules/nats: consumer %s: %w", p.c.CachedInfo().Name, err))
		return true
	}
	if errors.Is(err, jetstream.ErrNoHeartbeat) {
		// The client re-pulls by itself; a busy server or network.
		if p.dbg != nil {
			w.log.Warn("krules/nats debug: pull heartbeat missed", "consumer", p.c.CachedInfo().Name)
		} else {
			w.log.Debug("krules/nats: pull heartbeat missed", "consumer", p.c.CachedInfo().Name)
		}
		return false
	}
	w.log.Warn("krules/nats: fetch failed; retrying", "consumer", p.c.CachedInfo().Name, "error", err)
	return false
}
