//go:build race

package feed_test

// Under the race detector every child process is a race binary (slow to
// start): the kill tests run for less time so the package stays within a
// minute.
func init() { raceEnabled = true }
