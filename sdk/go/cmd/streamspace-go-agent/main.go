// Command streamspace-go-agent is a reference StreamSpace agent in Go: it
// runs sessions as local processes (PLATFORM=process) for a control plane.
// Settings come from environment variables or flags (see --help).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/streamspace-dev/streamspace/sdk/go/agent"
	"github.com/streamspace-dev/streamspace/sdk/go/config"
	"github.com/streamspace-dev/streamspace/sdk/go/runtime/process"
	"github.com/streamspace-dev/streamspace/sdk/go/status"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "-version") {
		fmt.Println(agent.Version)
		return
	}
	cfg, err := config.Load(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "streamspace-go-agent: %v\n", err)
		os.Exit(2)
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	log := slog.New(h)
	slog.SetDefault(log)
	// Fail fast on unreadable TLS files (they are read again at every connect).
	if _, err := agent.LoadTLS(cfg); err != nil {
		log.Error("bad TLS configuration", "error", err)
		os.Exit(2)
	}
	sink := status.NewSink()
	rt, err := process.Open(process.Options{
		DataDir: cfg.DataDir, Ports: cfg.SessionPorts, PortLockDir: cfg.PortLockDir, MaxSessions: cfg.MaxSessions,
		StopGrace: cfg.StopGrace, Log: log,
	}, sink)
	if err != nil {
		log.Error("opening the process runtime", "data_dir", cfg.DataDir, "error", err)
		os.Exit(1)
	}
	// SIGTERM/SIGINT: close the stream and exit; session processes keep
	// running and are re-adopted by the next start.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	agent.New(cfg, rt, sink, log).Run(ctx)
}
