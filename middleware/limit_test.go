package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/middleware"
)

func TestConcurrencyLimit(t *testing.T) {
	cases := []struct {
		name      string
		cfg       middleware.LimitConfig
		callers   int
		wantMax   int // highest number of handlers running at once
		wantRuns  int
		wantLimit int // ErrConcurrencyLimit errors
	}{
		{name: "wait max 2", cfg: middleware.LimitConfig{Max: 2}, callers: 5, wantMax: 2, wantRuns: 5},
		{name: "wait default 1", cfg: middleware.LimitConfig{}, callers: 3, wantMax: 1, wantRuns: 3},
		{name: "fail fast max 2", cfg: middleware.LimitConfig{Max: 2, FailFast: true}, callers: 5, wantMax: 2, wantRuns: 2, wantLimit: 3},
		{name: "per subject", cfg: middleware.LimitConfig{Max: 1, Key: middleware.BySubject}, callers: 4, wantMax: 4, wantRuns: 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, middleware.ConcurrencyLimit(c.cfg))
				var mu sync.Mutex
				running, maxRunning, runs := 0, 0, 0
				h.app.On("job").Do(func(context.Context, *krules.Event) error {
					mu.Lock()
					running++
					runs++
					maxRunning = max(maxRunning, running)
					mu.Unlock()
					time.Sleep(time.Second) // hold the slot while the others arrive
					mu.Lock()
					running--
					mu.Unlock()
					return nil
				})
				var wg sync.WaitGroup
				for i := range c.callers {
					wg.Go(func() { h.emit(t, t.Context(), "job", fmt.Sprint("s", i), nil) })
				}
				wg.Wait()
				if maxRunning != c.wantMax || runs != c.wantRuns {
					t.Errorf("max running %d, runs %d; want %d and %d", maxRunning, runs, c.wantMax, c.wantRuns)
				}
				limited := 0
				for _, f := range h.failures() {
					if !errors.Is(f.err, middleware.ErrConcurrencyLimit) {
						t.Errorf("unexpected error %v", f.err)
					}
					limited++
				}
				if limited != c.wantLimit {
					t.Errorf("%d ErrConcurrencyLimit, want %d", limited, c.wantLimit)
				}
			})
		})
	}
}

func TestConcurrencyLimitReentrantAndCancel(t *testing.T) {
	t.Run("cascade through the same handler", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newHarness(t, middleware.ConcurrencyLimit(middleware.LimitConfig{Max: 1}))
			var depth counter
			h.app.On("tick").Named("ticker").Do(func(ctx context.Context, ev *krules.Event) error {
				if depth.inc() < 3 {
					return ev.Emit(ctx, "tick", nil) // same handler, same key, slot held
				}
				return nil
			})
			h.emit(t, t.Context(), "tick", "s", nil)
			if depth.get() != 3 || len(h.failures()) != 0 {
				t.Fatalf("depth %d errors %v", depth.get(), h.failures())
			}
		})
	})
	t.Run("wait ends with ctx", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newHarness(t, middleware.ConcurrencyLimit(middleware.LimitConfig{Max: 1}))
			release := make(chan struct{})
			var runs counter
			h.app.On("job").Do(func(context.Context, *krules.Event) error { runs.inc(); <-release; return nil })
			go h.emit(t, t.Context(), "job", "a", nil)
			synctest.Wait()
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			h.emit(t, ctx, "job", "b", nil)
			if err := h.lastErr(t); !errors.Is(err, context.DeadlineExceeded) || runs.get() != 1 {
				t.Fatalf("err %v runs %d", err, runs.get())
			}
			close(release)
		})
	})
}

func TestRateLimit(t *testing.T) {
	cases := []struct {
		name    string
		cfg     middleware.RateLimitConfig
		calls   int
		gap     time.Duration // between sequential calls
		starts  []time.Duration
		limited int
	}{
		{name: "wait burst 2 at 10/s", cfg: middleware.RateLimitConfig{Rate: 10, Burst: 2}, calls: 5,
			starts: []time.Duration{0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}},
		{name: "fail fast", cfg: middleware.RateLimitConfig{Rate: 10, Burst: 2, FailFast: true}, calls: 5,
			starts: []time.Duration{0, 0}, limited: 3},
		{name: "fail fast with gaps", cfg: middleware.RateLimitConfig{Rate: 10, Burst: 1, FailFast: true}, calls: 4, gap: 50 * time.Millisecond,
			starts: []time.Duration{0, 100 * time.Millisecond}, limited: 2},
		{name: "disabled", cfg: middleware.RateLimitConfig{}, calls: 3, starts: []time.Duration{0, 0, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, middleware.RateLimit(c.cfg))
				t0 := time.Now()
				var starts []time.Duration
				h.app.On("job").Do(func(context.Context, *krules.Event) error {
					starts = append(starts, time.Since(t0))
					return nil
				})
				for i := range c.calls {
					if i > 0 {
						time.Sleep(c.gap)
					}
					h.emit(t, t.Context(), "job", "s", nil)
				}
				if !slices.Equal(starts, c.starts) {
					t.Errorf("starts %v, want %v", starts, c.starts)
				}
				limited := 0
				for _, f := range h.failures() {
					if !errors.Is(f.err, middleware.ErrRateLimited) {
						t.Errorf("unexpected %v", f.err)
					}
					limited++
				}
				if limited != c.limited {
					t.Errorf("%d ErrRateLimited, want %d", limited, c.limited)
				}
			})
		})
	}
}

func TestRateLimitDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, middleware.RateLimit(middleware.RateLimitConfig{Rate: 1}))
		var runs counter
		h.app.On("job").Do(func(context.Context, *krules.Event) error { runs.inc(); return nil })
		h.emit(t, t.Context(), "job", "s", nil)
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		h.emit(t, ctx, "job", "s", nil) // token in 1s, past the deadline: refused at once
		if err := h.lastErr(t); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 0 {
			t.Fatalf("err %v after %v", err, time.Since(start))
		}
		h.emit(t, t.Context(), "job", "s", nil) // the refused call spent no token
		if runs.get() != 2 || time.Since(start) != time.Second {
			t.Fatalf("runs %d after %v, want 2 after 1s", runs.get(), time.Since(start))
		}
	})
}

func TestPartitionOf(t *testing.T) {
	// FNV-1a 32-bit reference vectors (IETF draft-eastlake-fnv).
	// On 64-bit platforms n = 2^40 is above every 32-bit hash, so the
	// partition is the hash itself; a 32-bit int holds n = 2^30 only.
	const n = 1 << (30 + 10*(^uint(0)>>63))
	for s, sum := range map[string]uint32{"": 0x811c9dc5, "a": 0xe40c292c, "foobar": 0xbf9cf968} {
		if got, want := middleware.PartitionOf(s, n), int(uint64(sum)%n); got != want {
			t.Errorf("PartitionOf(%q, %d) = %#x, want %#x", s, n, got, want)
		}
	}
	for _, n := range []int{1, 3, 4, 7} {
		for i := range 50 {
			name := fmt.Sprint("user-", i)
			f := fnv.New32a()
			f.Write([]byte(name))
			if got, want := middleware.PartitionOf(name, n), int(f.Sum32()%uint32(n)); got != want {
				t.Fatalf("PartitionOf(%q, %d) = %d, want %d", name, n, got, want)
			}
		}
	}
	if middleware.PartitionOf("x", 0) != 0 || middleware.PartitionOf("x", -3) != 0 {
		t.Error("count < 1 must give 0")
	}
}

func TestPartitioner(t *testing.T) {
	const n = 4
	subjects := make([]string, 40)
	for i := range subjects {
		subjects[i] = fmt.Sprint("device-", i)
	}
	owners := map[string]int{}
	for id := range n {
		p, err := middleware.NewPartitioner(id, n)
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t)
		var viaFilter []string
		h.app.On("reading").When(p.Filter()).Do(func(_ context.Context, ev *krules.Event) error {
			viaFilter = append(viaFilter, ev.Subject.Name())
			owners[ev.Subject.Name()]++
			return nil
		})
		hm := newHarness(t, p.Middleware())
		var viaMW []string
		var metaOK = true
		hm.app.On("reading").Do(func(_ context.Context, ev *krules.Event) error {
			viaMW = append(viaMW, ev.Subject.Name())
			if v, _ := ev.Meta(middleware.PartitionMetaKey); v != id {
				metaOK = false
			}
			return nil
		})
		for _, s := range subjects {
			h.emit(t, t.Context(), "reading", s, nil)
			hm.emit(t, t.Context(), "reading", s, nil)
		}
		if !slices.Equal(viaFilter, viaMW) || !metaOK {
			t.Errorf("partition %d: filter %v, middleware %v, meta ok %v", id, viaFilter, viaMW, metaOK)
		}
		for _, s := range viaFilter {
			if !p.Owns(s) || middleware.PartitionOf(s, n) != id {
				t.Errorf("partition %d ran %s of partition %d", id, s, middleware.PartitionOf(s, n))
			}
		}
	}
	for _, s := range subjects {
		if owners[s] != 1 {
			t.Errorf("%s processed by %d partitions, want exactly 1", s, owners[s])
		}
	}
}

func TestPartitionerFromEnv(t *testing.T) {
	cases := []struct {
		id, count string
		wantID    int
		wantCount int
		wantErr   bool
	}{
		{"", "", 0, 1, false},
		{"2", "4", 2, 4, false},
		{" 3 ", "4", 3, 4, false},
		{"4", "4", 0, 0, true},
		{"-1", "4", 0, 0, true},
		{"0", "0", 0, 0, true},
		{"x", "4", 0, 0, true},
		{"1", "four", 0, 0, true},
		{"1", "", 0, 0, true}, // default count 1 owns only partition 0
	}
	for _, c := range cases {
		t.Run(c.id+"/"+c.count, func(t *testing.T) {
			t.Setenv(middleware.EnvPartitionID, c.id)
			t.Setenv(middleware.EnvPartitionCount, c.count)
			p, err := middleware.PartitionerFromEnv()
			if c.wantErr {
				if !errors.Is(err, middleware.ErrInvalidPartition) {
					t.Fatalf("err %v, want ErrInvalidPartition", err)
				}
				return
			}
			if err != nil || p.ID() != c.wantID || p.Count() != c.wantCount {
				t.Fatalf("got %v %v, want %d/%d", p, err, c.wantID, c.wantCount)
			}
		})
	}
}
