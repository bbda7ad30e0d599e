// Package agent is the stream client of a StreamSpace agent: it dials the
// control plane over mTLS, says Hello with the runtime's inventory, then
// acknowledges, de-duplicates and applies commands and streams results,
// session statuses and heartbeats, reconnecting with backoff until its
// context ends.
//
// Ordering on the stream (what the control plane relies on):
//   - every delivery of a command is acked at once, duplicates too;
//   - a command's result is preceded by every status not yet sent and
//     followed by the session's latest status (unless the agent has not
//     observed the session since it reported it STOPPED), also when the
//     result is replayed for a duplicate delivery;
//   - one session's commands apply one at a time, in delivery order; at most
//     Welcome.max_in_flight commands apply at once overall;
//   - no frame is larger than Welcome.max_message_bytes (messages are cut).
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/streamspace-dev/streamspace/sdk/go/backoff"
	"github.com/streamspace-dev/streamspace/sdk/go/config"
	"github.com/streamspace-dev/streamspace/sdk/go/dedup"
	pb "github.com/streamspace-dev/streamspace/sdk/go/gen/streamspace/v1"
	"github.com/streamspace-dev/streamspace/sdk/go/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	grpcstatus "google.golang.org/grpc/status"
)

// Version is sent in Hello.agent_version.
const Version = "streamspace-go-agent/0.1.0"

const (
	defaultHeartbeat   = 10 * time.Second
	defaultMaxInFlight = 64      // when Welcome declares none
	defaultMaxMessage  = 4 << 20 // before Welcome, or when it declares none
	drainWait          = 30 * time.Second
	shutdownWait       = 10 * time.Second
	stableStream       = 10 * time.Second // a stream that lasted this long resets the backoff
)

// Runtime runs sessions; its status changes go to the agent's status sink.
type Runtime interface {
	Inventory() []*pb.SessionStatus
	InUse() *pb.Capacity
	Start(session string, s *pb.StartSession) error
	Stop(session string, deleteHome bool) error
	Hibernate(session string) error
	Wake(session string) error
}

// Failure is an error a Runtime returns to fail a command with a reason.
type Failure interface {
	error
	FailureReason() pb.FailureReason
	IsRetryable() bool
}

type result struct {
	session string
	r       *pb.CommandResult
}

// Agent is one agent identity attached to one control plane.
type Agent struct {
	cfg     *config.Config
	rt      Runtime
	sink    *status.Sink
	dedup   *dedup.Dedup
	log     *slog.Logger
	results chan result // from command goroutines to whichever stream is current
	limit   *limiter
	queues  sessionQueues
	running sync.WaitGroup // command goroutines
	// dial connects to the control plane (replaced in tests).
	dial    func() (*grpc.ClientConn, error)
	pending atomic.Int64 // commands delivered and not finished
}

// New returns an agent applying commands on rt, which reports to sink.
func New(cfg *config.Config, rt Runtime, sink *status.Sink, log *slog.Logger) *Agent {
	return &Agent{
		cfg: cfg, rt: rt, sink: sink, log: log,
		dedup:   dedup.NewDedup(100_000),
		results: make(chan result, 1024),
		limit:   newLimiter(defaultMaxInFlight),
		queues:  sessionQueues{tail: map[string]chan struct{}{}},
	}
}

// LoadTLS reads the client certificate, its key and the CA (again at every
// connect, so rotated files are used without a restart).
func LoadTLS(cfg *config.Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("AGENT_TLS_CERT / AGENT_TLS_KEY (%s, %s): %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	pem, err := os.ReadFile(cfg.CACert)
	if err != nil {
		return nil, fmt.Errorf("AGENT_CA_CERT: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("AGENT_CA_CERT (%s): no PEM certificate in the file", cfg.CACert)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   cfg.ServerName(),
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// Run attaches and re-attaches until ctx ends, then waits (briefly) for
// commands being applied.
func (a *Agent) Run(ctx context.Context) {
	b := backoff.New(a.cfg.BackoffBase, a.cfg.BackoffMax)
	a.log.Info("starting agent", "agent", a.cfg.AgentID, "url", a.cfg.ControlPlaneURL, "version", Version)
	for ctx.Err() == nil {
		started := time.Now()
		drainAfter, err := a.attachOnce(ctx)
		if ctx.Err() != nil {
			break
		}
		if time.Since(started) > stableStream {
			b.Reset()
		}
		var delay time.Duration
		switch {
		case err == nil:
			b.Reset()
			delay = drainAfter + b.Next()
			a.log.Info("drained by the control plane; reconnecting later", "retry_in", delay)
		case permanent(err):
			// Retrying at once cannot help: wait the longest backoff, loudly.
			delay = b.Cap
			a.log.Error("the control plane refused this agent; fix the configuration", "error", err, "retry_in", delay)
		default:
			delay = b.Next()
			a.log.Warn("control plane stream ended", "error", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	done := make(chan struct{})
	go func() { a.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownWait):
		a.log.Warn("exiting with commands still being applied")
	}
	a.log.Info("agent stopped")
}

// permanent: errors from Attach that a reconnect does not fix (wrong identity,
// unsupported protocol, a malformed frame).
func permanent(err error) bool {
	switch grpcstatus.Code(err) {
	case codes.PermissionDenied, codes.FailedPrecondition, codes.InvalidArgument, codes.Unauthenticated:
		return true
	}
	return false
}

// stream is one attached stream: its limits and its single sender (a gRPC
// stream must not be sent on from several goroutines).
type stream struct {
	s          pb.AgentService_AttachClient
	maxMessage int
	log        *slog.Logger
}

func (s *stream) send(f *pb.AgentFrame) error {
	if !fit(f, s.maxMessage) {
		s.log.Warn("frame larger than max_message_bytes even with its messages cut; sent anyway")
	}
	return s.s.Send(f)
}

// attachOnce runs one stream. It returns the Drain's reconnect_after with a
// nil error when drained, and an error for everything else but shutdown.
func (a *Agent) attachOnce(ctx context.Context) (time.Duration, error) {
	dial := a.dial
	if dial == nil {
		dial = a.dialTLS
	}
	conn, err := dial()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := pb.NewAgentServiceClient(conn).Attach(sctx)
	if err != nil {
		return 0, err
	}
	st := &stream{s: cs, maxMessage: defaultMaxMessage, log: a.log}

	// The inventory is a snapshot: it replaces the changes not sent yet.
	a.sink.ClearDirty()
	hello := &pb.Hello{
		AgentId:                   a.cfg.AgentID,
		Platform:                  a.cfg.Platform,
		Region:                    a.cfg.Region,
		Capacity:                  &pb.Capacity{MaxSessions: a.cfg.MaxSessions, CpuMillis: a.cfg.MaxCPU * 1000, MemoryBytes: a.cfg.MaxMemoryGB << 30},
		AgentVersion:              Version,
		ProtocolVersion:           pb.ProtocolVersion_PROTOCOL_VERSION_1,
		SupportedProtocolVersions: []pb.ProtocolVersion{pb.ProtocolVersion_PROTOCOL_VERSION_1},
		Inventory:                 a.rt.Inventory(),
	}
	if err := st.send(&pb.AgentFrame{Frame: &pb.AgentFrame_Hello{Hello: hello}}); err != nil {
		return 0, recvErr(cs, err)
	}
	first, err := cs.Recv()
	if err != nil {
		return 0, err
	}
	w := first.GetWelcome()
	if w == nil {
		return 0, fmt.Errorf("expected Welcome as the first frame, got %T", first.GetFrame())
	}
	// UNSPECIFIED: a control plane older than version negotiation, which speaks 1.
	if v := w.GetProtocolVersion(); v != pb.ProtocolVersion_PROTOCOL_VERSION_1 && v != pb.ProtocolVersion_PROTOCOL_VERSION_UNSPECIFIED {
		return 0, fmt.Errorf("the control plane chose protocol version %v; this agent speaks only PROTOCOL_VERSION_1", v)
	}
	interval := w.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		interval = defaultHeartbeat
	}
	if m := w.GetMaxMessageBytes(); m > 0 {
		st.maxMessage = int(m)
	}
	inFlight := int(w.GetMaxInFlight())
	if inFlight <= 0 {
		inFlight = defaultMaxInFlight
	}
	a.limit.setMax(inFlight)
	a.log.Info("connected to the control plane", "heartbeat", interval, "max_in_flight", inFlight,
		"max_message_bytes", st.maxMessage, "server_version", w.GetServerVersion(), "inventory", len(hello.Inventory))

	inbound := make(chan *pb.ControlFrame)
	recvDone := make(chan error, 1)
	go func() {
		for {
			f, err := cs.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			select {
			case inbound <- f:
			case <-sctx.Done():
				return
			}
		}
	}()

	heartbeat := time.NewTicker(interval)
	defer heartbeat.Stop()
	var seq uint64
	var draining bool
	var drainAfter time.Duration
	var drainDeadline time.Time
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for {
		if draining && (a.pending.Load() == 0 && len(a.results) == 0 || time.Now().After(drainDeadline)) {
			_ = a.sendStatuses(st)
			_ = cs.CloseSend()
			return drainAfter, nil
		}
		var err error
		select {
		case <-ctx.Done():
			_ = cs.CloseSend()
			return 0, ctx.Err()
		case <-a.sink.Changed():
			err = a.sendStatuses(st)
		case r := <-a.results:
			err = a.sendResult(st, r)
		case <-heartbeat.C:
			seq++
			err = st.send(&pb.AgentFrame{Frame: &pb.AgentFrame_Heartbeat{Heartbeat: &pb.Heartbeat{Sequence: seq, InUse: a.rt.InUse()}}})
		case <-poll.C:
		case f := <-inbound:
			switch x := f.Frame.(type) {
			case *pb.ControlFrame_Command:
				err = a.command(st, x.Command)
			case *pb.ControlFrame_Drain:
				draining = true
				drainAfter = x.Drain.GetReconnectAfter().AsDuration()
				if drainAfter <= 0 {
					drainAfter = time.Second
				}
				drainDeadline = time.Now().Add(drainWait)
				a.log.Info("drain requested: finishing commands in flight", "reason", x.Drain.GetReason(), "reconnect_after", drainAfter)
			default:
				a.log.Debug("ignoring an unexpected frame", "frame", fmt.Sprintf("%T", f.GetFrame()))
			}
		case err = <-recvDone:
			if errors.Is(err, io.EOF) {
				err = errors.New("the control plane closed the stream")
			}
		}
		if errors.Is(err, io.EOF) {
			// A send fails with io.EOF when the server ended the stream; its
			// status comes with the next receive.
			select {
			case rerr := <-recvDone:
				err = rerr
			case <-time.After(time.Second):
			}
		}
		if err != nil {
			return 0, err
		}
	}
}

// dialTLS connects with the client certificate, verifying the server
// against AGENT_CA_CERT under ServerName.
func (a *Agent) dialTLS() (*grpc.ClientConn, error) {
	tc, err := LoadTLS(a.cfg)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(a.cfg.HostPort(),
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	)
}

// recvErr: a Send that fails because the server ended the stream returns
// io.EOF; the status is in Recv.
func recvErr(cs pb.AgentService_AttachClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := cs.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// command acks a delivery and applies it unless it is a duplicate.
func (a *Agent) command(st *stream, c *pb.Command) error {
	id := c.GetCommandId()
	if err := st.send(&pb.AgentFrame{Frame: &pb.AgentFrame_Ack{Ack: &pb.CommandAck{CommandId: id}}}); err != nil {
		return err
	}
	seen, replay := a.dedup.Deliver(id)
	switch seen {
	case dedup.InProgress:
		a.log.Debug("duplicate delivery of a command in progress", "command_id", id)
		return nil
	case dedup.Done:
		a.log.Debug("duplicate delivery of a finished command: result replayed", "command_id", id)
		return a.sendResult(st, result{c.GetSessionId(), replay})
	}
	session := c.GetSessionId()
	prev, done := a.queues.enqueue(session)
	a.running.Add(1)
	a.pending.Add(1)
	go func() {
		defer a.running.Done()
		defer a.pending.Add(-1)
		defer a.queues.finish(session, done)
		if prev != nil {
			<-prev
		}
		a.limit.acquire()
		outcome := a.apply(c)
		a.limit.release()
		r := &pb.CommandResult{CommandId: id}
		if outcome == nil {
			r.Outcome = &pb.CommandResult_Succeeded{Succeeded: &pb.CommandSucceeded{}}
		} else {
			r.Outcome = &pb.CommandResult_Failed{Failed: outcome}
		}
		a.dedup.Finish(id, r)
		a.results <- result{session, r}
	}()
	return nil
}

// apply runs one command on the runtime; nil means success.
func (a *Agent) apply(c *pb.Command) *pb.CommandFailed {
	log := a.log.With("command_id", c.GetCommandId(), "session_id", c.GetSessionId(), "generation", c.GetSessionGeneration())
	s := c.GetSessionId()
	var err error
	switch x := c.Action.(type) {
	case *pb.Command_Start:
		err = a.rt.Start(s, x.Start)
	case *pb.Command_Stop:
		err = a.rt.Stop(s, x.Stop.GetDeleteHome())
	case *pb.Command_Hibernate:
		err = a.rt.Hibernate(s)
	case *pb.Command_Wake:
		err = a.rt.Wake(s)
	default:
		err = invalidCommand{}
	}
	if err == nil {
		log.Info("command applied", "action", fmt.Sprintf("%T", c.Action))
		return nil
	}
	f := &pb.CommandFailed{Reason: pb.FailureReason_FAILURE_REASON_INTERNAL, Message: err.Error()}
	var rf Failure
	if errors.As(err, &rf) {
		f.Reason, f.Retryable = rf.FailureReason(), rf.IsRetryable()
	}
	log.Warn("command failed", "reason", f.Reason, "message", f.Message, "retryable", f.Retryable)
	return f
}

type invalidCommand struct{}

func (invalidCommand) Error() string {
	return "command has no action (start, stop, hibernate or wake)"
}
func (invalidCommand) FailureReason() pb.FailureReason {
	return pb.FailureReason_FAILURE_REASON_INVALID
}
func (invalidCommand) IsRetryable() bool { return false }

// sendStatuses sends the latest status of every session whose latest is unsent.
func (a *Agent) sendStatuses(st *stream) error {
	for _, s := range a.sink.TakeDirty() {
		if err := st.send(&pb.AgentFrame{Frame: &pb.AgentFrame_Status{Status: s}}); err != nil {
			return err
		}
	}
	return nil
}

// sendResult sends a result, fresh or replayed: unsent statuses first (a
// status the command reported precedes its result), then the result, then
// the session's latest status read now, so the last word on a session is
// always what the agent observes.
func (a *Agent) sendResult(st *stream, r result) error {
	if err := a.sendStatuses(st); err != nil {
		return err
	}
	if err := st.send(&pb.AgentFrame{Frame: &pb.AgentFrame_Result{Result: r.r}}); err != nil {
		return err
	}
	if s := a.sink.TakeLatest(r.session); s != nil {
		return st.send(&pb.AgentFrame{Frame: &pb.AgentFrame_Status{Status: s}})
	}
	return nil
}
