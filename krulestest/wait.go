package krulestest

import (
	"testing"
	"time"
)

// PollInterval is how often Eventually checks its condition.
const PollInterval = 10 * time.Millisecond

// WaitFor waits until an event matching m has been recorded, for at most
// timeout, and returns the first match. It wakes up at each recorded event
// (no polling). On timeout it fails t with the events recorded so far and
// returns a zero Recorded; it does not stop the test (t.Errorf), so check
// the result's Type when later code depends on it.
//
// WaitFor blocks only on a timer and channels it creates itself, so inside
// a testing/synctest bubble the timeout is virtual: a deadline that cannot
// be met fails at once instead of stalling.
func (r *Recorder) WaitFor(t testing.TB, timeout time.Duration, m *Matcher) Recorded {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		ch := r.changed() // before reading, so no event is missed
		for _, e := range r.Events() {
			if m.Matches(e) {
				return e
			}
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Errorf("krulestest: no event within %v: expected %s\ngot:\n%s", timeout, m, dump(r.Events()))
			return Recorded{}
		}
	}
}

// Eventually calls cond until it returns nil, every PollInterval, for at
// most timeout. On timeout it fails t with cond's last error and reports
// false; it does not stop the test. It calls cond once before waiting, so
// a condition already met costs no wait. Works inside testing/synctest
// bubbles like WaitFor (the waits are virtual there).
func Eventually(t testing.TB, timeout time.Duration, cond func() error) bool {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return true
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			if err = cond(); err == nil {
				return true
			}
			t.Errorf("krulestest: condition not met within %v: %v", timeout, err)
			return false
		}
	}
}
