// Command http-receiver is a ready KRules HTTP ingress: it accepts
// CloudEvents (binary or structured mode, including what Python KRules
// sends) on -addr, logs each event, and records it on its subject in an
// in-memory store.
//
//	go run ./examples/http-receiver -addr :8080
//	curl -i localhost:8080 -H 'Content-Type: application/cloudevents+json' \
//	  -d '{"specversion":"1.0","id":"1","type":"order.created","source":"shop","subject":"order-1","data":{"amount":7}}'
//
// It serves with cloudevents.ListenAndServe: header, read, write and idle
// timeouts and a header size limit are set, and Ctrl-C (SIGINT) or SIGTERM
// stops it after the requests in flight are done (at most 30 s).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/memory"
	"github.com/krules-go/krules/transport/cloudevents"
)

func main() {
	addr := flag.String("addr", ":8080", "TCP address to listen on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "http-receiver:", err)
		os.Exit(1)
	}
	if err := run(ctx, ln, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "http-receiver:", err)
		os.Exit(1)
	}
}

// run serves the receiver on ln until ctx is done, logging to w.
func run(ctx context.Context, ln net.Listener, w io.Writer) error {
	log := slog.New(slog.NewTextHandler(w, nil))
	app := krules.New(krules.WithStorage(memory.New()), krules.WithLogger(log))
	app.On("*").Named("log").Do(func(ctx context.Context, ev *krules.Event) error {
		e, _ := cloudevents.FromContext(ctx)
		log.InfoContext(ctx, "event", "type", ev.Type, "subject", ev.Subject.Name(),
			"id", e.ID(), "source", e.Source(), "payload", fmt.Sprint(ev.Payload()))
		// Remember the last event on the subject: a direct write, muted so
		// that it emits no property event of its own.
		_, _, err := ev.Subject.Set(ctx, "last_event", ev.Type, krules.NoCache(), krules.Muted())
		return err
	})
	log.Info("listening", "addr", ln.Addr().String())
	err := cloudevents.Serve(ctx, ln, cloudevents.NewReceiver(app, cloudevents.ReceiverConfig{}), cloudevents.ServerConfig{Logger: log})
	log.Info("stopped", "err", err)
	return err
}
