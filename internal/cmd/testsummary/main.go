// Command testsummary reads the event stream of `go test -json` on stdin and
// prints what plain `go test` prints (one "ok" line per passing package, the
// whole output of failed tests and packages), plus what plain `go test`
// hides: below each package, one line per skip reason naming the skipped
// tests, e.g.
//
//	ok  	github.com/krules-go/krules/storage/postgres	1.3s
//	    skipped TestConformance, TestContention, … (14 tests): KRULES_POSTGRES_URL not set: skipping integration test
//
// It is the README's test command:
//
//	go test -race -p 4 -gcflags='modernc.org/...=-d=checkptr=0' -count=1 -json ./... | go run ./internal/cmd/testsummary
//
// It exits with status 1 when a test, a package or a build failed, or when
// the input holds no test event at all (go test could not start), and 0
// otherwise.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail events
}

// testLog is the output of one test, kept until the test ends.
type testLog struct {
	lines  []string
	result string // "", "pass", "fail", "skip"
}

// line is one output line of a package, in arrival order; test is nil for
// the package's own output.
type line struct {
	test *testLog
	text string
}

// pkgState is what is known of one package while its tests run.
type pkgState struct {
	tests   map[string]*testLog
	lines   []line
	skipped []skip
}

// failureOutput is what go test prints of a failed package: the lines of
// the package itself and of every test that failed or never ended (a panic,
// a timeout), in order.
func (p *pkgState) failureOutput() string {
	var sb strings.Builder
	for _, l := range p.lines {
		if l.test == nil || (l.test.result != "pass" && l.test.result != "skip") {
			sb.WriteString(l.text)
		}
	}
	return sb.String()
}

type skip struct{ test, reason string }

func main() {
	failed, err := summarize(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
	if failed {
		os.Exit(1)
	}
}

// summarize prints the summary of the events read from r to w and reports
// whether anything failed.
func summarize(r io.Reader, w io.Writer) (failed bool, err error) {
	pkgs := map[string]*pkgState{}
	state := func(name string) *pkgState {
		p := pkgs[name]
		if p == nil {
			p = &pkgState{tests: map[string]*testLog{}}
			pkgs[name] = p
		}
		return p
	}
	var events, okPkgs, failedPkgs, skips int
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		raw := sc.Bytes()
		var ev event
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &ev) != nil {
			// Not an event (go test prints some errors this way): pass it on.
			fmt.Fprintf(w, "%s\n", raw)
			continue
		}
		events++
		switch ev.Action {
		case "build-output":
			fmt.Fprint(w, ev.Output)
			continue
		case "build-fail":
			failed = true
			continue
		}
		p := state(ev.Package)
		if ev.Test == "" {
			switch ev.Action {
			case "output":
				p.lines = append(p.lines, line{nil, ev.Output})
			case "pass", "skip": // skip: no test files
				if ev.Action == "pass" {
					okPkgs++
				}
				printSummaryLines(w, p.lines)
				skips += len(p.skipped)
				printSkips(w, p.skipped)
				delete(pkgs, ev.Package)
			case "fail":
				failed = true
				failedPkgs++
				fmt.Fprint(w, p.failureOutput())
				skips += len(p.skipped)
				printSkips(w, p.skipped)
				delete(pkgs, ev.Package)
			}
			continue
		}
		tl := p.tests[ev.Test]
		if tl == nil {
			tl = &testLog{}
			p.tests[ev.Test] = tl
		}
		switch ev.Action {
		case "output":
			tl.lines = append(tl.lines, ev.Output)
			p.lines = append(p.lines, line{tl, ev.Output})
		case "pass":
			tl.result = "pass"
		case "skip":
			p.skipped = append(p.skipped, skip{ev.Test, skipReason(tl.lines)})
			tl.result = "skip"
		case "fail":
			tl.result = "fail"
		}
	}
	if err := sc.Err(); err != nil {
		return true, err
	}
	// Packages whose stream ended without a final event.
	for name, p := range pkgs {
		failed = true
		failedPkgs++
		fmt.Fprint(w, p.failureOutput())
		fmt.Fprintf(w, "FAIL\t%s\t(no result: the test binary did not finish)\n", name)
	}
	if events == 0 {
		return true, fmt.Errorf("no test events on stdin (run: go test -json ... | go run ./internal/cmd/testsummary)")
	}
	fmt.Fprintf(w, "testsummary: %d packages ok, %d failed", okPkgs, failedPkgs)
	if skips > 0 {
		fmt.Fprintf(w, ", %d tests skipped (reasons above)", skips)
	} else {
		fmt.Fprint(w, ", no test skipped")
	}
	fmt.Fprintln(w)
	if failed {
		fmt.Fprintln(w, "FAIL")
	}
	return failed, nil
}

// printSummaryLines prints the package result lines go test prints for a
// passing package ("ok  \tpkg\t1.2s", "?   \tpkg\t[no test files]"), and
// nothing of the tests' chatter.
func printSummaryLines(w io.Writer, lines []line) {
	for _, l := range lines {
		if l.test == nil && (strings.HasPrefix(l.text, "ok  \t") || strings.HasPrefix(l.text, "?   \t")) {
			fmt.Fprint(w, l.text)
		}
	}
}

// printSkips prints one line per distinct reason: the skipped tests (a
// top-level test whose subtests were skipped is named once, with their
// count) and the reason.
func printSkips(w io.Writer, skipped []skip) {
	var reasons []string
	byReason := map[string]map[string]int{} // reason → top-level test → skipped subtests
	for _, s := range skipped {
		tops := byReason[s.reason]
		if tops == nil {
			tops = map[string]int{}
			byReason[s.reason] = tops
			reasons = append(reasons, s.reason)
		}
		top, _, sub := strings.Cut(s.test, "/")
		if sub {
			tops[top]++
		} else {
			tops[top] += 0
		}
	}
	for _, reason := range reasons {
		tops := byReason[reason]
		names := slices.Sorted(maps.Keys(tops))
		more := ""
		if len(names) > 5 {
			more = fmt.Sprintf(" and %d more", len(names)-4)
			names = names[:4]
		}
		for i, n := range names {
			if c := tops[n]; c > 0 {
				names[i] = fmt.Sprintf("%s (%d subtests)", n, c)
			}
		}
		fmt.Fprintf(w, "    skipped %s%s: %s\n", strings.Join(names, ", "), more, reason)
	}
}

// fileLine is the "file.go:12: " prefix testing puts before a log line.
var fileLine = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)

// skipReason extracts the message of t.Skip from a skipped test's output.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		msg = append(msg, fileLine.ReplaceAllString(t, ""))
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	// The last message is the one of the Skip call.
	return msg[len(msg)-1]
}
