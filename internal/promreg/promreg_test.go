package promreg_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/krules-go/krules/internal/promreg"
)

func TestRegisterReusesAndRefuses(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "x_total", Help: "x"}
	a, err := promreg.Register("p", reg, prometheus.NewCounterVec(opts, []string{"l"}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := promreg.Register("p", reg, prometheus.NewCounterVec(opts, []string{"l"}))
	if err != nil || b != a {
		t.Fatalf("second registration: %v, same collector %v; want the first one reused", err, b == a)
	}
	// Same name, other labels: a real conflict.
	if _, err := promreg.Register("p", reg, prometheus.NewCounterVec(opts, []string{"other"})); err == nil {
		t.Fatal("conflicting registration: no error")
	}
}
