// Package storagetest is the conformance suite of krules storage backends,
// in the style of testing/slogtest: a backend proves it implements the
// [storage.Backend] contract by running the suite from its own tests.
//
// # Conformance
//
// Run runs every behaviour of the contract as subtests. newBackend returns a
// fresh, empty backend for one subtest (its own key prefix, table or file)
// and registers its cleanup with t.Cleanup:
//
//	func TestConformance(t *testing.T) {
//		url := testenv.RedisURL(t)
//		storagetest.Run(t, func(t *testing.T) storage.Backend {
//			b, err := redisstore.New(ctx, url, redisstore.WithPrefix(testenv.Unique("st")))
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
//
// Every subtest uses subject names unique to itself and flushes them when it
// ends, so the suite is safe on a server shared with other tests.
//
// # Contention across processes
//
// Contention checks that a store shared by several OS processes stays exact
// under heavy contention. It re-executes the test binary; the test that calls
// it must do nothing else of importance, since its code also runs in the
// children:
//
//	func TestContention(t *testing.T) {
//		url := testenv.RedisURL(t)
//		storagetest.Contention(t, storagetest.ContentionConfig{
//			Open: func(t testing.TB, namespace string) storage.Backend {
//				b, err := redisstore.New(t.Context(), url, redisstore.WithPrefix(namespace))
//				if err != nil {
//					t.Fatal(err)
//				}
//				t.Cleanup(func() { b.Close() })
//				return b
//			},
//		})
//	}
package storagetest
