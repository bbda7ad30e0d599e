//! Prometheus metrics of the control plane, served as OpenMetrics text at
//! `/metrics` on a plain-HTTP listener of its own (`--metrics-addr`; off by
//! default, so an unset flag costs nothing). docs/OBSERVABILITY.md lists
//! every metric with its labels.
//!
//! Two kinds: what happens is counted where it happens (the agent hub times
//! each command's stages as its frames pass: sent, acknowledged, finished),
//! and what *is* (agents connected, sessions by phase, the outbox by state,
//! certificate expiry) is read when Prometheus scrapes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::Lifecycle;
use crate::core::model::{Command, Millis, now_ms};
use crate::core::store::Tally;

/// Upper bounds of the command latency histograms, in seconds: 1 ms to
/// about 2 minutes (the default command timeout), roughly x2.5 per bucket.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// Most commands timed at once (each is in flight on some agent); beyond it
/// new ones are not timed rather than growing without bound.
const MAX_TIMED: usize = 200_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    r#type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    r#type: String,
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    certificate: String,
    name: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// When a command in flight passed each stage.
struct Timing {
    action: &'static str,
    accepted_ms: Millis,
    delivered: Instant,
    acknowledged: Option<Instant>,
}

pub struct Metrics {
    registry: Registry,
    delivery: Family<TypeLabels, Histogram>,
    ack: Family<TypeLabels, Histogram>,
    apply: Family<OutcomeLabels, Histogram>,
    latency: Family<OutcomeLabels, Histogram>,
    finished: Family<FinishedLabels, Counter>,
    accepted: Counter,
    accepted_seen: AtomicU64,
    attach_rejections: Family<ReasonLabels, Counter>,
    agents_connected: Gauge,
    heartbeat_age: Family<AgentLabels, FloatGauge>,
    sessions: Family<PhaseLabels, Gauge>,
    outbox: Family<StateLabels, Gauge>,
    cert_expiry: Family<CertLabels, FloatGauge>,
    api_requests: Family<RequestLabels, Counter>,
    api_seconds: Family<MethodLabels, Histogram>,
    timed: Mutex<HashMap<String, Timing>>,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let hist = || Family::new_with_constructor(histogram as fn() -> Histogram);
        let hist2 = || Family::new_with_constructor(histogram as fn() -> Histogram);
        let mut m = Self {
            registry: Registry::with_prefix("streamspace"),
            delivery: hist(),
            ack: hist(),
            apply: hist2(),
            latency: hist2(),
            finished: Family::default(),
            accepted: Counter::default(),
            accepted_seen: AtomicU64::new(0),
            attach_rejections: Family::default(),
            agents_connected: Gauge::default(),
            heartbeat_age: Family::default(),
            sessions: Family::default(),
            outbox: Family::default(),
            cert_expiry: Family::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(histogram as fn() -> Histogram),
            timed: Mutex::new(HashMap::new()),
        };
        let registry = &mut m.registry;
        registry.register(
            "command_delivery_seconds",
            "Time from a command's acceptance (written to the outbox) to its delivery to the agent",
            m.delivery.clone(),
        );
        registry.register(
            "command_ack_seconds",
            "Time from a command's delivery to the agent's acknowledgement",
            m.ack.clone(),
        );
        registry.register(
            "command_apply_seconds",
            "Time from a command's acknowledgement to its result (the agent applying it)",
            m.apply.clone(),
        );
        registry.register(
            "command_latency_seconds",
            "Time from a command's acceptance to its result: the end-to-end SLO histogram",
            m.latency.clone(),
        );
        registry.register(
            "commands_finished",
            "Commands finished by an agent's result, by type, outcome and failure reason",
            m.finished.clone(),
        );
        registry.register(
            "commands_accepted",
            "Commands written to the outbox (every create, hibernate, wake, delete and retry that needs one)",
            m.accepted.clone(),
        );
        registry.register(
            "agent_attach_rejections",
            "Agent streams refused at attach, by reason",
            m.attach_rejections.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents with an attached stream on this replica",
            m.agents_connected.clone(),
        );
        registry.register(
            "agent_heartbeat_age_seconds",
            "Seconds since each attached agent's last heartbeat",
            m.heartbeat_age.clone(),
        );
        registry.register("sessions", "Sessions by observed phase", m.sessions.clone());
        registry.register(
            "outbox_commands",
            "Commands not finished yet, by state (pending: not sent; delivered; acknowledged)",
            m.outbox.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until a certificate's notAfter (negative: expired): the server's, each agent CA's, each attached agent's client certificate",
            m.cert_expiry.clone(),
        );
        registry.register(
            "api_requests",
            "API calls by method and gRPC status code",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_seconds",
            "Time from an API call's arrival to its response headers (a unary call's whole duration; a stream's opening), by method",
            m.api_seconds.clone(),
        );
        m
    }

    /// An API call to `method` answered with `code` after `took`.
    pub fn api_request(&self, method: &str, code: &str, took: std::time::Duration) {
        self.api_requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                code: code.into(),
            })
            .inc();
        self.api_seconds
            .get_or_create(&MethodLabels {
                method: method.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The hub sent `c` to its agent.
    pub fn delivered(&self, c: &Command) {
        let waited = (now_ms() - c.created_ms).max(0) as f64 / 1000.0;
        let action = c.action.name();
        self.delivery
            .get_or_create(&TypeLabels {
                r#type: action.into(),
            })
            .observe(waited);
        let mut timed = self.timed.lock().expect("metrics lock");
        if timed.len() < MAX_TIMED || timed.contains_key(&c.id) {
            timed.insert(
                c.id.clone(),
                Timing {
                    action,
                    accepted_ms: c.created_ms,
                    delivered: Instant::now(),
                    acknowledged: None,
                },
            );
        }
    }

    /// The agent acknowledged command `id`.
    pub fn acknowledged(&self, id: &str) {
        let mut timed = self.timed.lock().expect("metrics lock");
        if let Some(t) = timed.get_mut(id).filter(|t| t.acknowledged.is_none()) {
            let now = Instant::now();
            t.acknowledged = Some(now);
            self.ack
                .get_or_create(&TypeLabels {
                    r#type: t.action.into(),
                })
                .observe(now.duration_since(t.delivered).as_secs_f64());
        }
    }

    /// The agent's result for command `id`: `outcome` is `succeeded` or
    /// `failed`, `reason` the failure reason (empty on success).
    pub fn finished(&self, id: &str, outcome: &str, reason: &str) {
        let Some(t) = self.timed.lock().expect("metrics lock").remove(id) else {
            return;
        };
        let labels = OutcomeLabels {
            r#type: t.action.into(),
            outcome: outcome.into(),
        };
        let since_ack = t.acknowledged.unwrap_or(t.delivered).elapsed();
        self.apply
            .get_or_create(&labels)
            .observe(since_ack.as_secs_f64());
        let total = (now_ms() - t.accepted_ms).max(0) as f64 / 1000.0;
        self.latency.get_or_create(&labels).observe(total);
        self.finished
            .get_or_create(&FinishedLabels {
                r#type: t.action.into(),
                outcome: outcome.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// An agent stream was refused at attach.
    pub fn attach_rejected(&self, reason: &str) {
        self.attach_rejections
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Reads what *is* (roster, store, certificates) into the gauges, then
    /// encodes everything as OpenMetrics text.
    pub async fn render(
        &self,
        lifecycle: &Lifecycle,
        tls: &crate::tls::ServerTls,
    ) -> Result<String, String> {
        let accepted = lifecycle.commands_accepted();
        let seen = self.accepted_seen.swap(accepted, Ordering::Relaxed);
        self.accepted.inc_by(accepted.saturating_sub(seen));

        let store = lifecycle.store();
        let phases = store
            .tally(Tally::SessionsByPhase)
            .await
            .map_err(|e| e.to_string())?;
        self.sessions.clear();
        for (phase, n) in phases {
            self.sessions
                .get_or_create(&PhaseLabels { phase })
                .set(n as i64);
        }
        let states = store
            .tally(Tally::ActiveCommandsByState)
            .await
            .map_err(|e| e.to_string())?;
        self.outbox.clear();
        for state in ["pending", "delivered", "acknowledged"] {
            let n = states
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.outbox
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }

        let agents = lifecycle.roster().all();
        self.agents_connected.set(agents.len() as i64);
        self.heartbeat_age.clear();
        self.cert_expiry.clear();
        let now = Instant::now();
        let until = |t: SystemTime| match t.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        for a in &agents {
            self.heartbeat_age
                .get_or_create(&AgentLabels {
                    agent: a.hello.id.clone(),
                })
                .set(
                    now.saturating_duration_since(a.last_heartbeat)
                        .as_secs_f64(),
                );
            if a.hello.cert_expiry_ms > 0 {
                let t =
                    UNIX_EPOCH + std::time::Duration::from_millis(a.hello.cert_expiry_ms as u64);
                self.cert_expiry
                    .get_or_create(&CertLabels {
                        certificate: "agent".into(),
                        name: a.hello.id.clone(),
                    })
                    .set(until(t));
            }
        }
        let expiry = tls.expiry();
        self.cert_expiry
            .get_or_create(&CertLabels {
                certificate: "server".into(),
                name: expiry.server.subject.clone(),
            })
            .set(until(expiry.server.not_after));
        for ca in &expiry.agent_cas {
            self.cert_expiry
                .get_or_create(&CertLabels {
                    certificate: "ca".into(),
                    name: ca.subject.clone(),
                })
                .set(until(ca.not_after));
        }

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text, for
/// clients that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): a counter's family is named with its `_total` suffix, and the
/// `# UNIT` and `# EOF` lines go.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `/metrics` on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    lifecycle: std::sync::Arc<Lifecycle>,
    tls: crate::tls::ServerTls,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            let (metrics, lifecycle, tls) = (metrics.clone(), lifecycle.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (metrics, lifecycle, tls) =
                            (metrics.clone(), lifecycle.clone(), tls.clone());
                        async move {
                            let reply = |code: StatusCode, ctype: &'static str, body: String| {
                                Response::builder()
                                    .status(code)
                                    .header("content-type", ctype)
                                    .body(Full::new(Bytes::from(body)))
                            };
                            if req.uri().path() != "/metrics" {
                                return reply(
                                    StatusCode::NOT_FOUND,
                                    "text/plain",
                                    "only /metrics is served here\n".into(),
                                );
                            }
                            let openmetrics = req.headers().get_all("accept").iter().any(|v| {
                                v.to_str()
                                    .is_ok_and(|v| v.contains("application/openmetrics-text"))
                            });
                            match metrics.render(&lifecycle, &tls).await {
                                Ok(text) if openmetrics => reply(
                                    StatusCode::OK,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    text,
                                ),
                                Ok(text) => reply(
                                    StatusCode::OK,
                                    "text/plain; version=0.0.4; charset=utf-8",
                                    prometheus_text(&text),
                                ),
                                Err(e) => reply(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "text/plain",
                                    format!("metrics unavailable: {e}\n"),
                                ),
                            }
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_with_total() {
        let om = "# HELP s_commands_accepted Commands.\n# TYPE s_commands_accepted counter\n\
                  s_commands_accepted_total 3\n# HELP s_up Up.\n# TYPE s_up gauge\n# UNIT s_up seconds\n\
                  s_up 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP s_commands_accepted_total Commands.\n# TYPE s_commands_accepted_total counter\n\
             s_commands_accepted_total 3\n# HELP s_up Up.\n# TYPE s_up gauge\ns_up 1\n"
        );
    }

    /// Stages are timed per command id; a result for a command never
    /// delivered (another replica sent it) is not observed.
    #[test]
    fn a_command_is_timed_through_its_stages() {
        let m = Metrics::new();
        let mut c = Command {
            id: "c1".into(),
            session: "s".into(),
            agent_id: "a".into(),
            generation: 1,
            action: crate::core::model::Action::Wake,
            state: crate::core::model::CommandState::Delivered,
            deadline_ms: 0,
            created_ms: now_ms() - 1500,
            updated_ms: 0,
            failure_reason: crate::core::model::FailureReason::None,
            message: String::new(),
            retryable: false,
            attempt: 1,
            not_before_ms: 0,
            trace_context: String::new(),
        };
        m.delivered(&c);
        m.acknowledged("c1");
        m.finished("c1", "succeeded", "");
        m.finished("unknown", "succeeded", "");
        c.id = "c2".into();
        m.delivered(&c);
        m.finished("c2", "failed", "image");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for line in [
            "streamspace_command_latency_seconds_count{type=\"wake\",outcome=\"succeeded\"} 1",
            "streamspace_command_latency_seconds_count{type=\"wake\",outcome=\"failed\"} 1",
            "streamspace_command_ack_seconds_count{type=\"wake\"} 1",
            "streamspace_command_delivery_seconds_count{type=\"wake\"} 2",
            "streamspace_commands_finished_total{type=\"wake\",outcome=\"failed\",reason=\"image\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // 1.5 s from acceptance: in the 2.5 s bucket, not the 1 s one.
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("streamspace_command_latency_seconds_bucket{")
                        && l.contains("outcome=\"succeeded\"")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(bucket("1.0"), "0");
        assert_eq!(bucket("2.5"), "1");
        assert!(
            m.timed.lock().unwrap().is_empty(),
            "finished commands are forgotten"
        );
    }
}
