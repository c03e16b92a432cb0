package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for the server goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln, &logs) }()

	url := "http://" + ln.Addr().String() + "/"
	resp, err := http.Post(url, "application/cloudevents+json", strings.NewReader(
		`{"specversion":"1.0","id":"evt-1","type":"order.created","source":"shop","subject":"order-1","data":{"amount":7}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d, want 202", resp.StatusCode)
	}
	// What the Python KRules emitter sends (binary mode, "None" attributes,
	// a tenant_id extension).
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"x": 1}`))
	for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "py-1", "ce-type": "order.shipped", "ce-source": "py",
		"ce-subject": "order-1", "ce-datacontenttype": "None", "ce-dataschema": "None", "ce-tenant_id": "t-1", "Content-Type": "application/json"} {
		req.Header.Set(k, v)
	}
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("Python emitter request: status %d, want 202", resp.StatusCode)
	}
	resp, err = http.Post(url, "application/json", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("not a CloudEvent: status %d, want 400", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	out := logs.String()
	for _, want := range []string{
		"msg=listening",
		`msg=event type=order.created subject=order-1 id=evt-1 source=shop payload=map[amount:7]`,
		`msg=event type=order.shipped subject=order-1 id=py-1 source=py payload=map[x:1]`,
		"msg=stopped err=<nil>",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "level=ERROR") {
		t.Errorf("a handler failed:\n%s", out)
	}
	if n := strings.Count(out, "msg=event"); n != 2 {
		t.Errorf("%d events logged, want 2:\n%s", n, out)
	}
}
