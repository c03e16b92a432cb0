package cloudevents_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

func ExampleReceiver() {
	app := krules.New()
	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
		e, _ := cloudevents.FromContext(ctx)
		fmt.Println(ev.Type, ev.Subject.Name(), ev.Payload()["amount"], e.Source())
		return nil
	})
	srv := httptest.NewServer(cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}))
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"amount":1500}`))
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", "evt-1")
	req.Header.Set("ce-type", "order.created")
	req.Header.Set("ce-source", "shop")
	req.Header.Set("ce-subject", "order-1")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output:
	// order.created order-1 1500 shop
	// 202
}

func ExampleNormalizeExtensionName() {
	fmt.Println(cloudevents.NormalizeExtensionName("Tenant_ID"))
	// Output: tenantid
}

// Serve runs a Receiver behind an http.Server with safe timeouts, until its
// ctx is done, and then drains in-flight requests.
func ExampleServe() {
	app := krules.New()
	app.On("order.created").Do(func(ctx context.Context, ev *krules.Event) error {
		fmt.Println("handled", ev.Type, ev.Subject.Name())
		return nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0") // or ListenAndServe(ctx, ":8080", ...)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background()) // e.g. signal.NotifyContext
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- cloudevents.Serve(ctx, ln, cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}), cloudevents.ServerConfig{})
	}()

	resp, err := http.Post("http://"+ln.Addr().String()+"/", "application/cloudevents+json",
		strings.NewReader(`{"specversion":"1.0","id":"1","type":"order.created","source":"shop","subject":"order-1"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	stop()
	fmt.Println("stopped:", <-done)
	// Output:
	// handled order.created order-1
	// 202
	// stopped: <nil>
}
