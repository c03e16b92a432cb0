// Package custombackend is the guide "Writing your own backend": a complete
// storage backend in one file (custombackend.go, a directory of JSON files,
// one per subject, shared between processes through flock(2)) and the tests
// that prove it (custombackend_test.go). Read it next to those two files;
// the steps below are marked in them.
//
// A krules App keeps subjects in a [storage.Backend]. krules ships memory,
// bolt, sqlite, redis, postgres and router backends; any other store (a
// key-value service, a document database, a cloud table) needs the eight
// methods of that interface, and the conformance suite
// storagetest.Run tells you when they are right.
//
// # Step 1: the interface
//
// Python KRules' SubjectStorage and storage.Backend have the same shape,
// with the subject name passed to every call instead of to a constructor
// (one Backend serves every subject of an App, from many goroutines):
//
//	Python SubjectStorage            storage.Backend
//	load() -> (props, ext_props)     Load(ctx, subject) (Snapshot, error)
//	store(inserts, updates, deletes) Store(ctx, subject, Batch) error           deletes first, then puts, all or nothing
//	set(prop) -> (new, old)          Set(ctx, subject, Key, Mutation) (new, old any, err error)
//	get(prop)  (AttributeError)      Get(ctx, subject, Key) (any, error)        missing: error wrapping storage.ErrNotFound
//	delete(prop)                     Delete(ctx, subject, Key) (old any, err error)  missing: storage.ErrNotFound
//	flush()                          Flush(ctx, subject) error                  unknown subject: no error
//	get_ext_props()                  ExtProps(ctx, subject) ([]Property, error)
//	is_persistent()                  Capabilities().Persistent
//	is_concurrency_safe()            Capabilities().Shared                      atomic across processes
//
// A [storage.Key] is a property name and its kind: [storage.Default]
// properties emit change events, [storage.Extended] ones are metadata; the
// two kinds are separate namespaces (a default and an extended property may
// share a name). Write `var _ storage.Backend = (*Backend)(nil)` so the
// compiler checks the method set. Every method takes a context: return its
// error (wrapped) when it is done, and never write after it is cancelled.
//
// # Step 2: values
//
// Values reach the backend normalised to the value model of package
// storage: nil, bool, int64, float64, string, []any and map[string]any.
// What a backend returns must have exactly those types again: int64(3)
// written must come back as int64(3), not float64(3), and []any{} not nil.
// [storage.Marshal] and [storage.Unmarshal] encode and decode that model as
// JSON with the model's number rule (an integral number within the int64
// range is an int64, any other number a float64), where encoding/json alone
// would return every number as a float64; use them, or your store's native
// types if they give the same types back. Names arrive
// validated (non-empty UTF-8 without NUL) but may hold any other character:
// '/', ':', '*', quotes, spaces. Take them literally (this backend names
// files by a hash of the subject and keeps the name inside; a SQL backend
// binds them as parameters; a key-value store must not let "a*" match "ab").
//
// # Step 3: atomicity
//
// Set is the heart of a backend. The [storage.Mutation] is a plain value, a
// built-in operation ([storage.OpInc], OpAppend, OpMax, OpMin) or an update
// function; [storage.Mutation.Apply] computes the new value from the stored
// one for all three. Read the old value, call Apply, write the result, all
// atomically: no other writer, in this process or (for a Shared store)
// another, may change the property in between. Two ways:
//
//   - lock, then read-modify-write (this backend: a mutex for the
//     goroutines, flock(2) for the processes; SQL: a transaction that locks
//     the row or the database first);
//   - optimistic: read, Apply, write only if unchanged (Redis WATCH, a
//     version column, compare-and-swap), retrying on a conflict. Apply may
//     then run several times, which is why update functions must be free of
//     side effects; once your retry bound is exhausted, return an error
//     wrapping [storage.ErrConflict] with nothing written.
//
// When Apply fails (an update function returned an error or panicked, an
// Inc found a string) write nothing and return its error. Pass an update
// function a [storage.Clone] of the stored value if you keep that value:
// the function may modify its argument. Store applies a [storage.Batch]
// (deletes, then puts) as one atomic change: a reader sees all of it or
// none. A store with server-side scripting may run the built-in operations
// there in one round trip (Capabilities().ServerSideOps, as redis and
// postgres do); computing them with Apply is always correct.
//
// # Step 4 (optional): listing subjects
//
// Implement [storage.Lister] when the store can enumerate subject names by
// a literal prefix; the CLI and tools use it, and the suite then checks it.
//
// # Step 5: prove it with storagetest.Run
//
// storagetest.Run runs the whole contract as subtests: every method,
// value round trips with exact types, literal names, cancelled contexts,
// exact totals from 32 goroutines of concurrent updates, and a krules App on
// the backend (write cache, Store, NoCache, change events). Give it a
// function returning a fresh, empty backend per subtest (its own directory,
// key prefix or table), with its cleanup registered on t:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Backend {
//			b, err := custombackend.Open(t.TempDir())
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
//
// A failure names the rule that broke ("Store/DeletesThenPuts",
// "Values/RoundTrip/max_int64", "Concurrency/FuncExactTotal") and `go test
// -run 'TestConformance/Values'` reruns one group. For a backend on a
// server, take its URL from an environment variable and skip the test when
// it is unset, so the package still tests without the server.
//
// # Step 6: shared stores: storagetest.Contention
//
// In-process goroutines do not prove that two processes cannot lose each
// other's updates. When Capabilities().Shared is true, also run
// storagetest.Contention: it re-executes the test binary as several
// processes that hammer one subject, and checks exact totals and that no
// two increments saw the same old value. Open must open the SAME store in
// every process for the namespace it is given; see TestContention in
// custombackend_test.go. A broken lock (a mutex alone, without flock) fails
// it within seconds.
//
// # Step 7: use it
//
//	backend, err := custombackend.Open("/var/lib/myapp/subjects")
//	app := krules.New(krules.WithStorage(backend))
//
// The Example of this package runs two Apps on one directory.
//
// This backend favours clarity over speed: every write rewrites the
// subject's file under one lock for the whole directory, and nothing is
// fsync'd (a process crash loses nothing, an OS crash may lose recent
// writes). storage/bolt and storage/sqlite are production versions of the
// same idea.
package custombackend
