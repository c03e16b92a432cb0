package storagetest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/krules-go/krules/storage"
)

// ContentionConfig configures [Contention].
type ContentionConfig struct {
	// Procs is the number of OS processes that update the store at once.
	// Default 2.
	Procs int
	// Goroutines is the number of concurrent updaters in each process.
	// Default 16.
	Goroutines int
	// Updates is the number of iterations of each goroutine. Default 500.
	Updates int
	// Open opens the SAME store in the parent and in every child process.
	// namespace is a key prefix / table name chosen by the parent (a
	// lowercase letter followed by [a-z0-9_], unique to this run) and passed
	// to the children through the environment; the store opened for one
	// namespace must be the same in every process. Open registers only the
	// backend's Close with t.Cleanup: Open also runs in the children, so a
	// cleanup that removes data (dropping a table, deleting keys) would pull
	// the store from under the other processes. The parent flushes the
	// subjects it used; a test that must drop a table does so after
	// Contention returns, in the parent. Open fails t when the store cannot
	// be opened. Required.
	Open func(t testing.TB, namespace string) storage.Backend
}

// Environment variables through which the parent passes the work to its
// children.
const (
	envChild      = "KRULES_STORAGETEST_CONTENTION" // the test name; marks a child
	envNamespace  = "KRULES_STORAGETEST_NAMESPACE"
	envProc       = "KRULES_STORAGETEST_PROC"
	envGoroutines = "KRULES_STORAGETEST_GOROUTINES"
	envUpdates    = "KRULES_STORAGETEST_UPDATES"
	envReportDir  = "KRULES_STORAGETEST_REPORT_DIR"
)

const readyLine = "krules-storagetest: child ready"

// Property names Contention uses inside its subject.
const (
	propFunc = "func-counter" // incremented by an update function
	propOp   = "op-counter"   // incremented by OpInc
)

// writerProp is the default property goroutine g of process p sets with
// plain Sets; writerExt the extended one it writes with Store batches.
func writerProp(p, g int) string { return fmt.Sprintf("w-%d-%d", p, g) }
func writerExt(p, g int) string  { return fmt.Sprintf("x-%d-%d", p, g) }

// Contention checks that a backend shared by several OS processes stays
// exact under contention. It re-executes the current test binary
// (os.Args[0], with -test.run selecting exactly the calling test and an
// environment marker) cfg.Procs times; in such a child process the same
// call performs the work instead of spawning, and returns.
//
// Every goroutine of every child, for each of cfg.Updates iterations,
// increments one counter with an update function ([storage.Mutation].Func),
// a second counter with [storage.OpInc], and writes a property of its own
// of the same subject (alternately a plain Set of a default property and a
// Store batch of an extended one). The parent waits for the children, then
// asserts that both counters equal Procs×Goroutines×Updates, that every
// increment returned a distinct new value with old = new-1 (no two updates
// saw the same old value), and that no write to the other properties was
// lost or overwritten by a counter update.
//
// An update that fails with [storage.ErrConflict] (the backend's optimistic
// retry bound was exhausted) wrote nothing by contract, so it is retried by
// the test and counted in the log; any other error fails the child. The
// children report failures through their exit status and output, which the
// parent includes in its failure message.
//
// Call Contention at most once per test (use subtests for several
// configurations); code of the test before the call also runs in the
// children. Contention needs a backend whose [storage.Capabilities].Shared
// is true; it cannot be meaningful for a per-process store such as
// storage/memory.
func Contention(t *testing.T, cfg ContentionConfig) {
	t.Helper()
	if cfg.Open == nil {
		t.Fatal("storagetest.Contention: ContentionConfig.Open is nil")
	}
	if os.Getenv(envChild) != "" {
		contentionChild(t, cfg)
		return
	}
	contentionParent(t, cfg)
}

func (c *ContentionConfig) defaults() {
	if c.Procs <= 0 {
		c.Procs = 2
	}
	if c.Goroutines <= 0 {
		c.Goroutines = 16
	}
	if c.Updates <= 0 {
		c.Updates = 500
	}
}

// contentionSubject is the subject Contention works on inside namespace.
func contentionSubject(namespace string) string {
	return "storagetest:contention:" + namespace
}

// runPattern returns a -test.run pattern selecting exactly the test name.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// randomName returns prefix followed by 10 random [a-z0-9] characters.
func randomName(prefix string) string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 10)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return prefix + string(b)
}

// childReport is what a child writes for the parent: the new values its
// counter updates returned.
type childReport struct {
	Func []int64 `json:"func"`
	Op   []int64 `json:"op"`
	// Conflicts counts ErrConflict results that were retried.
	Conflicts int `json:"conflicts"`
}

type childResult struct {
	proc   int
	ready  bool
	err    error
	output bytes.Buffer
}

func contentionParent(t *testing.T, cfg ContentionConfig) {
	t.Helper()
	cfg.defaults()
	ctx := t.Context()
	namespace := randomName("st_")
	subject := contentionSubject(namespace)
	b := cfg.Open(t, namespace)
	if b == nil {
		t.Fatal("storagetest.Contention: Open returned a nil backend")
	}
	if caps := b.Capabilities(); !caps.Shared {
		t.Fatalf("storagetest.Contention: backend %T does not declare Capabilities().Shared; a per-process store cannot be tested across processes", b)
	}
	t.Cleanup(func() {
		if err := b.Flush(context.Background(), subject); err != nil {
			t.Errorf("cleanup: flush %q: %v", subject, err)
		}
	})
	if err := b.Flush(ctx, subject); err != nil {
		t.Fatalf("flush %q before the run: %v", subject, err)
	}
	reportDir := t.TempDir()

	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	results := make([]*childResult, cfg.Procs)
	stdins := make([]io.WriteCloser, cfg.Procs)
	cmds := make([]*exec.Cmd, cfg.Procs)
	readyCh := make(chan *childResult, cfg.Procs)
	var wg sync.WaitGroup
	for p := range cfg.Procs {
		r := &childResult{proc: p}
		results[p] = r
		cmd := exec.CommandContext(ctx, exe,
			"-test.run="+runPattern(t.Name()),
			"-test.count=1",
			"-test.v=true",
		)
		cmd.Env = append(os.Environ(),
			envChild+"="+t.Name(),
			envNamespace+"="+namespace,
			envProc+"="+strconv.Itoa(p),
			envGoroutines+"="+strconv.Itoa(cfg.Goroutines),
			envUpdates+"="+strconv.Itoa(cfg.Updates),
			envReportDir+"="+reportDir,
		)
		cmd.Stderr = &lockedWriter{w: &r.output}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatalf("child %d: stdout pipe: %v", p, err)
		}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatalf("child %d: stdin pipe: %v", p, err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start child %d (%s): %v", p, exe, err)
		}
		cmds[p], stdins[p] = cmd, stdin
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Copy the child's output, telling the parent once it is ready.
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 16<<20)
			signalled := false
			for sc.Scan() {
				line := sc.Text()
				cmd.Stderr.Write([]byte(line + "\n"))
				if !signalled && strings.Contains(line, readyLine) {
					signalled = true
					r.ready = true
					readyCh <- r
				}
			}
			io.Copy(io.Discard, stdout)
			r.err = cmd.Wait()
			if !signalled {
				readyCh <- r // exited (or crashed) before being ready
			}
		}()
	}
	// Barrier: release the children together once each is ready (or dead).
	for range cfg.Procs {
		<-readyCh
	}
	for _, in := range stdins {
		in.Close()
	}
	wg.Wait()

	failed := false
	for _, r := range results {
		if r.err != nil || !r.ready {
			failed = true
			t.Errorf("child process %d failed (ready=%v, exit: %v); its output:\n%s", r.proc, r.ready, r.err, indent(r.output.String()))
		}
	}
	if failed {
		t.FailNow()
	}

	reports := make([]childReport, cfg.Procs)
	for p := range cfg.Procs {
		data, err := os.ReadFile(filepath.Join(reportDir, fmt.Sprintf("proc-%d.json", p)))
		if err != nil {
			t.Fatalf("child %d wrote no report: %v; its output:\n%s", p, err, indent(results[p].output.String()))
		}
		if err := json.Unmarshal(data, &reports[p]); err != nil {
			t.Fatalf("child %d report: %v", p, err)
		}
	}
	verifyWorkload(t, ctx, b, subject, cfg, reports)
}

// verifyWorkload checks the outcome of mixedWorkload run by cfg.Procs
// processes (or once in process, Procs 1) that produced reports.
func verifyWorkload(t *testing.T, ctx context.Context, b storage.Backend, subject string, cfg ContentionConfig, reports []childReport) {
	t.Helper()
	// Every increment returned a distinct new value: together they are 1..N.
	n := int64(cfg.Procs * cfg.Goroutines * cfg.Updates)
	var funcVals, opVals []int64
	conflicts := 0
	for _, rep := range reports {
		funcVals = append(funcVals, rep.Func...)
		opVals = append(opVals, rep.Op...)
		conflicts += rep.Conflicts
	}
	if conflicts > 0 {
		t.Logf("%d updates returned ErrConflict and were retried", conflicts)
	}
	checkSequence(t, "update-function increments (Mutation.Func)", funcVals, n)
	checkSequence(t, "OpInc increments", opVals, n)

	// Final values, read by the parent.
	for _, c := range []struct {
		prop string
		want int64
	}{{propFunc, n}, {propOp, n}} {
		v, err := b.Get(ctx, subject, storage.Key{Kind: storage.Default, Name: c.prop})
		switch {
		case err != nil:
			t.Errorf("Get %q after the run: %v", c.prop, err)
		case !sameTypeEqual(v, c.want):
			t.Errorf("%q = %s after %d processes × %d goroutines × %d updates, want exactly int64(%d): updates were lost or duplicated",
				c.prop, describe(v), cfg.Procs, cfg.Goroutines, cfg.Updates, c.want)
		}
	}
	snap, err := b.Load(ctx, subject)
	if err != nil {
		t.Fatalf("Load after the run: %v", err)
	}
	props := propMap(snap.Props)
	ext := propMap(snap.Ext)
	sets, stores := writerCounts(cfg.Updates)
	for p := range cfg.Procs {
		for g := range cfg.Goroutines {
			if v, ok := props[writerProp(p, g)]; !ok || !sameTypeEqual(v, int64(sets)) {
				t.Errorf("default property %q written by plain Set = %s (present %v), want int64(%d): a concurrent counter update lost or overwrote it",
					writerProp(p, g), describe(v), ok, sets)
			}
			if v, ok := ext[writerExt(p, g)]; stores > 0 && (!ok || !sameTypeEqual(v, int64(stores))) {
				t.Errorf("extended property %q written by Store = %s (present %v), want int64(%d): a concurrent counter update lost or overwrote it",
					writerExt(p, g), describe(v), ok, stores)
			}
		}
	}
	if want := 2 + cfg.Procs*cfg.Goroutines; len(props) != want {
		t.Errorf("subject has %d default properties %v, want %d", len(props), sortedKeys(props), want)
	}
	if want := cfg.Procs * cfg.Goroutines * min(stores, 1); len(ext) != want {
		t.Errorf("subject has %d extended properties %v, want %d", len(ext), sortedKeys(ext), want)
	}
}

// writerCounts returns how many plain Sets and how many Stores a writer
// makes in updates iterations (even iterations Set, odd ones Store).
func writerCounts(updates int) (sets, stores int) {
	return (updates + 1) / 2, updates / 2
}

func checkSequence(t *testing.T, what string, vals []int64, n int64) {
	t.Helper()
	if int64(len(vals)) != n {
		t.Errorf("%s: children reported %d results, want %d", what, len(vals), n)
		return
	}
	slices.Sort(vals)
	for i, v := range vals {
		if v != int64(i+1) {
			dup := i > 0 && vals[i-1] == v
			t.Errorf("%s: the returned new values are not exactly 1..%d: position %d holds %d (duplicate: %v); two updates saw the same old value",
				what, n, i, v, dup)
			return
		}
	}
}

func contentionChild(t *testing.T, cfg ContentionConfig) {
	t.Helper()
	if name := os.Getenv(envChild); name != t.Name() {
		t.Skipf("storagetest.Contention child for %q: not this test (%q)", name, t.Name())
	}
	atoi := func(env string) int {
		n, err := strconv.Atoi(os.Getenv(env))
		if err != nil {
			t.Fatalf("child: bad %s=%q: %v", env, os.Getenv(env), err)
		}
		return n
	}
	proc, goroutines, updates := atoi(envProc), atoi(envGoroutines), atoi(envUpdates)
	namespace := os.Getenv(envNamespace)
	subject := contentionSubject(namespace)
	ctx := t.Context()

	b := cfg.Open(t, namespace)
	if b == nil {
		t.Fatal("child: Open returned a nil backend")
	}
	// Barrier: tell the parent we are ready, then wait for it to close stdin.
	fmt.Println(readyLine)
	io.Copy(io.Discard, os.Stdin)

	report, errs := mixedWorkload(ctx, b, subject, proc, goroutines, updates)
	for _, err := range errs {
		t.Error(err)
	}
	data, err := json.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(os.Getenv(envReportDir), fmt.Sprintf("proc-%d.json", proc))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("child: write report: %v", err)
	}
}

// incFunc is the update function of the counters: missing counts as 0.
func incFunc(old any, exists bool) (any, error) {
	if !exists {
		return int64(1), nil
	}
	n, ok := old.(int64)
	if !ok {
		return nil, fmt.Errorf("stored counter is %s, want int64", describe(old))
	}
	return n + 1, nil
}

// setRetrying calls b.Set, retrying while it reports ErrConflict (which by
// contract wrote nothing); retried counts the retries.
func setRetrying(ctx context.Context, b storage.Backend, subject string, k storage.Key, m storage.Mutation, retried *int) (any, any, error) {
	for range 1000 {
		nv, ov, err := b.Set(ctx, subject, k, m)
		if !errors.Is(err, storage.ErrConflict) {
			return nv, ov, err
		}
		*retried++
	}
	return nil, nil, fmt.Errorf("set %q of %q: 1000 consecutive ErrConflict", k.Name, subject)
}

// checkInc checks the result of one increment by 1: new is an int64 and old
// is new-1 (nil for the first).
func checkInc(what string, nv, ov any) (int64, error) {
	n, ok := nv.(int64)
	if !ok {
		return 0, fmt.Errorf("%s returned new value %s, want int64", what, describe(nv))
	}
	if !(n == 1 && ov == nil) && !sameTypeEqual(ov, n-1) {
		return 0, fmt.Errorf("%s returned (new %d, old %s): old is not new-1", what, n, describe(ov))
	}
	return n, nil
}

// mixedWorkload runs the work of one process of Contention: goroutines
// updaters, each making updates iterations of a function increment, an
// OpInc increment and a write of its own property. It returns the new
// values the increments returned and every failure.
func mixedWorkload(ctx context.Context, b storage.Backend, subject string, proc, goroutines, updates int) (childReport, []error) {
	opInc, err := storage.NewOp(storage.OpInc, 1)
	if err != nil {
		return childReport{}, []error{err}
	}
	var (
		mu     sync.Mutex
		report childReport
		errs   []error
		start  = make(chan struct{})
		wg     sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			<-start
			var funcVals, opVals []int64
			retried := 0
			err := func() error {
				own := storage.Key{Kind: storage.Default, Name: writerProp(proc, g)}
				ownExt := storage.Key{Kind: storage.Extended, Name: writerExt(proc, g)}
				var lastSet any
				sets := 0
				for i := range updates {
					nv, ov, err := setRetrying(ctx, b, subject, storage.Key{Kind: storage.Default, Name: propFunc}, storage.Mutation{Func: incFunc}, &retried)
					if err != nil {
						return fmt.Errorf("update-function increment: %w", err)
					}
					n, err := checkInc("update-function increment", nv, ov)
					if err != nil {
						return err
					}
					funcVals = append(funcVals, n)

					nv, ov, err = setRetrying(ctx, b, subject, storage.Key{Kind: storage.Default, Name: propOp}, storage.Mutation{Op: opInc}, &retried)
					if err != nil {
						return fmt.Errorf("OpInc increment: %w", err)
					}
					if n, err = checkInc("OpInc increment", nv, ov); err != nil {
						return err
					}
					opVals = append(opVals, n)

					if i%2 == 0 {
						sets++
						_, ov, err := setRetrying(ctx, b, subject, own, storage.Mutation{Value: int64(sets)}, &retried)
						if err != nil {
							return fmt.Errorf("plain Set of %q: %w", own.Name, err)
						}
						if !sameTypeEqual(ov, lastSet) {
							return fmt.Errorf("plain Set of %q (only this goroutine writes it) returned old %s, want %s: a concurrent write to another property overwrote it",
								own.Name, describe(ov), describe(lastSet))
						}
						lastSet = int64(sets)
					} else {
						err := b.Store(ctx, subject, storage.Batch{Puts: []storage.Write{{Key: ownExt, Value: int64(i/2 + 1)}}})
						if err != nil {
							return fmt.Errorf("store of %q: %w", ownExt.Name, err)
						}
					}
				}
				return nil
			}()
			mu.Lock()
			defer mu.Unlock()
			report.Func = append(report.Func, funcVals...)
			report.Op = append(report.Op, opVals...)
			report.Conflicts += retried
			if err != nil {
				errs = append(errs, fmt.Errorf("process %d goroutine %d: %w", proc, g, err))
			}
		})
	}
	close(start)
	wg.Wait()
	return report, errs
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "\t(no output)"
	}
	return "\t" + strings.ReplaceAll(s, "\n", "\n\t")
}
