package redis

import (
	"context"
	"sync"
)

// keyLocks serialises, inside one process, the update functions that target
// the same property. Without it, goroutines of one process would race each
// other's compare-and-set on a hot property and mostly fail; with it, only
// writers in other processes (or plain writes) can cause a conflict, and a
// waiting goroutine starts from the value the previous holder wrote instead
// of reading it again.
//
// An entry lives only while some goroutine holds or waits for it.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	token chan struct{} // capacity 1: holding the token is holding the lock
	refs  int           // holders + waiters; guarded by keyLocks.mu

	// Guarded by the token. hint is the text the previous holder saw stored
	// last (hintExists false: the property was missing); hintOK tells whether
	// there is one. It is only a hint: the compare-and-set checks it.
	hint       string
	hintExists bool
	hintOK     bool
}

// acquire takes the lock of name, waiting at most until ctx is done.
func (t *keyLocks) acquire(ctx context.Context, name string) (*keyLock, error) {
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[string]*keyLock)
	}
	l := t.m[name]
	if l == nil {
		l = &keyLock{token: make(chan struct{}, 1)}
		t.m[name] = l
	}
	l.refs++
	t.mu.Unlock()
	select {
	case l.token <- struct{}{}:
		return l, nil
	case <-ctx.Done():
		t.unref(name, l)
		return nil, ctx.Err()
	}
}

// release gives the lock of name back.
func (t *keyLocks) release(name string, l *keyLock) {
	<-l.token
	t.unref(name, l)
}

func (t *keyLocks) unref(name string, l *keyLock) {
	t.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(t.m, name)
	}
	t.mu.Unlock()
}
