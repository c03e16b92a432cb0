package nats

import "github.com/nats-io/nats.go/jetstream"

// SetTestHookBeforeAck installs a function the worker calls after an event
// was handled and committed, just before its ack: the window in which a
// crash makes the event come again. Tests only.
func SetTestHookBeforeAck(f func()) { testHookBeforeAck = f }

// MaxHeld and FetchBatch: how many events an owner holds per partition
// before it stops taking more, and its pull batch.
const (
	MaxHeld    = maxHeld
	FetchBatch = fetchBatch
)

// SetTestHookMessages makes the worker pull partition k through the
// iterator f returns (nil: the real one). Tests only.
func SetTestHookMessages(f func(k int, c jetstream.Consumer) jetstream.MessagesContext) {
	if f == nil {
		testHookMessages.Store(nil)
		return
	}
	testHookMessages.Store(&f)
}
