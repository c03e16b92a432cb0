// Command krules-bench measures the hot paths of krules against the raw driver
// doing the same work, in one run, and prints a table or (-json) a JSON array
// of {"name","ns_per_op","allocs_per_op","baseline","baseline_ns_per_op",
// "baseline_allocs_per_op","ratio","ratio_min","ratio_max","pairs",
// "cpu_ns_per_op","baseline_cpu_ns_per_op","cpu_ratio","extra"} (the last ones
// omitted when not measured; extra: the row's own metrics, b.ReportMetric,
// e.g. the latency percentiles of the feed/*-e2e rows, median over the runs;
// the table prints them last).
//
// Rows of the memory, bolt and sqlite backends always run; Redis, PostgreSQL and NATS
// rows run when KRULES_REDIS_URL, KRULES_POSTGRES_URL and KRULES_NATS_URL are
// set. A row and its baseline run as -count interleaved pairs (row then
// baseline, baseline then row in the next pair, ...: ABBA order, so both sides
// see the same drift of machine load and neither always runs first); each pair
// gives one ratio row/baseline. ns_per_op and baseline_ns_per_op are the
// medians of each side; ratio is the median of the pair ratios and ratio_min,
// ratio_max their spread. -test.benchtime sets the length of one measurement
// (default 1s; 200ms gives more pairs in the same time). cpu_ns_per_op is the
// CPU time of this process per op (rusage, user + system; median of the
// pairs), which the load of other processes on the machine disturbs much less
// than wall time; cpu_ratio compares it with the baseline's. Server CPU is
// not in it.
//
// Single-goroutine rows that give Op and BaseOp are measured op by op
// instead (-ops, default on; see measureOps): -count blocks of -block each
// in which the row's op and the baseline's op alternate, every op timed; the
// reported ns/op are median latencies and ratio the median of the per-block
// quotients, min-max their spread. The -c16 rows that give Op16 and BaseOp16
// alternate batches of 128 calls over 16 goroutines the same way (see
// measureBatches; ns/op there is the batch time / 128, as throughput). On a loaded machine this is much
// steadier than comparing two benchmark runs, which a burst of load can hit
// on one side only.
//
//	go run ./cmd/krules-bench                 # table
//	go run ./cmd/krules-bench -json -count 5  # JSON, median of 5
//	go run ./cmd/krules-bench -run redis/     # only rows whose name contains "redis/"
//	go run ./cmd/krules-bench -run 'redis/|postgres/' -count 15 -test.benchtime 300ms
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
)

// Row is one measurement: Run is the krules operation, Base the raw baseline
// (nil for an absolute-only row). A single-goroutine row may give Op and
// BaseOp instead (one operation each, i counting the calls of that side from
// 0): it is then measured interleaved op by op (see measureOps), and Run and
// Base, when nil, loop over Op and BaseOp.
type Row struct {
	Name     string
	Run      func(b *testing.B)
	Baseline string
	Base     func(b *testing.B)
	// Benchtime is the -test.benchtime of the row's runs; 0: the flag's
	// value (testing's default 1 s).
	Benchtime time.Duration
	Op        func(i int) error
	BaseOp    func(i int) error
	// Op16 and BaseOp16 are the operation of a -c16 row and of its
	// baseline, called by 16 goroutines at once: measured in alternating
	// batches (see measureBatches); Run and Base, when nil, are parallel16
	// loops over them.
	Op16     func() error
	BaseOp16 func() error
}

// loop is the benchmark body that calls op b.N times.
func loop(op func(i int) error) func(b *testing.B) {
	return func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if interrupted.Load() {
				b.SkipNow()
			}
			if err := op(i); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// interrupted is set by SIGINT or SIGTERM: the measurement loops stop, and
// the main loop runs the group's cleanup and exits with status 130, so that
// Ctrl-C leaves no keys, schemas or streams behind.
var interrupted atomic.Bool

// pending is the cleanup of the group being measured.
var pending struct {
	sync.Mutex
	cleanup func()
}

func setCleanup(f func()) {
	pending.Lock()
	pending.cleanup = f
	pending.Unlock()
}

// exitInterrupted runs the pending cleanup (once) and exits with status 130.
func exitInterrupted() {
	pending.Lock() // held until exit: no other cleanup runs
	if pending.cleanup != nil {
		pending.cleanup()
	}
	os.Exit(130)
}

// stopOnSignal handles SIGINT and SIGTERM: the running row stops at its next
// operation and the main loop calls exitInterrupted. A row that does not
// return within 15 s (a row with its own loop) is cleaned up under its feet;
// a second signal exits at once. (Child processes of the e2e rows die with
// the parent: see pdeathsig.)
func stopOnSignal() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		interrupted.Store(true)
		fmt.Fprintln(os.Stderr, "krules-bench: interrupted: cleaning up (interrupt again to exit at once)")
		select {
		case <-sigs:
			os.Exit(130)
		case <-time.After(15 * time.Second):
			go func() { <-sigs; os.Exit(130) }()
			exitInterrupted()
		}
	}()
}

// Group produces the rows of one backend. Setup returns the rows, a cleanup
// function, and an error that skips the group with a message. enabled reports
// whether the group should run at all (its service URL is set, ...).
type Group struct {
	Name    string
	Enabled func() bool
	Setup   func() (rows []Row, cleanup func(), err error)
}

var groups []Group

// register adds a group; called from the init functions of the per-backend files.
func register(g Group) { groups = append(groups, g) }

// Result is one printed measurement.
type Result struct {
	Name             string             `json:"name"`
	NsPerOp          float64            `json:"ns_per_op"`
	AllocsPerOp      int64              `json:"allocs_per_op"`
	Baseline         string             `json:"baseline"`
	BaselineNsPerOp  float64            `json:"baseline_ns_per_op"`
	Ratio            float64            `json:"ratio"`
	RatioMin         float64            `json:"ratio_min,omitempty"`
	RatioMax         float64            `json:"ratio_max,omitempty"`
	Pairs            int                `json:"pairs,omitempty"`
	CPUNsPerOp       float64            `json:"cpu_ns_per_op,omitempty"`
	BaselineCPUNsOp  float64            `json:"baseline_cpu_ns_per_op,omitempty"`
	CPURatio         float64            `json:"cpu_ratio,omitempty"`
	BaselineAllocsOp int64              `json:"baseline_allocs_per_op"`
	Extra            map[string]float64 `json:"extra,omitempty"`
}

func main() {
	testing.Init() // before Parse: -test.benchtime sets the length of one measurement
	asJSON := flag.Bool("json", false, "print a JSON array instead of a table")
	count := flag.Int("count", 3, "interleaved row/baseline pairs per row; medians and the ratio spread are reported")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (rows and baselines) to this file")
	opMode := flag.Bool("ops", true, "rows with Op/BaseOp: interleave row and baseline op by op (median latencies); false: as -count benchmark pairs like the other rows")
	block := flag.Duration("block", 500*time.Millisecond, "with -ops: length of one block of interleaved ops; -count blocks per row")
	filter := flag.String("run", "", "only rows whose name contains one of these |-separated strings")
	if code := runNatsChild(); code >= 0 { // a worker process of the nats/* rows
		os.Exit(code)
	}
	if code := runChild(); code >= 0 { // a child process of the feed/*-e2e rows
		os.Exit(code)
	}
	flag.Parse()
	if *count < 1 {
		*count = 1
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "krules-bench:", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}

	stopOnSignal()

	results := []Result{}
	for _, g := range groups {
		if g.Enabled != nil && !g.Enabled() {
			fmt.Fprintf(os.Stderr, "krules-bench: %s rows skipped (service URL not set)\n", g.Name)
			continue
		}
		rows, cleanup, err := g.Setup()
		if err != nil {
			fmt.Fprintf(os.Stderr, "krules-bench: %s rows skipped: %v\n", g.Name, err)
			continue
		}
		setCleanup(cleanup)
		for _, r := range rows {
			if !matches(r.Name, *filter) {
				continue
			}
			var res Result
			switch {
			case r.Op != nil && r.BaseOp != nil && *opMode:
				res = measureOps(r, *count, *block)
			case r.Op16 != nil && r.BaseOp16 != nil && *opMode:
				res = measureBatches(r, *count, *block)
			default:
				if r.Run == nil && r.Op16 != nil {
					op := r.Op16
					r.Run = func(b *testing.B) { parallel16(b, op) }
				}
				if r.Base == nil && r.BaseOp16 != nil {
					op := r.BaseOp16
					r.Base = func(b *testing.B) { parallel16(b, op) }
				}
				if r.Run == nil && r.Op != nil {
					r.Run = loop(r.Op)
				}
				if r.Base == nil && r.BaseOp != nil {
					r.Base = loop(r.BaseOp)
				}
				res = measure(r, *count)
			}
			if interrupted.Load() {
				exitInterrupted()
			}
			results = append(results, res)
			if !*asJSON {
				fmt.Fprintf(os.Stderr, "  %-28s %12.0f ns/op  ratio %.2f [%.2f-%.2f]\n", r.Name, res.NsPerOp, res.Ratio, res.RatioMin, res.RatioMax)
			}
		}
		setCleanup(nil)
		if cleanup != nil {
			cleanup()
		}
	}

	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "name\tns/op\tallocs/op\tbaseline\tbaseline ns/op\tbaseline allocs/op\tratio\tmin-max\tpairs\tcpu ns/op\tbaseline cpu ns/op\tcpu ratio\textra\t")
	for _, r := range results {
		ratio, base, ballocs, spread := "-", "-", "-", "-"
		if r.BaselineNsPerOp > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
			base = fmt.Sprintf("%.0f", r.BaselineNsPerOp)
			ballocs = fmt.Sprintf("%d", r.BaselineAllocsOp)
			spread = fmt.Sprintf("%.2f-%.2f", r.RatioMin, r.RatioMax)
		}
		cpu, bcpu, cratio := "-", "-", "-"
		if r.CPURatio > 0 {
			cpu = fmt.Sprintf("%.0f", r.CPUNsPerOp)
			bcpu = fmt.Sprintf("%.0f", r.BaselineCPUNsOp)
			cratio = fmt.Sprintf("%.2f", r.CPURatio)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n", r.Name, r.NsPerOp, r.AllocsPerOp, r.Baseline, base, ballocs, ratio, spread, r.Pairs, cpu, bcpu, cratio, extraText(r.Extra))
	}
	tw.Flush()
}

// extraText formats a row's own metrics, sorted by unit ("-" for none).
func extraText(m map[string]float64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = strconv.FormatFloat(m[k], 'g', 4, 64) + " " + k
	}
	return strings.Join(parts, ", ")
}

type sample struct {
	ns     float64
	allocs int64
	cpu    float64 // CPU time of this process per op, ns (user + system)
	extra  map[string]float64
}

// once runs fn as one benchmark, with -test.benchtime set to benchtime
// when that is not 0.
func once(fn func(b *testing.B), benchtime time.Duration) (sample, bool) {
	if benchtime > 0 {
		old := flag.Lookup("test.benchtime").Value.String()
		_ = flag.Set("test.benchtime", benchtime.String())
		defer func() { _ = flag.Set("test.benchtime", old) }()
	}
	var cpu time.Duration
	var n int
	r := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		// The last call is the measured one; the rusage reads sit outside
		// the timed loop (b.Loop and parallel16 reset the timer).
		c0 := selfCPU()
		fn(b)
		cpu, n = selfCPU()-c0, b.N
	})
	if r.N == 0 {
		return sample{}, false
	}
	s := sample{ns: float64(r.T.Nanoseconds()) / float64(r.N), allocs: r.AllocsPerOp(), extra: r.Extra}
	if n == r.N {
		s.cpu = float64(cpu.Nanoseconds()) / float64(n)
	}
	return s, true
}

// selfCPU is the user + system CPU time this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// matches reports whether name contains one of the |-separated parts of
// filter (an empty filter matches every row).
func matches(name, filter string) bool {
	if filter == "" {
		return true
	}
	for _, part := range strings.Split(filter, "|") {
		if part != "" && strings.Contains(name, part) {
			return true
		}
	}
	return false
}

// measure runs the row and its baseline as count interleaved pairs in ABBA
// order (row, base; base, row; ...), so both sides see the same drift of
// machine load and neither always runs first. It returns the medians of
// ns/op and allocs/op of each side and the median, min and max of the
// per-pair ratios (pairs where either side failed are dropped).
func measure(r Row, count int) Result {
	res := Result{Name: r.Name, Baseline: r.Baseline}
	var runs, bases []sample
	var ratios []float64
	for i := 0; i < count; i++ {
		var s, bs sample
		var ok, bok bool
		if r.Base == nil {
			s, ok = once(r.Run, r.Benchtime)
		} else if i%2 == 0 {
			s, ok = once(r.Run, r.Benchtime)
			bs, bok = once(r.Base, r.Benchtime)
		} else {
			bs, bok = once(r.Base, r.Benchtime)
			s, ok = once(r.Run, r.Benchtime)
		}
		if ok {
			runs = append(runs, s)
		}
		if bok {
			bases = append(bases, bs)
		}
		if ok && bok && bs.ns > 0 {
			ratios = append(ratios, s.ns/bs.ns)
		}
	}
	if cr, cb := medianCPU(runs), medianCPU(bases); cr > 0 && cb > 0 {
		res.CPUNsPerOp, res.BaselineCPUNsOp, res.CPURatio = cr, cb, cr/cb
	}
	res.Extra = medianExtra(runs)
	m, b := medianOf(runs), medianOf(bases)
	res.NsPerOp, res.AllocsPerOp = m.ns, m.allocs
	res.BaselineNsPerOp, res.BaselineAllocsOp = b.ns, b.allocs
	if len(ratios) > 0 {
		sort.Float64s(ratios)
		res.Ratio = ratios[len(ratios)/2]
		if len(ratios)%2 == 0 {
			res.Ratio = (ratios[len(ratios)/2-1] + ratios[len(ratios)/2]) / 2
		}
		res.RatioMin, res.RatioMax, res.Pairs = ratios[0], ratios[len(ratios)-1], len(ratios)
	}
	return res
}

// measureOps measures a row with Op and BaseOp interleaved op by op: count
// blocks of about block each, in which the row's op and the baseline's op
// alternate (AB, BA, AB, ...), each timed on its own. Machine load then hits
// both sides alike, and the median latency ignores the ops that a burst of
// load or a preemption stretched. ns_per_op and baseline_ns_per_op are the
// median latencies over all blocks, ratio the median of the per-block
// quotients of the median latencies, ratio_min and ratio_max their extremes
// (pairs = blocks).
// allocs/op come from testing.AllocsPerRun (200 calls); no CPU time is
// reported (the two sides share the blocks). The first error stops the row.
func measureOps(r Row, count int, block time.Duration) Result {
	res := Result{Name: r.Name, Baseline: r.Baseline}
	sides := [2]func(int) error{r.Op, r.BaseOp}
	var calls [2]int
	var err error
	call := func(side int) float64 {
		t0 := time.Now()
		if e := sides[side](calls[side]); e != nil && err == nil {
			err = e
		}
		calls[side]++
		return float64(time.Since(t0).Nanoseconds())
	}
	for k := 0; k < 20 && err == nil; k++ { // warm up: connections, statements, caches
		call(k % 2)
		call(1 - k%2)
	}
	all, ratios := alternate(count, block, 20, call, func() bool { return err != nil })
	if interrupted.Load() {
		return res
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "krules-bench: %s: %v\n", r.Name, err)
		return res
	}
	res.NsPerOp, res.BaselineNsPerOp = median(all[0]), median(all[1])
	res.Ratio = median(append([]float64(nil), ratios...))
	sort.Float64s(ratios)
	res.RatioMin, res.RatioMax, res.Pairs = ratios[0], ratios[len(ratios)-1], len(ratios)
	for side, dst := range []*int64{&res.AllocsPerOp, &res.BaselineAllocsOp} {
		f := sides[side]
		*dst = int64(testing.AllocsPerRun(200, func() {
			_ = f(calls[side])
			calls[side]++
		}))
	}
	return res
}

// measureBatches measures a -c16 row with Op16 and BaseOp16: count blocks
// of about block each, in which batches of the row and of the baseline
// alternate (AB, BA, ...); a batch is 16 goroutines making the same number
// of calls each (1 to 8, so that one batch of the slower side takes about
// block/8), timed as a whole. ns_per_op and baseline_ns_per_op are the
// median batch times over all blocks divided by the calls of a batch
// (throughput, as in parallel16), ratio the median of the per-block quotients, ratio_min and
// ratio_max their extremes (pairs = blocks). CPU time per op is measured
// over each side's batches. The first error stops the row.
func measureBatches(r Row, count int, block time.Duration) Result {
	res := Result{Name: r.Name, Baseline: r.Baseline}
	sides := [2]func() error{r.Op16, r.BaseOp16}
	var errMu sync.Mutex
	var err error
	var cpu [2]time.Duration
	var ops [2]int
	per := 1 // calls per goroutine in a batch
	batch := func(side int) float64 {
		var wg sync.WaitGroup
		c0, t0 := selfCPU(), time.Now()
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					if e := sides[side](); e != nil {
						errMu.Lock()
						if err == nil {
							err = e
						}
						errMu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		d := time.Since(t0)
		cpu[side] += selfCPU() - c0
		ops[side] += 16 * per
		return float64(d.Nanoseconds())
	}
	batch(0) // warm up
	batch(1)
	if slow := max(batch(0), batch(1)); slow > 0 { // one call per goroutine
		per = max(1, min(8, int(float64(block.Nanoseconds())/8/slow)))
	}
	cpu, ops = [2]time.Duration{}, [2]int{}
	failed := func() bool { errMu.Lock(); defer errMu.Unlock(); return err != nil }
	all, ratios := alternate(count, block, 4, batch, failed)
	if interrupted.Load() {
		return res
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "krules-bench: %s: %v\n", r.Name, err)
		return res
	}
	res.NsPerOp, res.BaselineNsPerOp = median(all[0])/float64(16*per), median(all[1])/float64(16*per)
	res.Ratio = median(append([]float64(nil), ratios...))
	sort.Float64s(ratios)
	res.RatioMin, res.RatioMax, res.Pairs = ratios[0], ratios[len(ratios)-1], len(ratios)
	res.CPUNsPerOp = float64(cpu[0].Nanoseconds()) / float64(ops[0])
	res.BaselineCPUNsOp = float64(cpu[1].Nanoseconds()) / float64(ops[1])
	if res.BaselineCPUNsOp > 0 {
		res.CPURatio = res.CPUNsPerOp / res.BaselineCPUNsOp
	}
	for side, dst := range []*int64{&res.AllocsPerOp, &res.BaselineAllocsOp} {
		f := sides[side]
		*dst = int64(testing.AllocsPerRun(200, func() { _ = f() }))
	}
	return res
}

// alternate runs count blocks of about block each (at least minPairs pairs)
// in which timed(0), the row, and timed(1), the baseline, alternate (AB,
// BA, AB, ...). It returns every timing of each side and, per block, the
// quotient of the two sides' median timings. It stops at the first block in
// which failed reports true (that block gives no quotient).
func alternate(count int, block time.Duration, minPairs int, timed func(side int) float64, failed func() bool) (all [2][]float64, ratios []float64) {
	for blk := 0; blk < count && !failed() && !interrupted.Load(); blk++ {
		var lat [2][]float64
		end := time.Now().Add(block)
		for k := 0; (k < minPairs || time.Now().Before(end)) && !failed() && !interrupted.Load(); k++ {
			first := k % 2
			lat[first] = append(lat[first], timed(first))
			lat[1-first] = append(lat[1-first], timed(1-first))
		}
		if failed() || interrupted.Load() {
			break
		}
		ratios = append(ratios, median(lat[0])/median(lat[1]))
		all[0] = append(all[0], lat[0]...)
		all[1] = append(all[1], lat[1]...)
	}
	return all, ratios
}

// median of xs (sorted in place; 0 when empty).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	if len(xs)%2 == 0 {
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return xs[len(xs)/2]
}

// medianCPU is the median CPU time per op of ss (0 when none was measured).
func medianCPU(ss []sample) float64 {
	var cs []float64
	for _, s := range ss {
		if s.cpu > 0 {
			cs = append(cs, s.cpu)
		}
	}
	if len(cs) == 0 {
		return 0
	}
	sort.Float64s(cs)
	return cs[len(cs)/2]
}

// medianExtra is the median of every extra metric over the samples that
// have it.
func medianExtra(ss []sample) map[string]float64 {
	var out map[string]float64
	for _, s := range ss {
		for k := range s.extra {
			if _, done := out[k]; done {
				continue
			}
			var vs []float64
			for _, o := range ss {
				if v, ok := o.extra[k]; ok {
					vs = append(vs, v)
				}
			}
			if out == nil {
				out = map[string]float64{}
			}
			out[k] = median(vs)
		}
	}
	return out
}

func medianOf(ss []sample) sample {
	if len(ss) == 0 {
		return sample{}
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].ns < ss[j].ns })
	return ss[len(ss)/2]
}

// parallel16 spreads b.N calls of body over exactly 16 goroutines (the
// contended rows, "-c16"); the first error fails the benchmark.
func parallel16(b *testing.B, body func() error) {
	const c = 16
	var wg sync.WaitGroup
	b.ResetTimer()
	for g := range c {
		n := b.N / c
		if g < b.N%c {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if interrupted.Load() {
					return
				}
				if err := body(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
