// Command demo-backend is a DNS backend for trying bbal: it listens on a
// balancer socket (as node-mname's listenBalancer does) and, optionally,
// on plain DNS UDP and TCP ports, and answers TXT queries with the client
// address it saw and its own name.
//
//	demo-backend -socket DIR/5301 -name one [-listen 127.0.0.1:5301] [-echo]
//
// With -echo it answers every query with itself (QR set): the trivial
// backend of the benchmarks.
//
// Like Binder's backends it removes a stale socket at start-up and
// unlinks its socket on SIGTERM or SIGINT.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/bbal/bbal/tools/dnsbackend"
)

func main() {
	socket := flag.String("socket", "", "balancer socket path (required)")
	name := flag.String("name", "demo", "backend name given in TXT answers")
	listen := flag.String("listen", "", "also serve plain DNS on this UDP and TCP address")
	echo := flag.Bool("echo", false, "answer each query with itself (for benchmarks)")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "demo-backend: -socket is required")
		os.Exit(2)
	}
	srv := dnsbackend.NewServer(*name)
	if *echo {
		srv = dnsbackend.NewServerFunc(dnsbackend.Echo)
	}
	if err := run(srv, *socket, *name, *listen); err != nil {
		fmt.Fprintf(os.Stderr, "demo-backend: %v\n", err)
		os.Exit(1)
	}
}

func run(srv *dnsbackend.Server, socket, name, listen string) error {
	if err := os.Remove(socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	go srv.ServeBalancer(ln)
	if listen != "" {
		u, err := net.ListenPacket("udp", listen)
		if err != nil {
			return err
		}
		t, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		go srv.ServeUDP(u.(*net.UDPConn))
		go srv.ServeTCP(t)
	}
	fmt.Printf("demo-backend %s: listening on %s\n", name, socket)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	ln.Close() // unlinks the socket
	srv.Close()
	return nil
}
