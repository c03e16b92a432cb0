package cloudevents_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/transport/cloudevents"
)

func TestNewServerDefaults(t *testing.T) {
	s := cloudevents.NewServer(":0", http.NotFoundHandler(), cloudevents.ServerConfig{})
	if s.ReadHeaderTimeout != cloudevents.DefaultReadHeaderTimeout || s.ReadTimeout != cloudevents.DefaultReadTimeout ||
		s.WriteTimeout != cloudevents.DefaultWriteTimeout || s.IdleTimeout != cloudevents.DefaultIdleTimeout ||
		s.MaxHeaderBytes != cloudevents.DefaultMaxHeaderBytes || s.ErrorLog == nil {
		t.Errorf("defaults: %+v", s)
	}
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 {
		t.Error("a default timeout is unlimited")
	}
	s = cloudevents.NewServer(":0", http.NotFoundHandler(), cloudevents.ServerConfig{ReadTimeout: -1, IdleTimeout: time.Second, MaxHeaderBytes: 100})
	if s.ReadTimeout != 0 || s.IdleTimeout != time.Second || s.MaxHeaderBytes != 100 || s.ReadHeaderTimeout != cloudevents.DefaultReadHeaderTimeout {
		t.Errorf("configured: %+v", s)
	}
}

// startServe runs Serve on a local port; stop cancels it and returns its
// result.
func startServe(t *testing.T, h http.Handler, cfg cloudevents.ServerConfig) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cloudevents.Serve(ctx, ln, h, cfg) }()
	var once bool
	var res error
	stop = func() error {
		if !once {
			once = true
			cancel()
			res = <-done
		}
		return res
	}
	t.Cleanup(func() { _ = stop() })
	return ln.Addr().String(), stop
}

func receiverApp(t *testing.T) (*krules.App, *seen) {
	app := krules.New()
	s := &seen{}
	app.On("*").Do(s.handler)
	return app, s
}

const sampleStructured = `{"specversion":"1.0","id":"1","type":"order.created","source":"s","subject":"order-1","data":{"a":1}}`

// TestServeClosesSlowHeaderConnections: connections that send their headers
// slowly (slowloris) are closed once ReadHeaderTimeout has passed, even
// while they keep sending; the server still serves others.
func TestServeClosesSlowHeaderConnections(t *testing.T) {
	app, s := receiverApp(t)
	addr, stop := startServe(t, cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}),
		cloudevents.ServerConfig{ReadHeaderTimeout: 200 * time.Millisecond})
	const n = 20
	closed := make(chan error, n)
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		quit := make(chan struct{})
		defer close(quit)
		go func() { // keep trickling header bytes
			for {
				select {
				case <-quit:
					return
				case <-time.After(20 * time.Millisecond):
					if _, err := io.WriteString(conn, "X-Slow: 1\r\n"); err != nil {
						return
					}
				}
			}
		}()
		go func() {
			// Only the failure path waits this long.
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			b, err := io.ReadAll(conn)
			if err == nil || !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
				closed <- nil // EOF or reset: the server closed it
				return
			}
			closed <- errors.New("connection still open after 30 s: " + string(b))
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Post("http://"+addr+"/", "application/json", strings.NewReader(sampleStructured))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || len(s.all()) != 1 {
		t.Fatalf("status %d, %d events", resp.StatusCode, len(s.all()))
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestServeHeaderLimit(t *testing.T) {
	app, s := receiverApp(t)
	addr, _ := startServe(t, cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}), cloudevents.ServerConfig{MaxHeaderBytes: 1024})
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(sampleStructured))
	req.Header.Set("X-Big", strings.Repeat("x", 8<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || len(s.all()) != 0 {
		t.Fatalf("status %d, %d events; want 431 and none", resp.StatusCode, len(s.all()))
	}
}

// blockingApp returns an App whose handler signals entered and waits for
// release.
func blockingApp() (app *krules.App, entered chan struct{}, release chan struct{}) {
	app = krules.New()
	entered, release = make(chan struct{}, 1), make(chan struct{})
	app.On("*").Do(func(context.Context, *krules.Event) error {
		entered <- struct{}{}
		<-release
		return nil
	})
	return app, entered, release
}

// TestServeGracefulShutdown: cancelling Serve's ctx lets an in-flight
// request finish (its handler runs to the end and the client gets 202),
// refuses new connections, and Serve returns nil after the drain.
func TestServeGracefulShutdown(t *testing.T) {
	app, entered, release := blockingApp()
	addr, stop := startServe(t, cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}), cloudevents.ServerConfig{})
	type result struct {
		code int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/", "application/json", strings.NewReader(sampleStructured))
		if err != nil {
			got <- result{err: err}
			return
		}
		resp.Body.Close()
		got <- result{code: resp.StatusCode}
	}()
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// Wait until the listener is closed: new connections are refused.
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Serve returned %v with a request in flight", err)
	default:
	}
	close(release)
	if r := <-got; r.err != nil || r.code != http.StatusAccepted {
		t.Fatalf("in-flight request: %d %v, want 202", r.code, r.err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestServeBoundedDrain: a request still running after ShutdownTimeout is
// cut, and Serve says so.
func TestServeBoundedDrain(t *testing.T) {
	app, entered, release := blockingApp()
	defer close(release)
	addr, stop := startServe(t, cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}),
		cloudevents.ServerConfig{ShutdownTimeout: 50 * time.Millisecond})
	clientErr := make(chan error, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/", "application/json", strings.NewReader(sampleStructured))
		if err == nil {
			resp.Body.Close()
		}
		clientErr <- err
	}()
	<-entered
	if err := stop(); !errors.Is(err, cloudevents.ErrShutdownTimeout) {
		t.Fatalf("Serve = %v, want ErrShutdownTimeout", err)
	}
	if err := <-clientErr; err == nil {
		t.Fatal("the cut request got an answer")
	}
}

func TestListenAndServeBadAddress(t *testing.T) {
	err := cloudevents.ListenAndServe(context.Background(), "256.0.0.1:bad", http.NotFoundHandler(), cloudevents.ServerConfig{})
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("err = %v", err)
	}
}
