package cloudevents

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/krules-go/krules/internal/promreg"
)

// Metric names of HTTPMetrics (with an empty MetricsConfig.Namespace).
const (
	ReceiverRequestsName = "krules_http_receiver_requests_total"
	ReceiverDurationName = "krules_http_receiver_request_duration_seconds"
	DispatchRequestsName = "krules_http_dispatch_requests_total"
	DispatchDurationName = "krules_http_dispatch_request_duration_seconds"
)

// Outcome label values of HTTPMetrics.
const (
	// OutcomeOK: a 2xx answer.
	OutcomeOK = "ok"
	// OutcomeRejected: a 4xx answer (the Receiver refused the request:
	// malformed event, too large, wrong method; or the target refused a
	// dispatched event).
	OutcomeRejected = "rejected"
	// OutcomeError: a 5xx (or other non-2xx, non-4xx) answer; for a
	// dispatch also a request that got no answer (code label "").
	OutcomeError = "error"
)

// MetricsConfig configures NewHTTPMetrics. The zero value registers on
// prometheus.DefaultRegisterer.
type MetricsConfig struct {
	// Registerer receives the collectors. Default
	// prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer
	// Namespace, if set, prefixes the metric names: <namespace>_krules_...
	Namespace string
	// ConstLabels are added to every metric (e.g. {"service": "orders"}).
	ConstLabels prometheus.Labels
	// Buckets of the duration histograms, in seconds. Default
	// prometheus.DefBuckets.
	Buckets []float64
}

// HTTPMetrics counts and times the requests of a Receiver and of a
// Dispatcher, by outcome and status code:
//
//	krules_http_receiver_requests_total{outcome, code}             counter
//	krules_http_receiver_request_duration_seconds{outcome, code}   histogram
//	krules_http_dispatch_requests_total{outcome, code}             counter
//	krules_http_dispatch_request_duration_seconds{outcome, code}   histogram
//
// code is the HTTP status ("202", "400", ...), "" for a dispatch that got
// no answer (connection refused, timeout). A receiver request's duration
// includes running the App's handlers (the Receiver answers after them).
// Safe for concurrent use.
type HTTPMetrics struct {
	rcvTotal, dispTotal *prometheus.CounterVec
	rcvDur, dispDur     *prometheus.HistogramVec
}

// NewHTTPMetrics creates the collectors and registers them. Collectors
// already registered with the same names and labels (a second call in the
// process) are reused; any other registration conflict is returned.
func NewHTTPMetrics(cfg MetricsConfig) (*HTTPMetrics, error) {
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	buckets := cfg.Buckets
	if len(buckets) == 0 {
		buckets = prometheus.DefBuckets
	}
	labels := []string{"outcome", "code"}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: cfg.Namespace, Name: name, Help: help, ConstLabels: cfg.ConstLabels}, labels)
	}
	histogram := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: cfg.Namespace, Name: name, Help: help, ConstLabels: cfg.ConstLabels, Buckets: buckets}, labels)
	}
	m := &HTTPMetrics{}
	var err error
	if m.rcvTotal, err = register(reg, counter(ReceiverRequestsName, "CloudEvents HTTP receiver requests by outcome and status code.")); err != nil {
		return nil, err
	}
	if m.rcvDur, err = register(reg, histogram(ReceiverDurationName, "Duration of CloudEvents HTTP receiver requests (handlers included), in seconds.")); err != nil {
		return nil, err
	}
	if m.dispTotal, err = register(reg, counter(DispatchRequestsName, "CloudEvents HTTP dispatch requests by outcome and status code.")); err != nil {
		return nil, err
	}
	if m.dispDur, err = register(reg, histogram(DispatchDurationName, "Duration of CloudEvents HTTP dispatch requests, in seconds.")); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	return promreg.Register("krules/cloudevents", reg, c)
}

// outcomeOf maps a status code to an outcome label value.
func outcomeOf(code int) string {
	switch {
	case code >= 200 && code <= 299:
		return OutcomeOK
	case code >= 400 && code <= 499:
		return OutcomeRejected
	}
	return OutcomeError
}

// Handler wraps an http.Handler (a Receiver) and observes every request it
// serves: the status code written (200 when the handler writes a body
// without one) and the time until the handler returned.
func (m *HTTPMetrics) Handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			c := strconv.Itoa(code)
			o := outcomeOf(code)
			m.rcvDur.WithLabelValues(o, c).Observe(time.Since(start).Seconds())
			m.rcvTotal.WithLabelValues(o, c).Inc()
		}()
		h.ServeHTTP(sw, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Transport wraps an http.RoundTripper (nil: http.DefaultTransport) and
// observes every request it sends: the answer's status code, or outcome
// error with code "" when there is no answer. Use it as the Transport of
// DispatcherConfig.Client (it combines with TraceTransport either way
// round):
//
//	client := &http.Client{Timeout: cloudevents.DefaultDispatchTimeout, Transport: m.Transport(nil)}
//	d := cloudevents.NewDispatcher(cloudevents.DispatcherConfig{Client: client})
func (m *HTTPMetrics) Transport(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		start := time.Now()
		resp, err := rt.RoundTrip(r)
		o, c := OutcomeError, ""
		if err == nil {
			o, c = outcomeOf(resp.StatusCode), strconv.Itoa(resp.StatusCode)
		}
		m.dispDur.WithLabelValues(o, c).Observe(time.Since(start).Seconds())
		m.dispTotal.WithLabelValues(o, c).Inc()
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
