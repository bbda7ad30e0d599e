//! The control plane's Prometheus metrics against the real tools: after a
//! scripted run (sessions created and deleted through the API, two agents
//! attached), `promtool check metrics` accepts the exposition, and a real
//! Prometheus server (Debian's, started here) scrapes it; PromQL then
//! shows the accepted→finished histogram counting every accepted command,
//! the connected agents, and the server certificate's expiry as generated.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::*;

/// `program` on PATH; under CI=true a missing one fails the test.
fn require(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if in_ci() {
            panic!("{program} is required under CI=true: scripts/tools.sh install prometheus");
        }
        eprintln!("SKIPPING: {program} not found; run scripts/tools.sh install prometheus");
    }
    found
}

/// A plain HTTP/1.0 GET; returns the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query with one result, if any yet.
fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let body = http_get(prom, &format!("/api/v1/query?query={}", encode(q)));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = v["data"]["result"].as_array()?.first()?.clone();
    r["value"][1].as_str()?.parse().ok()
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_happened() {
    init();
    let (Some(promtool), Some(prometheus)) = (require("promtool"), require("prometheus")) else {
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
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: streamspace\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let _server = Prometheus(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let accepted = wait_for("Prometheus to scrape the control plane", 60, || async {
        if std::net::TcpStream::connect(prom).is_err() {
            return None;
        }
        query(prom, "streamspace_commands_accepted_total")
    })
    .await;
    assert_eq!(accepted, (2 * N) as f64, "a start and a stop per session");
    let latency = query(prom, "sum(streamspace_command_latency_seconds_count)").unwrap();
    assert_eq!(
        latency, accepted,
        "every accepted command finished and was timed"
    );
    let ok = query(
        prom,
        r#"sum(streamspace_commands_finished_total{outcome="succeeded"})"#,
    )
    .unwrap();
    assert_eq!(ok, accepted);
    assert_eq!(query(prom, "streamspace_agents_connected"), Some(2.0));
    assert_eq!(
        query(prom, r#"streamspace_outbox_commands{state="pending"}"#),
        Some(0.0)
    );
    // The server certificate's 10 days, less the moments since it was made.
    let expected = VALID.as_secs_f64();
    let gauge = query(
        prom,
        r#"streamspace_certificate_expiry_seconds{certificate="server"}"#,
    )
    .unwrap();
    assert!(
        gauge <= expected && gauge > expected - 300.0,
        "server certificate expiry: gauge {gauge} s, certificate says {expected} s"
    );
    let agent = query(
        prom,
        r#"streamspace_certificate_expiry_seconds{certificate="agent",name="prom-a"}"#,
    )
    .unwrap();
    assert!(agent > 0.0, "{agent}");
    cp.shutdown().await;
}
