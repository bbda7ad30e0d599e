//! The agent's Prometheus metrics, served at `/metrics` on a plain-HTTP
//! listener of its own (`--metrics-addr`; off by default, and then nothing
//! is kept). docs/OBSERVABILITY.md lists them with their labels.
//!
//! Each is counted in one place: commands where their results are produced
//! (the command task in `client.rs`), reconnects where the stream is dialled,
//! the connection while a stream is attached (a guard); leadership is read
//! from the Lease election's channel when Prometheus scrapes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use streamspace::v1 as pb;
use streamspace_runtime_util::metrics_http::{self, SECONDS_BUCKETS};

use crate::lease::Leadership;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    r#type: &'static str,
    outcome: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

pub struct AgentMetrics {
    registry: Registry,
    applied: Family<OutcomeLabels, Counter>,
    runtime: Family<OutcomeLabels, Histogram>,
    reconnects: Counter,
    dials: AtomicU64,
    connected: Gauge,
    leader: Gauge,
    /// The HA election's view; None = HA off, so this process always leads.
    leadership: Option<Leadership>,
}

/// The `type` label of a command: `start`, `stop`, `hibernate`, `wake`
/// (`none` for a command without an action, which fails).
pub fn command_type(c: &pb::Command) -> &'static str {
    use pb::command::Action as A;
    match &c.action {
        Some(A::Start(_)) => "start",
        Some(A::Stop(_)) => "stop",
        Some(A::Hibernate(_)) => "hibernate",
        Some(A::Wake(_)) => "wake",
        None => "none",
    }
}

/// The `outcome` label of a result: `succeeded` or `failed`.
pub fn outcome_name(o: &pb::command_result::Outcome) -> &'static str {
    match o {
        pb::command_result::Outcome::Succeeded(_) => "succeeded",
        pb::command_result::Outcome::Failed(_) => "failed",
    }
}

/// Holds `streamspace_agent_connected` at 1 while a stream is attached.
pub struct Connected(Gauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

impl AgentMetrics {
    /// Metrics of an agent whose leadership `leadership` tells (None: HA
    /// is off and the agent always leads).
    pub fn new(leadership: Option<Leadership>) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("streamspace_agent"),
            applied: Family::default(),
            runtime: Family::new_with_constructor(histogram as fn() -> Histogram),
            reconnects: Counter::default(),
            dials: AtomicU64::new(0),
            connected: Gauge::default(),
            leader: Gauge::default(),
            leadership,
        };
        let r = &mut m.registry;
        r.register(
            "commands_applied",
            "Commands this agent applied (first deliveries; duplicates are not applied again), by type and outcome",
            m.applied.clone(),
        );
        r.register(
            "runtime_seconds",
            "Time the runtime took to apply a command, by type and outcome",
            m.runtime.clone(),
        );
        r.register(
            "reconnects",
            "Stream dials to the control plane after the first one",
            m.reconnects.clone(),
        );
        r.register(
            "connected",
            "1 while a stream to the control plane is attached",
            m.connected.clone(),
        );
        r.register(
            "leader",
            "1 while this process is the active agent: it holds the HA Lease, or HA is off",
            m.leader.clone(),
        );
        m
    }

    /// Command `c` produced `outcome` after the runtime worked on it for `took`.
    pub fn applied(&self, c: &pb::Command, outcome: &pb::command_result::Outcome, took: Duration) {
        let labels = OutcomeLabels {
            r#type: command_type(c),
            outcome: outcome_name(outcome),
        };
        self.applied.get_or_create(&labels).inc();
        self.runtime
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The stream is being dialled; every dial after the first is a reconnect.
    pub fn dialing(&self) {
        if self.dials.fetch_add(1, Ordering::Relaxed) > 0 {
            self.reconnects.inc();
        }
    }

    /// A stream is attached until the returned guard is dropped.
    pub fn connected(&self) -> Connected {
        self.connected.set(1);
        Connected(self.connected.clone())
    }

    /// Reads leadership into its gauge, then encodes everything as
    /// OpenMetrics text.
    pub fn render(&self) -> Result<String, String> {
        let leads = self
            .leadership
            .as_ref()
            .is_none_or(|l| l.borrow().is_some());
        self.leader.set(i64::from(leads));
        metrics_http::encode(&self.registry)
    }
}

/// Serves `/metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let render = move || {
        let m = metrics.clone();
        async move { m.render() }
    };
    metrics_http::serve(addr, render, shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(action: pb::command::Action) -> pb::Command {
        pb::Command {
            command_id: "c".into(),
            session_id: "s".into(),
            action: Some(action),
            ..Default::default()
        }
    }

    fn line_value(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    }

    #[test]
    fn results_dials_connection_and_leadership_are_kept() {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let m = AgentMetrics::new(Some(rx));
        let ok = pb::command_result::Outcome::Succeeded(pb::CommandSucceeded {});
        let failed = pb::command_result::Outcome::Failed(pb::CommandFailed::default());
        let start = command(pb::command::Action::Start(Default::default()));
        let stop = command(pb::command::Action::Stop(Default::default()));
        m.applied(&start, &ok, Duration::from_millis(30));
        m.applied(&start, &failed, Duration::from_millis(2));
        m.applied(&stop, &ok, Duration::from_secs(3));
        m.dialing();
        m.dialing();
        m.dialing();
        let guard = m.connected();
        let text = m.render().unwrap();
        for (series, want) in [
            (
                r#"streamspace_agent_commands_applied_total{type="start",outcome="succeeded"}"#,
                "1",
            ),
            (
                r#"streamspace_agent_commands_applied_total{type="start",outcome="failed"}"#,
                "1",
            ),
            (
                r#"streamspace_agent_commands_applied_total{type="stop",outcome="succeeded"}"#,
                "1",
            ),
            (
                r#"streamspace_agent_runtime_seconds_count{type="stop",outcome="succeeded"}"#,
                "1",
            ),
            (
                r#"streamspace_agent_runtime_seconds_bucket{le="2.5",type="stop",outcome="succeeded"}"#,
                "0",
            ),
            (
                r#"streamspace_agent_runtime_seconds_bucket{le="10.0",type="stop",outcome="succeeded"}"#,
                "1",
            ),
            ("streamspace_agent_reconnects_total", "2"),
            ("streamspace_agent_connected", "1"),
            ("streamspace_agent_leader", "0"),
        ] {
            assert_eq!(
                line_value(&text, series).as_deref(),
                Some(want),
                "{series} in\n{text}"
            );
        }
        tx.send(Some(7)).unwrap();
        drop(guard);
        let text = m.render().unwrap();
        assert_eq!(
            line_value(&text, "streamspace_agent_leader").as_deref(),
            Some("1")
        );
        assert_eq!(
            line_value(&text, "streamspace_agent_connected").as_deref(),
            Some("0")
        );
        // Without HA the agent always leads.
        let solo = AgentMetrics::new(None).render().unwrap();
        assert_eq!(
            line_value(&solo, "streamspace_agent_leader").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn labels_name_every_action_and_outcome() {
        use pb::command::Action as A;
        let names: Vec<&str> = [
            A::Start(Default::default()),
            A::Stop(Default::default()),
            A::Hibernate(Default::default()),
            A::Wake(Default::default()),
        ]
        .into_iter()
        .map(|a| command_type(&command(a)))
        .collect();
        assert_eq!(names, ["start", "stop", "hibernate", "wake"]);
        assert_eq!(command_type(&pb::Command::default()), "none");
    }
}
