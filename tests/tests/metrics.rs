//! The control plane's Prometheus metrics against the real tools: after a
//! scripted run (sessions created and deleted through the API, two agents
//! attached), `promtool check metrics` accepts the exposition, and a real
//! Prometheus server (Debian's, started here) scrapes it; PromQL then
//! shows the accepted→finished histogram counting every accepted command,
//! the connected agents, and the server certificate's expiry as generated.
//! A second run scrapes a real agent process (`--metrics-addr`) beside the
//! control plane: every command it applied, its connection and leadership,
//! and the store's write transactions on the control plane.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::procs::{AgentProc, free_addr};
use streamspace_tests::prom::{MetricsCp, Prometheus, http_get, promtool, require};
use streamspace_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_happened() {
    init();
    let (Some(promtool_bin), Some(prometheus)) = (require("promtool"), require("prometheus"))
    else {
        return;
    };
    // The server certificate expires in exactly 10 days.
    const VALID: Duration = Duration::from_secs(10 * 86_400);
    let MetricsCp {
        pki,
        tmp,
        cp,
        metrics,
    } = MetricsCp::start(VALID).await;
    let _agents = NoopAgents::start(&pki, cp.agent_addr, &[("prom-a", 0), ("prom-b", 0)]);
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.wait_agents(2, 30).await;

    const N: usize = 6;
    for i in 0..N {
        api.create(&format!("prom-{i}"), "static-files")
            .await
            .unwrap();
    }
    for i in 0..N {
        api.wait_phase(&format!("prom-{i}"), pb::SessionPhase::Running, 30)
            .await;
    }
    for i in 0..N {
        api.sessions
            .delete_session(pb::DeleteSessionRequest {
                name: format!("prom-{i}"),
                delete_home: false,
            })
            .await
            .unwrap();
    }
    for i in 0..N {
        api.wait_gone(&format!("prom-{i}"), 30).await;
    }

    // The exposition passes promtool's checks (format and naming).
    let text = http_get(metrics, "/metrics");
    promtool(&promtool_bin, &["check", "metrics"], &text);

    // A real Prometheus scrapes it.
    let prom = Prometheus::start(&prometheus, tmp.path(), &[metrics], &[]);
    let accepted = wait_for("Prometheus to scrape the control plane", 60, || async {
        prom.query("streamspace_commands_accepted_total")
    })
    .await;
    assert_eq!(accepted, (2 * N) as f64, "a start and a stop per session");
    let latency = prom
        .query("sum(streamspace_command_latency_seconds_count)")
        .unwrap();
    assert_eq!(
        latency, accepted,
        "every accepted command finished and was timed"
    );
    let ok = prom
        .query(r#"sum(streamspace_commands_finished_total{outcome="succeeded"})"#)
        .unwrap();
    assert_eq!(ok, accepted);
    assert_eq!(prom.query("streamspace_agents_connected"), Some(2.0));
    assert_eq!(
        prom.query(r#"streamspace_outbox_commands{state="pending"}"#),
        Some(0.0)
    );
    // The server certificate's 10 days, less the moments since it was made.
    let expected = VALID.as_secs_f64();
    let gauge = prom
        .query(r#"streamspace_certificate_expiry_seconds{certificate="server"}"#)
        .unwrap();
    assert!(
        gauge <= expected && gauge > expected - 300.0,
        "server certificate expiry: gauge {gauge} s, certificate says {expected} s"
    );
    let agent = prom
        .query(r#"streamspace_certificate_expiry_seconds{certificate="agent",name="prom-a"}"#)
        .unwrap();
    assert!(agent > 0.0, "{agent}");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_an_agent_and_the_store() {
    init();
    let (Some(promtool_bin), Some(prometheus)) = (require("promtool"), require("prometheus"))
    else {
        return;
    };
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let store = if db.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let o = CpOptions {
        metrics: true,
        ..Default::default()
    };
    let cp = start_cp(&pki, &db, &o).await;
    let cp_metrics = cp.metrics_addr.expect("a metrics listener");
    let agent_metrics = free_addr();
    let flag = format!("--metrics-addr={agent_metrics}");
    let _agent = AgentProc::spawn_with(
        &pki,
        "prom-agent",
        cp.agent_addr,
        &tmp.path().join("agent"),
        &["--platform=process", &flag],
        &[],
    );
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.wait_agents(1, 30).await;

    const N: usize = 4;
    for i in 0..N {
        api.create(&format!("agent-prom-{i}"), "static-files")
            .await
            .unwrap();
    }
    for i in 0..N {
        api.wait_phase(&format!("agent-prom-{i}"), pb::SessionPhase::Running, 60)
            .await;
    }
    for i in 0..N {
        api.sessions
            .delete_session(pb::DeleteSessionRequest {
                name: format!("agent-prom-{i}"),
                delete_home: false,
            })
            .await
            .unwrap();
    }
    for i in 0..N {
        api.wait_gone(&format!("agent-prom-{i}"), 60).await;
    }

    // The agent's exposition passes promtool's checks too.
    let text = http_get(agent_metrics, "/metrics");
    promtool(&promtool_bin, &["check", "metrics"], &text);

    let prom = Prometheus::start(&prometheus, tmp.path(), &[cp_metrics, agent_metrics], &[]);
    let applied = wait_for("Prometheus to scrape the agent", 60, || async {
        prom.query(r#"sum(streamspace_agent_commands_applied_total{outcome="succeeded"})"#)
    })
    .await;
    assert_eq!(applied, (2 * N) as f64, "a start and a stop per session");
    let failed = prom.query(r#"sum(streamspace_agent_commands_applied_total{outcome="failed"})"#);
    assert!(failed.is_none_or(|f| f == 0.0), "failed: {failed:?}");
    assert_eq!(
        prom.query(r#"sum(streamspace_agent_commands_applied_total{type="start"})"#),
        Some(N as f64)
    );
    assert_eq!(
        prom.query("sum(streamspace_agent_runtime_seconds_count)"),
        Some((2 * N) as f64),
        "every applied command was timed"
    );
    assert_eq!(prom.query("streamspace_agent_connected"), Some(1.0));
    assert_eq!(prom.query("streamspace_agent_leader"), Some(1.0));
    assert_eq!(
        prom.query("streamspace_agent_reconnects_total"),
        Some(0.0),
        "one dial, no reconnect"
    );

    // The control plane's store timed its write transactions.
    let q = format!(r#"streamspace_store_transaction_seconds_count{{store="{store}"}}"#);
    let txns = wait_for("Prometheus to scrape the control plane", 60, || async {
        prom.query(&q)
    })
    .await;
    assert!(txns > 0.0, "{q}: {txns}");
    let groups = prom
        .query("streamspace_store_group_commit_size_count")
        .unwrap();
    assert!(groups > 0.0, "group commit size count: {groups}");
    let ops = prom
        .query("streamspace_store_group_commit_size_sum")
        .unwrap();
    assert!(
        ops >= groups,
        "at least one operation per commit: {ops} < {groups}"
    );
    // Every API call is counted by method and status.
    let creates = prom
        .query(r#"streamspace_api_requests_total{method="streamspace.v1.SessionService/CreateSession",code="Ok"}"#)
        .unwrap();
    assert_eq!(creates, N as f64, "one OK CreateSession per session");
    let timed = prom
        .query(r#"streamspace_api_request_seconds_count{method="streamspace.v1.SessionService/CreateSession"}"#)
        .unwrap();
    assert_eq!(timed, creates);
    // No controller on this control plane: no sample, so the
    // ControllerNotReconciling alert (no replica at 1) does not fire here.
    assert_eq!(prom.query("streamspace_controller_running"), None);
    cp.shutdown().await;
}
