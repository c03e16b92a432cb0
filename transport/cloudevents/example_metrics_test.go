package cloudevents_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

// Count the Receiver's requests by outcome and status code.
func ExampleHTTPMetrics_Handler() {
	reg := prometheus.NewRegistry()
	m, err := cloudevents.NewHTTPMetrics(cloudevents.MetricsConfig{Registerer: reg})
	if err != nil {
		panic(err)
	}
	app := krules.New()
	srv := httptest.NewServer(m.Handler(cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{})))
	defer srv.Close()

	for _, body := range []string{
		`{"specversion":"1.0","id":"1","source":"shop","type":"order.created","subject":"order-1"}`,
		`{"specversion":"1.0","id":"2","source":"shop","type":"order.created"}`, // no subject: 400
	} {
		resp, err := http.Post(srv.URL, "application/cloudevents+json", strings.NewReader(body))
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == cloudevents.ReceiverRequestsName {
			for _, s := range mf.GetMetric() {
				l := s.GetLabel() // code, outcome
				fmt.Printf("code=%s outcome=%s %v\n", l[0].GetValue(), l[1].GetValue(), s.GetCounter().GetValue())
			}
		}
	}
	// Output:
	// code=202 outcome=ok 1
	// code=400 outcome=rejected 1
}
