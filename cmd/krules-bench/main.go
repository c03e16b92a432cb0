// Command krules-bench measures the hot paths of krules against the raw driver
// doing the same work, in one run, and prints a table or (-json) a JSON array
// of {"name","ns_per_op","allocs_per_op","baseline","baseline_ns_per_op","ratio","extra"}
// (extra: the row's own metrics, b.ReportMetric, e.g. the latency
// percentiles of the feed/*-e2e rows; the table prints them last).
//
// Rows of the memory, bolt and sqlite backends always run; Redis, PostgreSQL and NATS
// rows run when KRULES_REDIS_URL, KRULES_POSTGRES_URL and KRULES_NATS_URL are
// set. Each measurement is the median of -count runs (testing.Benchmark);
// ratio = ns_per_op / baseline_ns_per_op measured in the same run.
//
//	go run ./cmd/krules-bench                 # table
//	go run ./cmd/krules-bench -json -count 5  # JSON, median of 5
//	go run ./cmd/krules-bench -run redis/     # only rows whose name contains "redis/"
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

// Row is one measurement: Run is the krules operation, Base the raw baseline
// (nil for an absolute-only row).
type Row struct {
	Name     string
	Run      func(b *testing.B)
	Baseline string
	Base     func(b *testing.B)
	// Benchtime is the -test.benchtime of the row's runs; 0: the testing
	// default (1 s).
	Benchtime time.Duration
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
	Extra            map[string]float64 `json:"extra,omitempty"`
	baselineAllocsOp int64
}

func main() {
	asJSON := flag.Bool("json", false, "print a JSON array instead of a table")
	count := flag.Int("count", 3, "runs per measurement; the median is reported")
	filter := flag.String("run", "", "only rows whose name contains this string")
	if code := runChild(); code >= 0 { // a child process of the feed/*-e2e rows
		os.Exit(code)
	}
	flag.Parse()
	testing.Init()
	if *count < 1 {
		*count = 1
	}

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
		for _, r := range rows {
			if *filter != "" && !strings.Contains(r.Name, *filter) {
				continue
			}
			res := Result{Name: r.Name, Baseline: r.Baseline}
			res.NsPerOp, res.AllocsPerOp, res.Extra, res.BaselineNsPerOp, res.baselineAllocsOp = measure(r, *count)
			if res.BaselineNsPerOp > 0 {
				res.Ratio = res.NsPerOp / res.BaselineNsPerOp
			}
			results = append(results, res)
			if !*asJSON {
				fmt.Fprintf(os.Stderr, "  %-28s %12.0f ns/op\n", r.Name, res.NsPerOp)
			}
		}
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
	fmt.Fprintln(tw, "name\tns/op\tallocs/op\tbaseline\tbaseline ns/op\tratio\textra\t")
	for _, r := range results {
		ratio, base := "-", "-"
		if r.BaselineNsPerOp > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
			base = fmt.Sprintf("%.0f", r.BaselineNsPerOp)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%s\t%s\t%s\t%s\t\n", r.Name, r.NsPerOp, r.AllocsPerOp, r.Baseline, base, ratio, extraText(r.Extra))
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
	extra  map[string]float64
}

func once(fn func(b *testing.B), benchtime time.Duration) (sample, bool) {
	if benchtime > 0 {
		old := flag.Lookup("test.benchtime").Value.String()
		_ = flag.Set("test.benchtime", benchtime.String())
		defer func() { _ = flag.Set("test.benchtime", old) }()
	}
	r := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		fn(b)
	})
	if r.N == 0 {
		return sample{}, false
	}
	return sample{float64(r.T.Nanoseconds()) / float64(r.N), r.AllocsPerOp(), r.Extra}, true
}

// measure runs the row and its baseline alternately (run, base, run, base,
// ...) count times each, so both sides see the same drift of machine load,
// and returns the medians: ns/op and allocs/op of each, and the median of
// each of the row's extra metrics over its runs.
func measure(r Row, count int) (ns float64, allocs int64, extra map[string]float64, baseNs float64, baseAllocs int64) {
	var runs, bases []sample
	for i := 0; i < count; i++ {
		if s, ok := once(r.Run, r.Benchtime); ok {
			runs = append(runs, s)
		}
		if r.Base != nil {
			if s, ok := once(r.Base, r.Benchtime); ok {
				bases = append(bases, s)
			}
		}
	}
	m := medianOf(runs)
	b := medianOf(bases)
	return m.ns, m.allocs, medianExtra(runs), b.ns, b.allocs
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
			sort.Float64s(vs)
			if out == nil {
				out = map[string]float64{}
			}
			out[k] = vs[len(vs)/2]
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
				if err := body(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
