//! The control plane's Prometheus metrics against the real tools: after a
//! scripted run (sessions created and deleted through the API, two agents
//! attached), `promtool check metrics` accepts the exposition, and a real
//! Prometheus server (Debian's, started here) scrapes it; PromQL then
//! shows the accepted→finished histogram counting every accepted command,
//! the connected agents, and the server certificate's expiry as generated.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::prom::{Prometheus, http_get, promtool, require};
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
    let mut pki = TestPki::new();
    pki.server = streamspace_control_plane::pki::new_server_valid_for(
        &pki.ca,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        VALID,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let o = CpOptions {
        metrics: true,
        ..Default::default()
    };
    let cp = start_cp(&pki, &db, &o).await;
    let metrics = cp.metrics_addr.expect("a metrics listener");
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
