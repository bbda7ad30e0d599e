//! The stream client: dials the control plane over mTLS, says Hello with the
//! runtime's inventory, then applies commands (de-duplicated by id, each
//! session's commands in order, different sessions concurrently) and streams
//! acks, results, statuses and heartbeats. Reconnects forever with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as Out;
use streamspace::v1::control_frame::Frame as In;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::capacity::Admission;
use crate::dedup::{Dedup, Seen};
use crate::runtime::{Runtime, StatusSink};

/// Client TLS material (PEM).
#[derive(Clone)]
pub struct ClientTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// Server name to verify; defaults to the URL's host.
    pub server_name: Option<String>,
    /// Where the material above came from: re-read at every connect, so a
    /// rotated certificate is used without a restart. None = fixed.
    pub files: Option<crate::identity::TlsFiles>,
}

/// Everything the stream client needs.
#[derive(Clone)]
pub struct ClientConfig {
    pub agent_id: String,
    pub control_plane_url: String,
    pub platform: String,
    pub region: String,
    pub capacity: pb::Capacity,
    pub tls: ClientTls,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// HA fencing token sent in Hello (the Lease transition count); 0 without HA.
    pub fencing_token: Arc<AtomicU64>,
}

/// Counters for tests and operators.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Streams that reached Welcome.
    pub attaches: AtomicU64,
    /// Commands applied (first deliveries).
    pub applied: AtomicU64,
    /// Deliveries recognised as duplicates.
    pub duplicates: AtomicU64,
    /// Drain frames received.
    pub drains: AtomicU64,
}

pub struct Client {
    cfg: ClientConfig,
    runtime: Arc<dyn Runtime>,
    /// The runtime's latest status per session (the stream's end of it).
    statuses: StatusSink,
    dedup: Arc<Dedup>,
    /// Refuses starts beyond the advertised `max_sessions`.
    admission: Arc<Admission>,
    /// One lock per session: its commands apply in order.
    session_locks: Arc<std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Results of command tasks (with their session), forwarded to
    /// whichever stream is current.
    results_tx: mpsc::Sender<(String, pb::CommandResult)>,
    results_rx: Mutex<mpsc::Receiver<(String, pb::CommandResult)>>,
    pub stats: Arc<ClientStats>,
    /// With HA: attach only while this replica holds the Lease.
    leadership: Option<crate::lease::Leadership>,
    /// The last usable TLS material (see [`crate::identity::refresh`]).
    tls: std::sync::Mutex<ClientTls>,
    /// Prometheus metrics, when `--metrics-addr` asks for them.
    metrics: Option<Arc<crate::metrics::AgentMetrics>>,
}

enum SessionEnd {
    Shutdown,
    /// The control plane asked the agent to go, after this long, and the
    /// stream it asked on, still open.
    Drained(Duration, Box<OldStream>),
    LostLease,
}

/// A drained stream, kept open until the next stream is attached
/// (make-before-break): the replica that drained it finishes what it had
/// delivered on it, sends nothing new, and sees it close only once the
/// agent is attached elsewhere.
struct OldStream {
    _tx: mpsc::Sender<pb::AgentFrame>,
    _inbound: tonic::Streaming<pb::ControlFrame>,
}

/// Resolves when leadership is withdrawn; never without HA.
async fn lease_lost(leadership: &Option<crate::lease::Leadership>) {
    match leadership {
        Some(l) => {
            let mut l = l.clone();
            let _ = l.wait_for(|v| v.is_none()).await;
        }
        None => std::future::pending().await,
    }
}

fn frame(f: Out) -> pb::AgentFrame {
    pb::AgentFrame { frame: Some(f) }
}

impl Client {
    /// A client applying commands on `runtime`, which reports to `statuses`.
    pub fn new(cfg: ClientConfig, runtime: Arc<dyn Runtime>, statuses: StatusSink) -> Self {
        let (results_tx, results_rx) = mpsc::channel(1024);
        let tls = std::sync::Mutex::new(cfg.tls.clone());
        Self {
            admission: Arc::new(Admission::new(&cfg.agent_id, cfg.capacity.max_sessions)),
            cfg,
            runtime,
            statuses,
            dedup: Arc::new(Dedup::new(100_000)),
            session_locks: Default::default(),
            results_tx,
            results_rx: Mutex::new(results_rx),
            stats: Default::default(),
            leadership: None,
            tls,
            metrics: None,
        }
    }

    /// Counts results, dials and the connection into `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<crate::metrics::AgentMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Attach only while `leadership` says this replica leads, with its fencing token.
    pub fn with_leadership(mut self, leadership: crate::lease::Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// The endpoint for the next connection, with the TLS files re-read.
    fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        let t = crate::identity::refresh(&mut self.tls.lock().unwrap_or_else(|p| p.into_inner()));
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&t.ca))
            .identity(Identity::from_pem(&t.cert, &t.key));
        if let Some(name) = &t.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Endpoint::from_shared(self.cfg.control_plane_url.clone())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true))
    }

    /// Runs until `shutdown` is cancelled, reconnecting forever.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_cap);
        info!(agent = %self.cfg.agent_id, url = %self.cfg.control_plane_url, platform = %self.cfg.platform, "starting agent");
        // A drained stream, closed once the next one is attached.
        let mut previous: Option<Box<OldStream>> = None;
        loop {
            if let Some(l) = &self.leadership {
                let mut l = l.clone();
                let token = tokio::select! {
                    v = l.wait_for(|v| v.is_some()) => v.ok().and_then(|v| *v),
                    _ = shutdown.cancelled() => break,
                };
                let token = token.unwrap_or_default();
                self.cfg.fencing_token.store(token, Ordering::SeqCst);
                info!(fencing_token = token, "leading: attaching");
            }
            let started = Instant::now();
            let result = tokio::select! {
                r = self.attach_once(&shutdown, &mut previous) => r,
                _ = shutdown.cancelled() => Ok(SessionEnd::Shutdown),
                _ = lease_lost(&self.leadership) => Ok(SessionEnd::LostLease),
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            let delay = match result {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::LostLease) => {
                    warn!("lost the lease: stream closed");
                    continue;
                }
                Ok(SessionEnd::Drained(after, old)) => {
                    info!(
                        ?after,
                        "drained by the control plane; attaching again, then closing the drained stream"
                    );
                    previous = Some(old);
                    backoff.reset();
                    after + backoff.next_delay()
                }
                Err(e) => {
                    if let Some(s) = e.downcast_ref::<tonic::Status>()
                        && crate::backoff::refusal(s.code())
                    {
                        backoff.saturate();
                    }
                    let d = backoff.next_delay();
                    if previous.is_some() {
                        // Still attached on the drained stream: no gap yet.
                        info!(error = %format!("{e:#}"), retry_in = ?d, "attaching again failed; the drained stream stays open meanwhile");
                    } else {
                        warn!(error = %format!("{e:#}"), retry_in = ?d, "control plane stream ended");
                    }
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.runtime.shutdown().await;
        info!("agent stopped");
    }

    /// One stream, from Hello to its end. `previous` (a drained stream) is
    /// closed once this one is welcomed.
    async fn attach_once(
        &self,
        shutdown: &CancellationToken,
        previous: &mut Option<Box<OldStream>>,
    ) -> anyhow::Result<SessionEnd> {
        if let Some(m) = &self.metrics {
            m.dialing();
        }
        let channel: Channel = self.endpoint()?.connect().await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        // Changes from before this snapshot are in it: none is sent on its
        // own (the latest states are kept for the statuses that follow results).
        self.statuses.clear_dirty();
        let inventory = self.runtime.inventory().await?;
        let (tx, rx) = mpsc::channel::<pb::AgentFrame>(1024);
        let hello = pb::Hello {
            agent_id: self.cfg.agent_id.clone(),
            platform: self.cfg.platform.clone(),
            region: self.cfg.region.clone(),
            capacity: Some(self.cfg.capacity),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: streamspace::PROTOCOL_VERSION as i32,
            fencing_token: self.cfg.fencing_token.load(Ordering::SeqCst),
            inventory,
            supported_protocol_versions: streamspace::SUPPORTED_PROTOCOL_VERSIONS
                .iter()
                .map(|v| *v as i32)
                .collect(),
        };
        tx.send(frame(Out::Hello(hello))).await?;
        // Every frame is cut to Welcome.max_message_bytes once it is known.
        let max_bytes = Arc::new(AtomicU32::new(0));
        let limit = max_bytes.clone();
        let outbound = tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |mut f| {
            if !crate::frames::fit(&mut f, limit.load(Ordering::Relaxed)) {
                warn!(
                    max_message_bytes = limit.load(Ordering::Relaxed),
                    "a frame is larger than the control plane accepts even with its messages cut"
                );
            }
            f
        });
        let mut inbound = client.attach(outbound).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(pb::ControlFrame {
                frame: Some(In::Welcome(w)),
            }) => w,
            other => anyhow::bail!("expected Welcome as the first frame, got {other:?}"),
        };
        // 0: a control plane that predates negotiation, which speaks 1.
        let picked = match welcome.protocol_version {
            0 => pb::ProtocolVersion::ProtocolVersion1 as i32,
            v => v,
        };
        if !streamspace::SUPPORTED_PROTOCOL_VERSIONS
            .iter()
            .any(|v| *v as i32 == picked)
        {
            anyhow::bail!(
                "welcome.protocol_version: the control plane picked {}, which this agent does not speak",
                welcome.protocol_version
            );
        }
        max_bytes.store(welcome.max_message_bytes, Ordering::Relaxed);
        // At most max_in_flight commands are applied at once (0: no limit).
        let in_flight = Arc::new(Semaphore::new(match welcome.max_in_flight {
            0 => Semaphore::MAX_PERMITS,
            n => n as usize,
        }));
        let interval = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(10));
        self.stats.attaches.fetch_add(1, Ordering::Relaxed);
        if previous.take().is_some() {
            info!("attached again; closing the drained stream");
        }
        let _connected = self.metrics.as_ref().map(|m| m.connected());
        info!(agent = %self.cfg.agent_id, heartbeat = ?interval, "connected to the control plane");
        let mut results = self.results_rx.lock().await;
        let mut heartbeat = tokio::time::interval(interval);
        let mut seq = 0u64;
        // Once the control plane acknowledges heartbeats, a stream on which
        // nothing arrives for three intervals is gone (a connection cut
        // without FIN): end it and attach again, as the control plane does.
        let mut acked = false;
        let mut heard = Instant::now();
        loop {
            // Biased, statuses before results: a command's task reports the
            // session's status and then its result, and the control plane
            // must see them in that order (else a STOPPED status would arrive
            // after the session was already removed). After the result, the
            // session's latest status once more (see `send_result`).
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                _ = self.statuses.changed() => self.send_statuses(&tx).await?,
                Some((session, r)) = results.recv() => self.send_result(&tx, &session, r).await?,
                _ = heartbeat.tick() => {
                    if acked && heard.elapsed() > interval * 3 {
                        anyhow::bail!("nothing from the control plane for {:?}; the connection is gone", heard.elapsed());
                    }
                    seq += 1;
                    tx.send(frame(Out::Heartbeat(pb::Heartbeat { sequence: seq, in_use: Some(self.runtime.in_use()), active_sessions: self.runtime.active_sessions() }))).await?;
                }
                msg = inbound.message() => {
                    heard = Instant::now();
                    match msg? {
                        None => anyhow::bail!("the control plane closed the stream"),
                        Some(pb::ControlFrame { frame: Some(In::HeartbeatAck(_)) }) => acked = true,
                        Some(pb::ControlFrame { frame: Some(In::Command(c)) }) => self.command(c, &tx, &in_flight).await?,
                        Some(pb::ControlFrame { frame: Some(In::Drain(d)) }) => {
                            let after = d.reconnect_after.and_then(|d| Duration::try_from(d).ok()).unwrap_or(Duration::from_secs(1));
                            info!(reason = %d.reason, "drain requested");
                            self.stats.drains.fetch_add(1, Ordering::Relaxed);
                            return Ok(SessionEnd::Drained(after, Box::new(OldStream { _tx: tx, _inbound: inbound })));
                        }
                        Some(other) => debug!(?other, "ignoring unexpected frame"),
                    }
                }
            }
        }
    }

    /// Acks a delivery and applies it unless it is a duplicate.
    async fn command(
        &self,
        c: pb::Command,
        tx: &mpsc::Sender<pb::AgentFrame>,
        in_flight: &Arc<Semaphore>,
    ) -> anyhow::Result<()> {
        let id = c.command_id.clone();
        tx.send(frame(Out::Ack(pb::CommandAck {
            command_id: id.clone(),
        })))
        .await?;
        match self.dedup.deliver(&id) {
            Seen::InProgress => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Seen::Done(r) => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.send_result(tx, &c.session_id, r).await?;
                return Ok(());
            }
            Seen::New => {}
        }
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        let lock = self
            .session_locks
            .lock()
            .expect("session locks")
            .entry(c.session_id.clone())
            .or_default()
            .clone();
        let (runtime, admission, dedup, results, in_flight) = (
            self.runtime.clone(),
            self.admission.clone(),
            self.dedup.clone(),
            self.results_tx.clone(),
            in_flight.clone(),
        );
        let metrics = self.metrics.clone();
        // A child of the control plane's dispatch span, when it sent one.
        let span = info_span!("command.apply", command_id = %id, session_id = %c.session_id, generation = c.session_generation, action = crate::metrics::command_type(&c));
        streamspace_runtime_util::telemetry::set_parent(
            &span,
            c.trace_context
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        tokio::spawn(
            async move {
                let _guard = lock.lock().await;
                let _permit = in_flight.acquire().await;
                let started = Instant::now();
                let outcome = apply(&*runtime, &admission, &c).await;
                if let Some(m) = &metrics {
                    m.applied(&c, &outcome, started.elapsed());
                }
                let result = pb::CommandResult {
                    command_id: id.clone(),
                    outcome: Some(outcome),
                };
                dedup.finish(&id, result.clone());
                let _ = results.send((c.session_id, result)).await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Sends the latest status of every session whose latest is unsent.
    async fn send_statuses(&self, tx: &mpsc::Sender<pb::AgentFrame>) -> anyhow::Result<()> {
        for s in self.statuses.take_dirty() {
            tx.send(frame(Out::Status(s))).await?;
        }
        Ok(())
    }

    /// Sends a command result, fresh or replayed. Unsent statuses go first
    /// (a status the command's task reported precedes its result); the
    /// session's latest status, read now, follows it, so the last frame about
    /// a session is always what the agent observes: a result replayed after
    /// a reconnect cannot leave a session that died meanwhile looking alive.
    async fn send_result(
        &self,
        tx: &mpsc::Sender<pb::AgentFrame>,
        session: &str,
        r: pb::CommandResult,
    ) -> anyhow::Result<()> {
        self.send_statuses(tx).await?;
        tx.send(frame(Out::Result(r))).await?;
        if let Some(s) = self.statuses.take_latest(session) {
            tx.send(frame(Out::Status(s))).await?;
        }
        Ok(())
    }
}

/// Applies one command on the runtime; a start is admitted first (see
/// [`Admission`]).
pub async fn apply(
    rt: &dyn Runtime,
    admission: &Admission,
    c: &pb::Command,
) -> pb::command_result::Outcome {
    use pb::command::Action as A;
    use pb::command_result::Outcome;
    let s = c.session_id.as_str();
    let r = match &c.action {
        Some(A::Start(start)) => match admission.admit(rt, s).await {
            Ok(()) => {
                let r = rt.start(s, start).await;
                admission.started(s, r.is_ok()).await;
                r
            }
            Err(e) => Err(e),
        },
        Some(A::Stop(stop)) => {
            let r = rt.stop(s, stop.delete_home).await;
            if r.is_ok() {
                admission.stopped(s).await;
            }
            r
        }
        Some(A::Hibernate(_)) => rt.hibernate(s).await,
        Some(A::Wake(_)) => rt.wake(s).await,
        None => Err(crate::runtime::RuntimeError::new(
            pb::FailureReason::Invalid,
            "command has no action (start, stop, hibernate or wake)",
            false,
        )),
    };
    match r {
        Ok(()) => {
            info!("command applied");
            Outcome::Succeeded(pb::CommandSucceeded {})
        }
        Err(e) => {
            warn!(reason = ?e.reason, message = %e.message, "command failed");
            Outcome::Failed(pb::CommandFailed {
                reason: e.reason as i32,
                message: e.message,
                retryable: e.retryable,
            })
        }
    }
}
