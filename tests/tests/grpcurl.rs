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

/// Each listener lists, describes and serves only its own services: the API
/// port knows nothing of AgentService, the agent port nothing of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_offers_only_its_own_services() {
    use streamspace::v1 as pb;
    init();
    let Some(g) = grpcurl() else {
        if in_ci() {
            panic!("grpcurl is required under CI=true (scripts/test.sh installs it)");
        }
        eprintln!("SKIPPING each_listener_offers_only_its_own_services: grpcurl not found");
        return;
    };
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let cp = start_cp(&pki, &database_url(tmp.path()).await, &CpOptions::default()).await;
    let ca = pki.ca_path();
    let ca = ca.to_str().unwrap();
    let (cert, key) = pki.agent("grpcurl");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let api = cp.api_addr.to_string();
    let agent = cp.agent_addr.to_string();
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    let api_only = [
        "streamspace.v1.SessionService",
        "streamspace.v1.TemplateService",
        "streamspace.v1.AgentAdminService",
    ];
    let agent_only = ["streamspace.v1.AgentService"];

    let (ok, out) = run(&g, &["-cacert", ca, &api, "list"]);
    assert!(ok, "grpcurl list on the API port: {out}");
    let listed: Vec<&str> = out.lines().map(str::trim).collect();
    for svc in common.iter().chain(&api_only) {
        assert!(listed.contains(svc), "{svc} missing on the API port: {out}");
    }
    for svc in agent_only {
        assert!(
            !listed.contains(&svc),
            "{svc} listed on the API port: {out}"
        );
    }
    let (ok, out) = run(
        &g,
        &[
            "-cacert",
            ca,
            &api,
            "describe",
            "streamspace.v1.AgentService",
        ],
    );
    assert!(!ok, "AgentService described on the API port: {out}");

    let tls = ["-cacert", ca, "-cert", cert, "-key", key];
    let (ok, out) = run(&g, &[&tls[..], &[agent.as_str(), "list"]].concat());
    assert!(ok, "grpcurl list on the agent port: {out}");
    let listed: Vec<&str> = out.lines().map(str::trim).collect();
    for svc in common.iter().chain(&agent_only) {
        assert!(
            listed.contains(svc),
            "{svc} missing on the agent port: {out}"
        );
    }
    for svc in api_only {
        assert!(
            !listed.contains(&svc),
            "{svc} listed on the agent port: {out}"
        );
    }
    let (ok, out) = run(
        &g,
        &[
            &tls[..],
            &[agent.as_str(), "describe", "streamspace.v1.SessionService"],
        ]
        .concat(),
    );
    assert!(!ok, "SessionService described on the agent port: {out}");

    // Calling AgentService on the API port: UNIMPLEMENTED.
    let mut c = pb::agent_service_client::AgentServiceClient::new(channel(&pki, cp.api_addr).await);
    let e = c
        .attach(tokio_stream::iter(vec![raw::hello("grpcurl")]))
        .await
        .expect_err("AgentService on the API port");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    cp.shutdown().await;
}
