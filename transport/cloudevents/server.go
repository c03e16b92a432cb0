package cloudevents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Defaults of ServerConfig.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultShutdownTimeout   = 30 * time.Second
)

// ServerConfig configures NewServer, Serve and ListenAndServe. The zero
// value gives the defaults; a negative duration means no limit (as a zero
// one does in http.Server).
type ServerConfig struct {
	// ReadHeaderTimeout bounds reading a request's headers, so that a
	// client sending them slowly (slowloris) cannot hold a connection.
	// Default DefaultReadHeaderTimeout (10 s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	// Default DefaultReadTimeout (30 s).
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of the request headers to
	// the end of the response; it includes running the handlers, which the
	// Receiver does before answering. Default DefaultWriteTimeout (60 s).
	WriteTimeout time.Duration
	// IdleTimeout bounds how long a keep-alive connection waits for its
	// next request. Default DefaultIdleTimeout (120 s).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the size of the request headers; larger ones
	// get 431. Default DefaultMaxHeaderBytes (64 KiB; http.Server's is
	// 1 MiB).
	MaxHeaderBytes int
	// ShutdownTimeout bounds the graceful drain of Serve when its ctx is
	// done: in-flight requests get this long to finish, then their
	// connections are closed. Default DefaultShutdownTimeout (30 s).
	ShutdownTimeout time.Duration
	// Logger receives the server's own error lines (TLS handshake errors,
	// panics in handlers) at level Error. Default slog.Default().
	Logger *slog.Logger
}

func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}

// NewServer returns an http.Server serving h on addr with the timeouts and
// header limit of cfg (see ServerConfig for the defaults). A bare
// http.Server has no timeouts at all; serve a Receiver with this one, or
// with Serve, which also shuts it down gracefully.
func NewServer(addr string, h http.Handler, cfg ServerConfig) *http.Server {
	mhb := cfg.MaxHeaderBytes
	if mhb == 0 {
		mhb = DefaultMaxHeaderBytes
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: orDefault(cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		ReadTimeout:       orDefault(cfg.ReadTimeout, DefaultReadTimeout),
		WriteTimeout:      orDefault(cfg.WriteTimeout, DefaultWriteTimeout),
		IdleTimeout:       orDefault(cfg.IdleTimeout, DefaultIdleTimeout),
		MaxHeaderBytes:    mhb,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelError),
	}
}

// ErrShutdownTimeout is returned (wrapped) by Serve when in-flight requests
// did not finish within ServerConfig.ShutdownTimeout and were cut.
var ErrShutdownTimeout = errors.New("cloudevents: graceful shutdown timed out")

// Serve serves h on ln (a NewServer with cfg) until ctx is done, then shuts
// down gracefully: it stops accepting connections, closes idle ones, waits
// up to cfg.ShutdownTimeout for in-flight requests — their handlers
// included — to finish, and closes the rest. It returns nil after a
// complete drain, an error wrapping ErrShutdownTimeout when requests were
// cut, or the error that stopped the server before ctx was done. ln is
// closed when Serve returns.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, cfg ServerConfig) error {
	srv := NewServer(ln.Addr().String(), h, cfg)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("cloudevents: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx := context.WithoutCancel(ctx)
	if d := orDefault(cfg.ShutdownTimeout, DefaultShutdownTimeout); d > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(sctx, d)
		defer cancel()
	}
	err := srv.Shutdown(sctx)
	<-done // http.ErrServerClosed
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("%w (%v): in-flight requests on %s were cut", ErrShutdownTimeout, err, ln.Addr())
	}
	return nil
}

// ListenAndServe listens on the TCP address addr and calls Serve.
func ListenAndServe(ctx context.Context, addr string, h http.Handler, cfg ServerConfig) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cloudevents: listen %s: %w", addr, err)
	}
	return Serve(ctx, ln, h, cfg)
}
