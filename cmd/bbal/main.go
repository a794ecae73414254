// Command bbal is a DNS load balancer for node-mname backend processes, a
// drop-in replacement for mname-balancer. See the README for its use.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/bbal/bbal/cmd/internal/server"
)

// shutdownGrace bounds a clean shutdown; a supervisor expects the process
// gone within 5 s of SIGTERM.
const shutdownGrace = 4 * time.Second

// logFlush bounds how long the exit waits for the log's reader to take
// the last records.
const logFlush = time.Second

// handoverDrain bounds how long a process that has handed over waits for
// its TCP sessions; the idle timeout usually ends them sooner.
const handoverDrain = 10 * time.Second

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2, syscall.SIGHUP)
	// A write to a closed pipe on stdout (the log's reader has exited)
	// would kill the process with SIGPIPE; asked for, the signal goes to
	// a channel nobody reads and the write fails with EPIPE, which the
	// log handles.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr, sigs))
}

// run is bbal from the command line to the exit status.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	cfg, err := parseArgs(args, getenv)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bbal: %v\n", err)
		return 1
	}
	if fi, err := os.Stat(cfg.socketDir); err == nil && !fi.IsDir() {
		fmt.Fprintf(stderr, "bbal: -s %s: not a directory\n", cfg.socketDir)
		return 1
	}

	logOut := server.NewLog(stdout, stderr, cfg.level, time.Now)
	defer logOut.Close(logFlush)
	log := logOut.Logger
	inherited, err := server.Inherit()
	if err != nil {
		log.WithLevel(zerolog.FatalLevel).Err(err).Msg("failed to take over from the previous process")
		return 1
	}
	log.Info().Str("socket_dir", cfg.socketDir).Bool("takeover", inherited != nil).Msg("starting up")
	b, err := server.Start(server.Config{
		SocketDir:   cfg.socketDir,
		Listen:      cfg.listen,
		Port:        cfg.port,
		Readers:     cfg.readers,
		Standins:    cfg.standins,
		Policy:      cfg.policy,
		DebugSocket: cfg.debugSocket,
		MetricsAddr: cfg.metricsAddr,
		MaxRemotes:  cfg.maxRemotes,
		PrefixBits:  cfg.prefixBits,

		TCPMaxConns:      cfg.tcpMax,
		TCPMaxConnsPerIP: cfg.tcpPerIP,
		TCPIdleTimeout:   cfg.tcpIdle,
		TCPMaxLifetime:   cfg.tcpLife,
		ServfailWhenDown: cfg.servfail,
		StallFloor:       cfg.stallFloor,
		RateLimit:        cfg.rateLimit,
		Cache:            cfg.cache,
		Probe:            cfg.probe,
		Dnstap:           cfg.dnstap,
		User:             cfg.user,
		Inherited:        inherited,
	}, server.Options{LogDrops: logOut}, log)
	if err != nil {
		return 1
	}
	if inherited != nil {
		b.TakeOver(10 * time.Second)
	} else {
		server.NotifyReady()
	}

	var sig os.Signal
	for sig = range sigs {
		switch sig {
		case syscall.SIGUSR2:
			// A zero-downtime restart: a new process takes over.
			log.Info().Msg("restart requested")
			if err := b.Handover(os.Args, handoverDrain); err != nil {
				log.Error().Err(err).Msg("restart failed; carrying on")
				continue
			}
			b.Close()
			log.Info().Msg("exiting after the handover")
			return 0
		case syscall.SIGHUP:
			// Operators send it for a reload, and a lost terminal
			// sends it too. The socket directory is all there is
			// to reload: it is scanned now.
			log.Info().Str("signal", sig.String()).Msg("rescanning the socket directory")
			b.Backends.Scan()
			continue
		}
		break
	}
	log.Info().Str("signal", sig.String()).Msg("shutting down")
	done := make(chan struct{})
	go func() {
		b.Close()
		close(done)
	}()
	select {
	case <-done:
		log.Info().Msg("shut down")
	case <-time.After(shutdownGrace):
		log.Warn().Msg("shutdown took too long; exiting anyway")
	}
	return 0
}
