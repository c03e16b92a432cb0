// Package promreg registers Prometheus collectors so that a second
// registration of the same metric (a second wrapper or middleware on one
// registry) reuses the collector already registered instead of failing.
package promreg

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns it, or returns the collector of
// the same description that reg already holds. Any other registration error
// is returned wrapped, prefixed with pkg (the caller's package, for the
// message).
func Register[C prometheus.Collector](pkg string, reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		var zero C
		return zero, fmt.Errorf("%s: register: %w", pkg, err)
	}
	return c, nil
}
