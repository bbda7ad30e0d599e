//! Prometheus metrics of the control plane, served as OpenMetrics text at
//! `/metrics` on a plain-HTTP listener of its own (`--metrics-addr`; off by
//! default, so an unset flag costs nothing). docs/OBSERVABILITY.md lists
//! every metric with its labels.
//!
//! Two kinds: what happens is counted where it happens (the agent hub times
//! each command's stages as its frames pass: sent, acknowledged, finished),
//! and what *is* (agents connected, sessions by phase, the outbox by state,
//! certificate expiry) is read when Prometheus scrapes. The store reports
//! each committed write transaction through [`WriteObserver`], and the
//! embedded Session controller its reconciles.

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
use streamspace_runtime_util::metrics_http::{self, SECONDS_BUCKETS as BUCKETS};

use crate::core::Lifecycle;
use crate::core::model::{Command, Millis, now_ms};
use crate::core::store::{Tally, WriteObserver};

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
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    outcome: &'static str,
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
    store_transaction: Family<StoreLabels, Histogram>,
    group_commit: Histogram,
    /// No sample until a controller starts on this replica: a control
    /// plane run without `--kubernetes` does not look like a stopped one.
    controller_running: Family<Vec<(String, String)>, Gauge>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_seconds: Histogram,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Operations per commit: 1, 2, 4, ..., 512 (the SQLite writer's largest group).
fn group_sizes() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 10,
    ))
}

/// Holds `streamspace_controller_running` at 1 while it lives.
pub struct ControllerRunning(Gauge);

impl Drop for ControllerRunning {
    fn drop(&mut self) {
        self.0.set(0);
    }
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
            store_transaction: Family::new_with_constructor(histogram as fn() -> Histogram),
            group_commit: group_sizes(),
            controller_running: Family::default(),
            reconciles: Family::default(),
            reconcile_seconds: histogram(),
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
        registry.register(
            "store_transaction_seconds",
            "Wall time of each committed write transaction, by store (sqlite: one group commit of the writer; postgres: one write)",
            m.store_transaction.clone(),
        );
        registry.register(
            "store_group_commit_size",
            "Operations committed together per write transaction (SQLite groups the writer's queue; PostgreSQL always 1)",
            m.group_commit.clone(),
        );
        registry.register(
            "controller_running",
            "1 while this replica runs the embedded Session controller",
            m.controller_running.clone(),
        );
        registry.register(
            "controller_reconciles",
            "Session reconciles of the embedded controller, by outcome (ok, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_seconds",
            "Time one Session reconcile took",
            m.reconcile_seconds.clone(),
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

    /// The Session controller runs until the returned guard is dropped.
    pub fn controller_running(&self) -> ControllerRunning {
        let g = self.controller_running.get_or_create(&Vec::new()).clone();
        g.set(1);
        ControllerRunning(g)
    }

    /// A Session reconcile ended after `seconds`: `ok`, or with an error.
    pub fn reconciled(&self, ok: bool, seconds: f64) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { outcome })
            .inc();
        self.reconcile_seconds.observe(seconds);
    }

    /// `c` passed its deadline without a result: counted as finished with
    /// outcome `expired` (reason `deadline`), and no longer timed.
    pub fn expired(&self, c: &Command) {
        self.finished
            .get_or_create(&FinishedLabels {
                r#type: c.action.name().into(),
                outcome: "expired".into(),
                reason: "deadline".into(),
            })
            .inc();
        self.timed.lock().expect("metrics lock").remove(&c.id);
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

        metrics_http::encode(&self.registry)
    }
}

impl WriteObserver for Metrics {
    fn write_committed(&self, store: &'static str, seconds: f64, ops: usize) {
        self.store_transaction
            .get_or_create(&StoreLabels { store })
            .observe(seconds);
        self.group_commit.observe(ops as f64);
    }
}

/// Serves `/metrics` on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    lifecycle: std::sync::Arc<Lifecycle>,
    tls: crate::tls::ServerTls,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let render = move || {
        let (metrics, lifecycle, tls) = (metrics.clone(), lifecycle.clone(), tls.clone());
        async move { metrics.render(&lifecycle, &tls).await }
    };
    Ok(metrics_http::serve(addr, render, stop.cancelled_owned()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            sent_before: false,
        };
        m.delivered(&c);
        m.acknowledged("c1");
        m.finished("c1", "succeeded", "");
        m.finished("unknown", "succeeded", "");
        c.id = "c2".into();
        m.delivered(&c);
        m.finished("c2", "failed", "image");
        c.id = "c3".into();
        m.delivered(&c);
        m.expired(&c);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for line in [
            "streamspace_command_latency_seconds_count{type=\"wake\",outcome=\"succeeded\"} 1",
            "streamspace_command_latency_seconds_count{type=\"wake\",outcome=\"failed\"} 1",
            "streamspace_command_ack_seconds_count{type=\"wake\"} 1",
            "streamspace_command_delivery_seconds_count{type=\"wake\"} 3",
            "streamspace_commands_finished_total{type=\"wake\",outcome=\"failed\",reason=\"image\"} 1",
            "streamspace_commands_finished_total{type=\"wake\",outcome=\"expired\",reason=\"deadline\"} 1",
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

    /// Store commits land in the store's transaction histogram and the group
    /// size histogram; the controller's guard holds the gauge at 1 until it
    /// goes; reconciles count by outcome.
    #[test]
    fn store_commits_and_controller_reconciles_are_kept() {
        let m = Metrics::new();
        m.write_committed("sqlite", 0.002, 3);
        m.write_committed("sqlite", 0.2, 512);
        let text = metrics_http::encode(&m.registry).unwrap();
        assert!(
            !text.contains("streamspace_controller_running "),
            "no sample before a controller starts:\n{text}"
        );
        let running = m.controller_running();
        m.reconciled(true, 0.01);
        m.reconciled(true, 0.02);
        m.reconciled(false, 3.0);
        let text = metrics_http::encode(&m.registry).unwrap();
        for line in [
            "streamspace_store_transaction_seconds_count{store=\"sqlite\"} 2",
            "streamspace_store_transaction_seconds_bucket{le=\"0.0025\",store=\"sqlite\"} 1",
            "streamspace_store_group_commit_size_count 2",
            "streamspace_store_group_commit_size_bucket{le=\"2.0\"} 0",
            "streamspace_store_group_commit_size_bucket{le=\"4.0\"} 1",
            "streamspace_store_group_commit_size_bucket{le=\"512.0\"} 2",
            "streamspace_controller_running{} 1",
            "streamspace_controller_reconciles_total{outcome=\"ok\"} 2",
            "streamspace_controller_reconciles_total{outcome=\"error\"} 1",
            "streamspace_controller_reconcile_seconds_count 3",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(running);
        let text = metrics_http::encode(&m.registry).unwrap();
        assert!(
            text.contains("streamspace_controller_running{} 0\n"),
            "{text}"
        );
    }
}
