package storagetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/krules-go/krules/storage"
)

// Run runs every conformance test of the storage contract as subtests of t:
// the storage-level behaviour of every [storage.Backend] method, value
// round-trip identity, subject and property names that must be taken
// literally, cancelled contexts, exact totals under concurrent atomic
// updates, and the behaviour of krules Subjects of an App built on the
// backend.
//
// newBackend returns a fresh, EMPTY backend for one subtest (its own key
// prefix, table or file) and registers its cleanup (Close, dropping the
// table, ...) with t.Cleanup; it fails t when the backend cannot be created.
// Every subtest also uses subject names unique to itself and flushes them
// when it ends, so the suite leaves no data behind and is safe when backends
// share a server.
//
// The suite asserts sets of property names, never their order (only some
// backends keep insertion order). Values read back must have the exact Go
// types of the value model (int64, float64, string, bool, nil, []any,
// map[string]any), not merely be [storage.Equal]. Under concurrency an
// update that fails with [storage.ErrConflict] wrote nothing by contract and
// is retried by the suite; the number of conflicts is logged.
// testing.Short() and the race detector scale the concurrent workloads down.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	t.Helper()
	RunConfig(t, Config{New: newBackend})
}

// Config is the full form of the arguments of [Run].
type Config struct {
	// New returns a fresh, empty backend for one subtest, as the newBackend
	// argument of Run. Required.
	New func(t *testing.T) storage.Backend

	// RawPut, when set, writes raw as the stored text of property k of
	// subject on b (a backend New returned), bypassing the value model, as
	// Python KRules or another program could. It reports false when the
	// store itself cannot hold that text (PostgreSQL's JSONB refuses NaN and
	// \u0000), and fails t on any other error. The property does not exist
	// when RawPut is called; the subject may. With RawPut the "Invalid/..."
	// subtests check the tolerant loads of storage.Invalid on the backend;
	// without it they are not run (a backend that can hold only what Go
	// wrote, like storage/memory, needs none).
	RawPut func(t *testing.T, b storage.Backend, subject string, k storage.Key, raw string) bool

	// Parallel, when above 1, runs up to that many subtests at once, each
	// still on its own fresh backend from New and its own subjects: the
	// suite takes as long as its slowest subtests instead of their sum when
	// the time goes to round trips to a server, fsyncs or lock waits. The
	// subtests are started from goroutines of the suite (t.Run, not
	// t.Parallel, so go test's -parallel limit, GOMAXPROCS by default, does
	// not apply); their -v output interleaves. New must then be safe for
	// concurrent use, and the backends it returns must not share state that
	// a subtest could observe (a server shared under distinct key prefixes,
	// tables or files is fine). 0 or 1 (the default): one after another.
	Parallel int

	// ScaleDown, when above 1, divides the number of updates each of the 32
	// goroutines of the concurrent subtests makes (Concurrency/* and
	// Subject/NoCacheExactUnderConcurrency: 500 by default, 100 under the
	// race detector, 50 with testing.Short(); at least 5 after the
	// division). The assertions stay the same (exact totals, every
	// increment seeing a distinct old value, no other property lost); only
	// the number of rounds shrinks. Meant for a backend whose writes are
	// expensive and serialised by one lock (a file store, an embedded
	// database, a router over one), where more rounds repeat the same
	// interleavings at a high cost in test time. 0 or 1 (the default): the
	// full counts.
	ScaleDown int
}

// RunConfig runs the conformance suite as [Run] does, with the options of
// cfg.
func RunConfig(t *testing.T, cfg Config) {
	t.Helper()
	if cfg.New == nil {
		t.Fatal("storagetest: Config.New is nil")
	}
	var subtests []subtest
	for _, tc := range storageTests {
		subtests = append(subtests, subtest{tc.name, func(t *testing.T) {
			s := newSuite(t, cfg.New)
			s.scaleDown = cfg.ScaleDown
			tc.fn(t, s)
		}})
	}
	subtests = append(subtests, subjectSubtests(cfg)...)
	subtests = append(subtests, subtest{"Op/Blind", func(t *testing.T) {
		testBlindOps(t, newAppSuite(t, cfg.New), cfg.RawPut)
	}})
	if cfg.RawPut != nil {
		subtests = append(subtests, invalidSubtests(cfg)...)
	}
	runSubtests(t, cfg.Parallel, subtests)
}

// subtest is one named subtest of a suite.
type subtest struct {
	name string
	fn   func(t *testing.T)
}

// runSubtests runs the subtests of t one after another, or up to parallel
// of them at once from goroutines (t.Run may be called concurrently; every
// call returns before runSubtests does). A subtest that stops with t.Fatal
// ends only its own goroutine.
func runSubtests(t *testing.T, parallel int, subtests []subtest) {
	t.Helper()
	if parallel <= 1 {
		for _, st := range subtests {
			t.Run(st.name, st.fn)
		}
		return
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, st := range subtests {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			t.Run(st.name, st.fn)
		})
	}
	wg.Wait()
}

type suiteTest struct {
	name string
	fn   func(t *testing.T, s *suite)
}

var storageTests = []suiteTest{
	{"Load/UnknownSubjectIsEmpty", testLoadUnknown},
	{"Load/AllPropertiesWithTypes", testLoadAll},
	{"Set/ReturnsNewAndOld", testSetNewOld},
	{"Set/NullCreatesProperty", testSetNull},
	{"Get/MissingIsErrNotFound", testGetMissing},
	{"Delete/ReturnsOldValue", testDelete},
	{"Store/DeletesThenPuts", testStoreDeletesThenPuts},
	{"Store/EmptyBatch", testStoreEmpty},
	{"Store/Atomic", testStoreAtomic},
	{"Kinds/IndependentNamespaces", testKinds},
	{"ExtProps/OnlyExtended", testExtProps},
	{"Flush/RemovesEverything", testFlush},
	{"Func/OldAndExists", testFuncOldExists},
	{"Func/ResultIsNormalised", testFuncNormalised},
	{"Func/MayMutateItsArgument", testFuncMutatesArg},
	{"Func/ErrorWritesNothing", testFuncError},
	{"Func/PanicWritesNothing", testFuncPanic},
	{"Op/Table", testOps},
	{"Op/IncExactUpTo2^53", testIncExact},
	{"Op/IncFloats", testIncFloats},
	{"Op/IncOverflow", testIncOverflow},
	{"Op/AppendTextChecks", testAppendBracketsAndLetters},
	{"Values/RoundTrip", testRoundTrip},
	{"Values/NoAliasing", testNoAliasing},
	{"Names/Subjects", testSubjectNames},
	{"Names/Properties", testPropertyNames},
	{"Names/MaxNameLen", testNamesMaxLen},
	{"Context/Cancelled", testCancelled},
	{"Concurrency/FuncExactTotal", testConcurrentFunc},
	{"Concurrency/OpIncExactTotal", testConcurrentOpInc},
	{"Concurrency/OtherPropertiesNotLost", testConcurrentMixed},
	{"Concurrency/DifferentSubjects", testConcurrentSubjects},
	{"Lister/LiteralPrefix", testLister},
}

// suite is the state of one subtest: a fresh backend and the subjects the
// subtest used, flushed at its end.
type suite struct {
	t   *testing.T
	b   storage.Backend
	ctx context.Context
	tag string
	reg *registry
	// scaleDown is Config.ScaleDown (see concurrency).
	scaleDown int
}

// registry records the subjects a subtest used.
type registry struct {
	mu       sync.Mutex
	subjects []string
}

func newSuite(t *testing.T, newBackend func(t *testing.T) storage.Backend) *suite {
	t.Helper()
	b := newBackend(t)
	if b == nil {
		t.Fatal("storagetest: newBackend returned a nil backend")
	}
	s := &suite{t: t, b: b, ctx: t.Context(), tag: randomName(""), reg: &registry{}}
	// Registered after newBackend's cleanups, so it runs before them (LIFO):
	// the backend is still open.
	t.Cleanup(s.cleanup)
	return s
}

// subject returns a subject name unique to this subtest that ends with
// name, and remembers it for the final flush.
func (s *suite) subject(name string) string {
	full := "st-" + s.tag + "-" + name
	s.reg.mu.Lock()
	if !slices.Contains(s.reg.subjects, full) {
		s.reg.subjects = append(s.reg.subjects, full)
	}
	s.reg.mu.Unlock()
	return full
}

// with returns a copy of s that reports to t (a nested subtest) and shares
// the backend, the tag and the subjects to flush.
func (s *suite) with(t *testing.T) *suite {
	c := *s
	c.t = t
	c.ctx = t.Context()
	return &c
}

func (s *suite) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	for _, name := range s.reg.subjects {
		if err := s.b.Flush(ctx, name); err != nil {
			s.t.Errorf("cleanup: Flush(%q): %v", name, err)
		}
	}
}

// pkey and ekey build default and extended keys.
func pkey(name string) storage.Key { return storage.Key{Kind: storage.Default, Name: name} }
func ekey(name string) storage.Key { return storage.Key{Kind: storage.Extended, Name: name} }

func keyString(k storage.Key) string { return fmt.Sprintf("%s property %q", k.Kind, k.Name) }

// norm normalises a Go value for the backend, failing the test on error.
func (s *suite) norm(v any) any {
	s.t.Helper()
	n, err := storage.Normalize(v)
	if err != nil {
		s.t.Fatalf("Normalize(%#v): %v", v, err)
	}
	return n
}

func (s *suite) set(subject string, k storage.Key, v any) (newV, oldV any) {
	s.t.Helper()
	nv, ov, err := s.b.Set(s.ctx, subject, k, storage.Mutation{Value: s.norm(v)})
	if err != nil {
		s.t.Fatalf("Set(%q, %s, %s): %v", subject, keyString(k), describe(v), err)
	}
	return nv, ov
}

func (s *suite) get(subject string, k storage.Key) any {
	s.t.Helper()
	v, err := s.b.Get(s.ctx, subject, k)
	if err != nil {
		s.t.Fatalf("Get(%q, %s): %v", subject, keyString(k), err)
	}
	return v
}

func (s *suite) load(subject string) storage.Snapshot {
	s.t.Helper()
	snap, err := s.b.Load(s.ctx, subject)
	if err != nil {
		s.t.Fatalf("Load(%q): %v", subject, err)
	}
	checkNoDuplicates(s.t, "Load("+subject+").Props", snap.Props)
	checkNoDuplicates(s.t, "Load("+subject+").Ext", snap.Ext)
	return snap
}

func (s *suite) store(subject string, b storage.Batch) {
	s.t.Helper()
	if err := s.b.Store(s.ctx, subject, b); err != nil {
		s.t.Fatalf("Store(%q, %+v): %v", subject, b, err)
	}
}

// expectValue checks that k of subject holds want, with identical types.
func (s *suite) expectValue(subject string, k storage.Key, want any) {
	s.t.Helper()
	got, err := s.b.Get(s.ctx, subject, k)
	if err != nil {
		s.t.Errorf("Get(%q, %s): %v; want %s", subject, keyString(k), err, describe(want))
		return
	}
	if !sameTypeEqual(got, want) {
		s.t.Errorf("Get(%q, %s) = %s, want %s", subject, keyString(k), describe(got), describe(want))
	}
}

// expectMissing checks that Get of k reports ErrNotFound.
// expectNotListed checks, on a backend that implements storage.Lister, that
// a write which wrote nothing left no subject behind.
func (s *suite) expectNotListed(subject string) {
	s.t.Helper()
	l, ok := s.b.(storage.Lister)
	if !ok {
		return
	}
	for name, err := range l.List(s.ctx, subject) {
		if err != nil {
			s.t.Fatalf("List(%q): %v", subject, err)
		}
		if name == subject {
			s.t.Errorf("subject %q is listed although no write to it succeeded", subject)
		}
	}
}

func (s *suite) expectMissing(subject string, k storage.Key) {
	s.t.Helper()
	got, err := s.b.Get(s.ctx, subject, k)
	if !errors.Is(err, storage.ErrNotFound) {
		s.t.Errorf("Get(%q, %s) = (%s, %v), want an error wrapping storage.ErrNotFound", subject, keyString(k), describe(got), err)
	}
}

// expectSnapshot checks Load against the wanted properties of both kinds
// (order ignored, types compared exactly).
func (s *suite) expectSnapshot(subject string, props, ext map[string]any) {
	s.t.Helper()
	snap := s.load(subject)
	compareProps(s.t, fmt.Sprintf("Load(%q).Props", subject), snap.Props, props)
	compareProps(s.t, fmt.Sprintf("Load(%q).Ext", subject), snap.Ext, ext)
}

func compareProps(t *testing.T, what string, got []storage.Property, want map[string]any) {
	t.Helper()
	gm := propMap(got)
	for name, w := range want {
		g, ok := gm[name]
		switch {
		case !ok:
			t.Errorf("%s lacks %q (want %s); it has %q", what, name, describe(w), propNames(got))
		case !sameTypeEqual(g, w):
			t.Errorf("%s[%q] = %s, want %s", what, name, describe(g), describe(w))
		}
	}
	for name, g := range gm {
		if _, ok := want[name]; !ok {
			t.Errorf("%s has unexpected property %q = %s", what, name, describe(g))
		}
	}
}

func checkNoDuplicates(t *testing.T, what string, ps []storage.Property) {
	t.Helper()
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		if seen[p.Name] {
			t.Errorf("%s lists property %q twice", what, p.Name)
		}
		seen[p.Name] = true
	}
}

func propNames(ps []storage.Property) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}
