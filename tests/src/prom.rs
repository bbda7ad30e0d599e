//! Prometheus in tests: the real tools (Debian's `prometheus` package brings
//! the server and `promtool`), a plain HTTP GET, and PromQL queries through
//! the server's HTTP API.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::in_ci;

/// `program` on PATH; under CI=true a missing one fails the test.
pub fn require(program: &str) -> Option<PathBuf> {
    require_with(program, "scripts/tools.sh install prometheus")
}

/// `program` on PATH, else None (a skip) or, under CI=true, a failure that
/// says how to get it (`install`).
pub fn require_with(program: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if in_ci() {
            panic!("{program} is required under CI=true: {install}");
        }
        eprintln!("SKIPPING: {program} not found; run {install}");
    }
    found
}

/// A plain HTTP/1.0 GET: the status line and headers, and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// A plain HTTP/1.0 GET; returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let (head, body) = get(addr, path);
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body
}

/// Percent-encodes a query-string value.
pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `promtool ARGS...` with `stdin` fed in; panics with its output when
/// it refuses.
pub fn promtool(promtool: &Path, args: &[&str], stdin: &str) {
    let out = crate::procs::output_with_stdin(Command::new(promtool).args(args), stdin);
    assert!(
        out.status.success(),
        "promtool {}: {}{}\n{stdin}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server scraping `targets` every second, its data in `dir`;
/// killed on drop.
pub struct Prometheus {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` (job `streamspace`), with the
    /// rule files `rules` loaded (evaluated every second).
    pub fn start(binary: &Path, dir: &Path, targets: &[SocketAddr], rules: &[PathBuf]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n  - job_name: streamspace\n    static_configs:\n      - targets: [{}]\n",
                rules.join(", "),
                targets.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus { child, addr }
    }

    /// Whether the server is up and ready to answer queries (it answers 503
    /// while it starts).
    pub fn ready(&self) -> bool {
        std::net::TcpStream::connect(self.addr).is_ok()
            && get(self.addr, "/-/ready").0.split(' ').nth(1) == Some("200")
    }

    /// The answer to an instant PromQL query (`data.result`), or None while
    /// the server is not ready yet.
    pub fn results(&self, q: &str) -> Option<Vec<serde_json::Value>> {
        if !self.ready() {
            return None;
        }
        // A refused query is a 400 whose JSON body says why.
        let (head, body) = get(self.addr, &format!("/api/v1/query?query={}", encode(q)));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {q}: {head}\n{body}\n({e})"));
        assert_eq!(v["status"], "success", "query {q}: {body}");
        v["data"]["result"].as_array().cloned()
    }

    /// The value of an instant PromQL query with one result, if any yet.
    pub fn query(&self, q: &str) -> Option<f64> {
        let r = self.results(q)?.first()?.clone();
        r["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control plane in this process with its metrics listener on, on a fresh
/// database, whose server certificate expires `valid` from now (so the
/// expiry gauge has a known value).
pub struct MetricsCp {
    pub pki: crate::TestPki,
    pub tmp: tempfile::TempDir,
    pub cp: streamspace_control_plane::server::ControlPlane,
    /// The `/metrics` listener.
    pub metrics: SocketAddr,
}

impl MetricsCp {
    pub async fn start(valid: Duration) -> Self {
        let mut pki = crate::TestPki::new();
        pki.server = streamspace_control_plane::pki::new_server_valid_for(
            &pki.ca,
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            valid,
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::database_url(tmp.path()).await;
        let o = crate::CpOptions {
            metrics: true,
            ..Default::default()
        };
        let cp = crate::start_cp(&pki, &db, &o).await;
        let metrics = cp.metrics_addr.expect("a metrics listener");
        MetricsCp {
            pki,
            tmp,
            cp,
            metrics,
        }
    }
}
