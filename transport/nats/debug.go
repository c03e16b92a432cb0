package nats

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// EnvDebug names the environment variable that turns on the stall
// watchdog of the Workers of a process: with KRULES_NATS_DEBUG=1 (read by
// NewWorker) every owned partition that has finished no event for more
// than a second while its consumer reports events pending or
// unacknowledged is logged (Warn, "krules/nats debug: partition idle")
// with its state: lease, gate, lanes, held events, the last times the
// pull returned a message or an error, and the consumer's info. Off by
// default; when off it costs one nil check per event.
const EnvDebug = "KRULES_NATS_DEBUG"

// partDebug is the watchdog's view of a partition (nil unless debugging).
type partDebug struct {
	start    time.Time
	quiet    atomic.Int64 // unix ns: waitQuiet returned (pulling starts)
	next     atomic.Int64 // unix ns: the pull's Next last returned a message
	dispatch atomic.Int64 // unix ns: the last delivery was dispatched
	done     atomic.Int64 // unix ns: a lane last finished an event
	opened   atomic.Int64 // unix ns: the gate was last opened
	gaps     atomic.Int64 // delivery gaps seen
	nexts    atomic.Int64 // messages returned by Next

	mu      sync.Mutex
	errAt   time.Time // the pull's Next last returned an error
	lastErr string
	errs    int
}

func (d *partDebug) nextErr(err error) {
	d.mu.Lock()
	d.errAt, d.lastErr = time.Now(), err.Error()
	d.errs++
	d.mu.Unlock()
}

func debugOn() bool { return os.Getenv(EnvDebug) == "1" }

func ago(now time.Time, ns int64) string {
	if ns == 0 {
		return "never"
	}
	return now.Sub(time.Unix(0, ns)).Round(time.Millisecond).String()
}

// watchdog logs the partition's state while it is idle with work pending
// at the server (see EnvDebug), until done is closed.
func (w *Worker) watchdog(p *partition, done <-chan struct{}) {
	d := p.dbg
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var stalledSince, lastLog time.Time
	var quietAt int64 // unix ns: the consumer last had nothing pending or unacknowledged
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := time.Now()
		last := max(d.done.Load(), d.quiet.Load(), d.start.UnixNano(), quietAt)
		idle := now.Sub(time.Unix(0, last))
		if idle <= time.Second {
			if !stalledSince.IsZero() {
				w.log.Warn("krules/nats debug: partition resumed", "stream", w.cfg.Stream, "partition", p.k, "idle_for", now.Sub(stalledSince).Round(time.Millisecond))
				stalledSince = time.Time{}
			}
			continue
		}
		if now.Sub(lastLog) < time.Second {
			continue
		}
		ictx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := p.c.Info(ictx)
		cancel()
		if err != nil {
			w.log.Warn("krules/nats debug: consumer info failed", "partition", p.k, "error", err)
			continue
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			quietAt = now.UnixNano() // idle with nothing to do: not a stall
			continue
		}
		if stalledSince.IsZero() {
			stalledSince = time.Unix(0, last)
		}
		lastLog = now
		p.mu.Lock()
		held, gated, gate, lanes, dseq := len(p.held), p.gated, len(p.gate), len(p.lanes), p.dseq
		dead := 0
		for _, l := range p.lanes {
			if l.dead {
				dead++
			}
		}
		p.mu.Unlock()
		d.mu.Lock()
		errAt, lastErr, errs := d.errAt, d.lastErr, d.errs
		d.mu.Unlock()
		errAgo := "never"
		if !errAt.IsZero() {
			errAgo = now.Sub(errAt).Round(time.Millisecond).String()
		}
		w.log.Warn("krules/nats debug: partition idle",
			"stream", w.cfg.Stream, "partition", p.k, "worker", w.id,
			"idle", idle.Round(time.Millisecond), "owned_for", now.Sub(d.start).Round(time.Millisecond),
			slog.Group("lease", "epoch", p.epoch, "valid_for", time.Duration(p.validUntil.Load()-w.mono()).Round(time.Millisecond),
				"lost", p.lost.Load(), "stopping", p.stopping()),
			slog.Group("local", "held", held, "gated", gated, "gate", gate, "lanes", lanes, "dead_lanes", dead, "dseq", dseq,
				"pulling_since", ago(now, d.quiet.Load()), "last_next", ago(now, d.next.Load()), "nexts", d.nexts.Load(),
				"last_dispatch", ago(now, d.dispatch.Load()), "last_done", ago(now, d.done.Load()),
				"gate_opened", ago(now, d.opened.Load()), "gaps", d.gaps.Load(),
				"next_errors", errs, "last_error", lastErr, "last_error_ago", errAgo),
			slog.Group("consumer", "pending", info.NumPending, "ack_pending", info.NumAckPending, "waiting", info.NumWaiting,
				"redelivered", info.NumRedelivered, "delivered", [2]uint64{info.Delivered.Consumer, info.Delivered.Stream},
				"ack_floor", [2]uint64{info.AckFloor.Consumer, info.AckFloor.Stream}))
	}
}
