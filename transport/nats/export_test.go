package nats

// SetTestHookBeforeAck installs a function the worker calls after an event
// was handled and committed, just before its ack: the window in which a
// crash makes the event come again. Tests only.
func SetTestHookBeforeAck(f func()) { testHookBeforeAck = f }
