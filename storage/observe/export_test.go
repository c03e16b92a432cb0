package observe

import "github.com/prometheus/client_golang/prometheus"

// Total exposes the counter to the tests.
func (m *Metrics) Total() *prometheus.CounterVec { return m.total }
