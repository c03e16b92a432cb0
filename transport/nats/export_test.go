package nats

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
