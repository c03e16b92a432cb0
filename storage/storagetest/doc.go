// Package storagetest is the conformance suite of krules storage backends,
// in the style of testing/slogtest: a backend proves that it implements the
// [storage.Backend] contract by running the suite from its own tests.
// examples/custombackend is a walk-through: a complete small backend and
// the tests that prove it with this package.
//
// # Conformance: Run
//
// [Run] runs every behaviour of the contract as named subtests
// ("Store/DeletesThenPuts", "Values/RoundTrip", "Subject/FlushEvents", ...),
// so a failure names the rule that broke and `go test -run` can select one.
// newBackend returns a fresh, empty backend for one subtest (its own key
// prefix, table or file) and registers its cleanup with t.Cleanup. For a
// backend "mystore" with an Open(ctx, url, prefix) constructor:
//
//	func TestConformance(t *testing.T) {
//		url := testenv.RedisURL(t) // skips, or fails under KRULES_REQUIRE_SERVICES=1
//		storagetest.Run(t, func(t *testing.T) storage.Backend {
//			b, err := mystore.Open(t.Context(), url, testenv.Unique("st"))
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
//
// What the suite checks:
//
//   - every method: Load of an unknown subject, Set returning (new, old),
//     Get and Delete of a missing property (storage.ErrNotFound), Store
//     applying deletes before puts atomically, default and extended
//     properties as separate namespaces, ExtProps, Flush;
//   - update functions (old and exists, normalised results, errors and panics
//     writing nothing) and every built-in operation on missing, null, valid
//     and wrongly typed values, with exact integers up to 2^53;
//   - value round-trip identity: what Set, Store or an update function wrote
//     comes back from Get, Load and ExtProps with the same Go types (int64 is
//     not float64; an empty list is not nil);
//   - subject and property names with ':', '*', '?', '[', '{}', '%', '_',
//     quotes, backslashes, spaces and non-ASCII characters, which must be
//     taken literally (flushing "a*" never touches "ab");
//   - a cancelled context (context.Canceled, nothing written);
//   - exact totals from 32 goroutines × 500 atomic updates, by update
//     function and by OpInc, while other properties of the same subject
//     are written (100 updates under the race detector, 50 with
//     testing.Short(); Config.ScaleDown divides them for a backend with
//     expensive, serialised writes);
//   - storage.Lister, when implemented;
//   - through a krules App on the backend: the Subject write cache and
//     Store, NoCache, delete-then-set before Store, Flush events, extended
//     properties never emitting, values after a reload equal to what
//     handlers saw, and exact NoCache Inc / Update totals.
//
// Property order is not asserted (hash-based stores do not keep it). Every
// subtest uses subject names unique to itself and flushes them when it ends,
// so the suite leaves no data behind and is safe on a shared server. An
// update that reports storage.ErrConflict wrote nothing by contract; the
// suite retries it and logs how many conflicts it saw.
//
// # Contention across processes
//
// [Contention] checks a store shared by several OS processes: it re-executes
// the test binary, each child hammers one subject with function and OpInc
// increments and writes of its own properties, and the parent asserts exact
// totals, that no two increments saw the same old value, and that no write
// was lost. The calling test's code also runs in the children, so keep it to
// the call:
//
//	func TestContention(t *testing.T) {
//		url := testenv.RedisURL(t)
//		storagetest.Contention(t, storagetest.ContentionConfig{
//			Open: func(t testing.TB, namespace string) storage.Backend {
//				b, err := mystore.Open(context.Background(), url, namespace)
//				if err != nil {
//					t.Fatal(err)
//				}
//				t.Cleanup(func() { b.Close() })
//				return b
//			},
//		})
//	}
package storagetest
