//! `AgentService.Attach`: authenticates the agent by its certificate, applies
//! the attach rules, then runs one loop per stream that reads the agent's
//! frames in order, sends commands within the in-flight window, watches
//! heartbeats and drains on shutdown. Frames become lifecycle calls
//! (`core::streams`: attach, next commands, heartbeats, results, detach);
//! nothing here decides what a command does, and the store and the roster are
//! reached only through the lifecycle.

use std::sync::Arc;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as In;
use streamspace::v1::control_frame::Frame as Out;
use streamspace_runtime_util::telemetry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use super::convert::{self, duration_pb, invalid_status};
use crate::core::model::{Observed, Outcome};
use crate::core::roster::{AgentHello, AttachRefused};
use crate::core::streams::AttachError;
use crate::core::validate::{self, invalid};
use crate::core::{Lifecycle, LifecycleError};

/// Most sessions one heartbeat may list as active.
const MAX_ACTIVE_SESSIONS: usize = 100_000;

/// Settings of the agent listener.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub trust_domain: String,
    /// Told to agents in Welcome; three missed heartbeats close the stream.
    pub heartbeat_interval: Duration,
    /// Most commands outstanding on one agent at once.
    pub max_in_flight: u32,
    pub max_message_bytes: u32,
    /// How long an agent has to send Hello after opening the stream.
    pub hello_timeout: Duration,
    /// How long streams get to finish in-flight work after Drain.
    pub drain_grace: Duration,
    /// Frames per second one stream is handled at (0 = no limit), after a burst.
    pub frame_rate: f64,
    pub frame_burst: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            trust_domain: "streamspace.local".into(),
            heartbeat_interval: Duration::from_secs(10),
            max_in_flight: 64,
            max_message_bytes: 4 << 20,
            hello_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(5),
            frame_rate: 2000.0,
            frame_burst: 4000,
        }
    }
}

#[derive(Clone)]
pub struct AgentHub {
    lifecycle: Arc<Lifecycle>,
    cfg: Arc<HubConfig>,
    /// Cancelled on shutdown: every stream sends Drain.
    drain: CancellationToken,
    /// Times commands and counts refusals when metrics are on.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

type Tx = mpsc::Sender<Result<pb::ControlFrame, Status>>;

impl AgentHub {
    pub fn new(lifecycle: Arc<Lifecycle>, cfg: HubConfig, drain: CancellationToken) -> Self {
        Self {
            lifecycle,
            cfg: Arc::new(cfg),
            drain,
            metrics: None,
        }
    }

    /// Feeds `metrics` (command stage timings, attach refusals).
    pub fn with_metrics(mut self, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    fn rejected(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.attach_rejected(reason);
        }
    }

    /// The agent id, the serial and the notAfter (ms) of the client certificate.
    fn peer_agent_id<T>(&self, req: &Request<T>) -> Result<(String, String, i64), Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let id = crate::pki::agent_id_from_cert(leaf, &self.cfg.trust_domain)
            .map_err(Status::unauthenticated)?;
        let serial = crate::pki::cert_serial(leaf).map_err(Status::unauthenticated)?;
        let not_after = crate::pki::cert_not_after_ms(leaf).unwrap_or(0);
        Ok((id, serial, not_after))
    }

    /// Checks Hello against the certificate and converts it.
    fn check_hello(
        &self,
        (cert_id, cert_serial): (&str, &str),
        h: &pb::Hello,
    ) -> Result<(AgentHello, Vec<Observed>, pb::ProtocolVersion), Status> {
        if h.agent_id != cert_id {
            return Err(Status::permission_denied(format!(
                "hello.agent_id: {} does not match the client certificate, which names agent {cert_id:?}",
                validate::shown(&h.agent_id)
            )));
        }
        let version =
            streamspace::version::negotiate(h.protocol_version, &h.supported_protocol_versions)
                .map_err(Status::failed_precondition)?;
        validate::short_text("hello.platform", &h.platform).map_err(invalid_status)?;
        validate::short_text("hello.region", &h.region).map_err(invalid_status)?;
        validate::short_text("hello.agent_version", &h.agent_version).map_err(invalid_status)?;
        if h.inventory.len() > 100_000 {
            return Err(invalid_status(invalid(
                "hello.inventory",
                "must list at most 100000 sessions",
            )));
        }
        let inventory = h
            .inventory
            .iter()
            .enumerate()
            .map(|(i, s)| convert::observed_from(&format!("hello.inventory[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid_status)?;
        Ok((
            AgentHello {
                id: h.agent_id.clone(),
                platform: h.platform.clone(),
                region: h.region.clone(),
                capacity: convert::capacity_from(&h.capacity),
                version: h.agent_version.clone(),
                fencing_token: h.fencing_token,
                cert_serial: cert_serial.to_string(),
                cert_expiry_ms: 0,
            },
            inventory,
            version,
        ))
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentHub {
    type AttachStream = ReceiverStream<Result<pb::ControlFrame, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (cert_id, cert_serial, cert_expiry_ms) = self
            .peer_agent_id(&req)
            .inspect_err(|_| self.rejected("certificate"))?;
        // Shutting down: the agent attaches to another replica (through the
        // Service) before it closes its stream here.
        if self.drain.is_cancelled() {
            self.rejected("shutting_down");
            return Err(Status::unavailable(
                "this control-plane replica is shutting down; attach to another replica",
            ));
        }
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.cfg.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "frame: no hello within {:?}",
                    self.cfg.hello_timeout
                ))
            })??
            .ok_or_else(|| Status::invalid_argument("frame: the stream ended before hello"))?;
        let hello = match first.frame {
            Some(In::Hello(h)) => h,
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "frame: the first frame must be hello, got {}",
                    frame_name(&other)
                )));
            }
            None => {
                return Err(Status::invalid_argument(
                    "frame: is required (empty AgentFrame)",
                ));
            }
        };
        let (mut hello, inventory, version) = self
            .check_hello((&cert_id, &cert_serial), &hello)
            .inspect_err(|_| self.rejected("bad_hello"))?;
        hello.cert_expiry_ms = cert_expiry_ms;
        let reg = self.lifecycle.attach(&hello).await.map_err(|e| match e {
            AttachError::Refused(r @ AttachRefused::AlreadyAttached { .. }) => {
                self.rejected("already_attached");
                Status::already_exists(r.to_string())
            }
            AttachError::Refused(r @ AttachRefused::StaleFencing { .. }) => {
                self.rejected("stale_fencing_token");
                Status::permission_denied(r.to_string())
            }
            AttachError::Revoked(r) => {
                self.rejected("revoked");
                warn!(agent = %hello.id, serial = %hello.cert_serial, revocation = %r, "attach refused: revoked");
                Status::permission_denied(r.to_string())
            }
            AttachError::Failed(e) => {
                self.rejected("store");
                convert::status(e)
            }
        })?;
        info!(agent = %hello.id, conn = reg.conn_id, platform = %hello.platform, region = %hello.region,
              fencing_token = hello.fencing_token, inventory = inventory.len(), replaced = reg.replaced, "agent attached");
        let (tx, rx) = mpsc::channel(self.cfg.max_in_flight as usize + 64);
        let welcome = pb::Welcome {
            heartbeat_interval: Some(duration_pb(self.cfg.heartbeat_interval)),
            max_in_flight: self.cfg.max_in_flight,
            max_message_bytes: self.cfg.max_message_bytes,
            protocol_version: version as i32,
            server_version: env!("CARGO_PKG_VERSION").into(),
        };
        let _ = tx.try_send(Ok(pb::ControlFrame {
            frame: Some(Out::Welcome(welcome)),
        }));
        let stream = Stream {
            hub: self.clone(),
            id: hello.id.clone(),
            conn_id: reg.conn_id,
            tx,
            bell: reg.bell,
            cancel: reg.cancel,
        };
        let span = info_span!("agent_stream", agent = %hello.id, conn = reg.conn_id);
        tokio::spawn(stream.run(inbound, inventory).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn frame_name(f: &In) -> &'static str {
    match f {
        In::Hello(_) => "hello",
        In::Heartbeat(_) => "heartbeat",
        In::Ack(_) => "ack",
        In::Result(_) => "result",
        In::Status(_) => "status",
    }
}

/// One attached stream.
struct Stream {
    hub: AgentHub,
    id: String,
    conn_id: u64,
    tx: Tx,
    bell: Arc<tokio::sync::Notify>,
    /// Cancelled when the stream is replaced, or the agent drained or revoked.
    cancel: CancellationToken,
}

/// Why a stream loop ended.
enum End {
    /// The agent closed the stream or the connection broke.
    Closed(String),
    /// We close it with this status.
    Status(Status),
}

impl Stream {
    async fn run(self, mut inbound: Streaming<pb::AgentFrame>, inventory: Vec<Observed>) {
        let end = match self
            .hub
            .lifecycle
            .attached(&self.id, self.conn_id, &inventory)
            .await
        {
            Ok(()) => self.serve(&mut inbound).await,
            Err(e) => End::Status(convert::status(e)),
        };
        match end {
            End::Closed(why) => info!(reason = %why, "agent stream closed"),
            End::Status(s) => {
                warn!(code = ?s.code(), message = s.message(), "closing agent stream");
                let _ = self.tx.try_send(Err(s));
            }
        }
        self.hub.lifecycle.detach(&self.id, self.conn_id).await;
    }

    async fn serve(&self, inbound: &mut Streaming<pb::AgentFrame>) -> End {
        let cfg = &self.hub.cfg;
        let mut tick = tokio::time::interval(cfg.heartbeat_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let drain = self.hub.drain.clone();
        let lc = &self.hub.lifecycle;
        let mut pacer = super::limits::Pacer::new(cfg.frame_rate, cfg.frame_burst);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    if let Some(why) = lc.revoked_stream(&self.id, self.conn_id) {
                        return End::Status(Status::permission_denied(why));
                    }
                    let draining = lc.draining(&self.id, self.conn_id);
                    return End::Status(if draining {
                        Status::unavailable("agent drained by an operator; reconnect later")
                    } else {
                        Status::aborted("replaced by a newer stream for the same agent")
                    });
                }
                _ = drain.cancelled(), if drain_deadline.is_none() => {
                    // Attach elsewhere at once: this stream stays open until then.
                    self.send_drain("control plane shutting down", Duration::ZERO).await;
                    drain_deadline = Some(tokio::time::Instant::now() + cfg.drain_grace);
                }
                _ = async { tokio::time::sleep_until(drain_deadline.expect("set")).await }, if drain_deadline.is_some() => {
                    return End::Status(Status::unavailable("control plane shutting down"));
                }
                _ = self.bell.notified(), if drain_deadline.is_none() => {
                    if let Err(e) = self.dispatch().await { return e; }
                }
                _ = tick.tick() => {
                    if lc.heartbeat_overdue(&self.id, self.conn_id) {
                        return End::Status(Status::unavailable(format!(
                            "no heartbeat for {:?}; closing the stream", lc.heartbeat_timeout())));
                    }
                }
                frame = inbound.message() => match frame {
                    Ok(Some(f)) => {
                        if let Err(e) = self.handle(f).await { return e; }
                        pacer.pace().await;
                    }
                    Ok(None) => return End::Closed("agent closed the stream".into()),
                    Err(s) => return End::Closed(format!("stream error: {s}")),
                },
            }
        }
    }

    async fn send_drain(&self, reason: &str, reconnect_after: Duration) {
        let frame = pb::ControlFrame {
            frame: Some(Out::Drain(pb::Drain {
                reason: reason.into(),
                reconnect_after: Some(duration_pb(reconnect_after)),
            })),
        };
        let _ = self.tx.send(Ok(frame)).await;
    }

    /// Sends pending commands, up to the in-flight window. Runs only when the
    /// bell rings (a command was written, the agent attached, a result freed
    /// a slot, an operator drained it), never on a timer: with thousands of
    /// idle agents a periodic store query per agent would swamp the store.
    async fn dispatch(&self) -> Result<(), End> {
        if self.hub.lifecycle.draining(&self.id, self.conn_id) {
            self.send_drain("drained by an operator", Duration::from_secs(5))
                .await;
            self.cancel.cancel();
            return Ok(());
        }
        let cmds = self
            .hub
            .lifecycle
            .next_commands(&self.id, self.conn_id, self.hub.cfg.max_in_flight)
            .await
            .map_err(|e| End::Status(convert::status(e)))?;
        for c in cmds {
            // The agent's spans for this command are children of this one,
            // which is a child of the span that accepted the command.
            let span = info_span!("command.dispatch", command_id = %c.id, session_id = %c.session, agent_id = %self.id, action = c.action.name(), attempt = c.attempt);
            telemetry::set_parent_traceparent(&span, &c.trace_context);
            span.in_scope(|| info!("command delivered"));
            if let Some(m) = &self.hub.metrics {
                m.delivered(&c);
            }
            let mut cmd = convert::command_pb(&c);
            cmd.trace_context = telemetry::inject(&span);
            let frame = pb::ControlFrame {
                frame: Some(Out::Command(cmd)),
            };
            if self.tx.send(Ok(frame)).await.is_err() {
                return Err(End::Closed("agent stream gone while sending".into()));
            }
        }
        Ok(())
    }

    async fn handle(&self, f: pb::AgentFrame) -> Result<(), End> {
        let lc = &self.hub.lifecycle;
        let r: Result<(), LifecycleError> = match f.frame {
            None => Err(invalid("frame", "is required (empty AgentFrame)").into()),
            Some(In::Hello(_)) => {
                Err(invalid("frame", "hello may be sent only once, first").into())
            }
            Some(In::Heartbeat(h)) => {
                // Lets the agent time a silent stream out as we do. Never
                // waits: with the channel full, the agent hears other frames.
                let _ = self.tx.try_send(Ok(pb::ControlFrame {
                    frame: Some(Out::HeartbeatAck(pb::HeartbeatAck {
                        sequence: h.sequence,
                    })),
                }));
                lc.heartbeat(
                    &self.id,
                    self.conn_id,
                    h.sequence,
                    convert::capacity_from(&h.in_use),
                );
                if h.active_sessions.len() > MAX_ACTIVE_SESSIONS {
                    Err(invalid(
                        "heartbeat.active_sessions",
                        format!("must list at most {MAX_ACTIVE_SESSIONS} sessions"),
                    )
                    .into())
                } else {
                    lc.agent_activity(&self.id, &h.active_sessions).await
                }
            }
            Some(In::Ack(a)) => {
                let r = lc.acknowledged(&self.id, &a.command_id).await;
                if let (Ok(()), Some(m)) = (&r, &self.hub.metrics) {
                    m.acknowledged(&a.command_id);
                }
                r
            }
            Some(In::Result(r)) => {
                match convert::outcome_from(&r) {
                    Ok(o) => {
                        let (outcome, reason) = match &o {
                            Outcome::Succeeded => ("succeeded", ""),
                            Outcome::Failed { reason, .. } => ("failed", reason.as_str()),
                        };
                        let id = r.command_id.clone();
                        let r = lc.finished(&self.id, &r.command_id, o).await;
                        if let (Ok(()), Some(m)) = (&r, &self.hub.metrics) {
                            m.finished(&id, outcome, reason);
                        }
                        // A slot of the in-flight window is free again.
                        self.bell.notify_one();
                        r
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Some(In::Status(s)) => match convert::observed_from("status", &s) {
                Ok(o) => lc.observed(&self.id, self.conn_id, &o).await,
                Err(e) => Err(e.into()),
            },
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(End::Status(convert::status(e))),
        }
    }
}
