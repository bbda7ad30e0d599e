//! The real grpcurl binary against the embedded default (`dev`): lists the
//! services by reflection, calls health, creates a session and sees it run.
//! Ctrl-C (SIGINT) on `dev` stops everything, the session's process included.

use std::process::{Command, Stdio};
use streamspace_tests::procs::free_addr;
use streamspace_tests::*;

fn grpcurl() -> Option<String> {
    if let Ok(p) = std::env::var("GRPCURL") {
        return Some(p);
    }
    let found = Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    found.then(|| "grpcurl".to_string())
}

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_against_dev() {
    init();
    let Some(g) = grpcurl() else {
        if in_ci() {
            panic!("grpcurl is required under CI=true (scripts/test.sh installs it)");
        }
        eprintln!(
            "SKIPPING grpcurl_against_dev: grpcurl not found; run scripts/test.sh to install it"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (api, agent) = (free_addr(), free_addr());
    let log = std::fs::File::create(tmp.path().join("dev.log")).unwrap();
    let mut dev = Command::new(binary("streamspace-control-plane"))
        .args([
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--api-addr",
            &api.to_string(),
            "--agent-addr",
            &agent.to_string(),
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    wait_for("dev to listen", 30, || async move {
        tokio::net::TcpStream::connect(api).await.ok().map(|_| ())
    })
    .await;
    let ca = data.join("pki/ca.crt");
    let ca = ca.to_str().unwrap();
    let addr = api.to_string();
    let tokens = std::fs::read_to_string(data.join("tokens.csv")).unwrap();
    let token = tokens
        .lines()
        .find(|l| l.ends_with(",admin,admin"))
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let auth = format!("authorization: Bearer {token}");

    let (ok, out) = run(&g, &["-cacert", ca, &addr, "list"]);
    assert!(ok, "grpcurl list: {out}");
    for svc in [
        "streamspace.v1.SessionService",
        "streamspace.v1.TemplateService",
        "streamspace.v1.AgentAdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(out.contains(svc), "{svc} missing from: {out}");
    }
    let (ok, out) = run(
        &g,
        &[
            "-cacert",
            ca,
            &addr,
            "describe",
            "streamspace.v1.CreateSessionRequest",
        ],
    );
    assert!(ok && out.contains("template"), "describe: {out}");
    let (ok, out) = run(&g, &["-cacert", ca, &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "health: {out}");

    let (ok, out) = run(
        &g,
        &[
            "-cacert",
            ca,
            "-H",
            &auth,
            "-d",
            r#"{"name":"demo","template":"static-files"}"#,
            &addr,
            "streamspace.v1.SessionService/CreateSession",
        ],
    );
    assert!(ok && out.contains("\"name\": \"demo\""), "create: {out}");
    let (ok, out) = run(
        &g,
        &[
            "-cacert",
            ca,
            "-d",
            r#"{"name":"demo","template":"static-files"}"#,
            &addr,
            "streamspace.v1.SessionService/CreateSession",
        ],
    );
    assert!(
        !ok && out.contains("Unauthenticated"),
        "create without a token: {out}"
    );

    let url = wait_for("demo to be RUNNING via grpcurl", 60, || {
        let (g, auth, addr) = (g.clone(), auth.clone(), addr.clone());
        async move {
            let (ok, out) = run(
                &g,
                &[
                    "-cacert",
                    ca,
                    "-H",
                    &auth,
                    "-d",
                    r#"{"name":"demo"}"#,
                    &addr,
                    "streamspace.v1.SessionService/GetSession",
                ],
            );
            if !ok || !out.contains("SESSION_PHASE_RUNNING") {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            v["url"].as_str().map(str::to_string)
        }
    })
    .await;
    assert!(http_ok(&url).await, "the session URL {url} answers");
    let pids = session_processes("demo");
    assert_eq!(pids.len(), 1, "{pids:?}");

    // Ctrl-C stops everything, sessions included.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "dev exits cleanly: {status:?}");
    assert!(
        session_processes("demo").is_empty(),
        "the session's process stopped with dev"
    );
}
