// Package feed is the transactional change feed of KRules: every committed
// property change reaches the handlers of worker processes, in per-subject
// commit order, without a window in which a crash loses it.
//
// A backend in feed mode (redis.Config{ChangeFeed: true},
// postgres.Config{ChangeFeed: true}, memory.New(memory.WithChangeFeed()))
// writes a change record (storage.Change) in the same atomic operation as
// every effective change of a default property (Set, Delete, the batch of
// Store) and for every Flush. A Relay moves the records to a NATS
// JetStream stream as the CloudEvents of the krules built-in events, and
// the worker groups of package transport/nats emit them into their Apps:
// a handler of subject-property-changed in any process sees PropertyName,
// OldValue, NewValue, Extra and the subject, as if the Set had been local.
//
// See the README section "Reacting to changes in other processes".
package feed
