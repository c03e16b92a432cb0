package redis

// UseWatch switches b to the WATCH/MULTI/EXEC design for update functions,
// so the tests can check and measure it against compare-and-set.
func UseWatch(b *Backend) { b.watch = true }
