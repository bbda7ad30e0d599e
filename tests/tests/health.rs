//! The plaintext health listener (`--health-addr` / `HEALTH_ADDR`) as a
//! kubelet gRPC probe sees it: HTTP/2 without TLS, `grpc.health.v1.Health`
//! for the overall service "".

use std::net::SocketAddr;

use streamspace_tests::procs::{AgentProc, CpProc, free_addr};
use streamspace_tests::*;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A plaintext health client, or None while nothing listens.
async fn client(addr: SocketAddr) -> Option<HealthClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    Some(HealthClient::new(channel))
}

fn overall() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// What a probe's Check answers, or None if it cannot reach the listener.
async fn check(addr: SocketAddr) -> Option<ServingStatus> {
    let r = client(addr).await?.check(overall()).await.ok()?;
    Some(r.into_inner().status())
}

/// The next status a Watch stream reports (within 10 s).
async fn next_status(s: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("a status change within 10 s")
        .expect("the watch stream stays open")
        .expect("a status")
        .status()
}

/// SERVING once started; NOT_SERVING as soon as shutdown begins (before the
/// listeners close), which a watcher sees; then the listener is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_is_serving_until_shutdown_begins() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let o = CpOptions {
        health: true,
        ..Default::default()
    };
    let cp = start_cp(&pki, &db, &o).await;
    let addr = cp.health_addr.expect("a health listener");
    assert_eq!(check(addr).await, Some(ServingStatus::Serving));
    let mut watch = client(addr)
        .await
        .unwrap()
        .watch(overall())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    let shutdown = tokio::spawn(cp.shutdown());
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    drop(watch);
    shutdown.await.unwrap();
    assert_eq!(check(addr).await, None, "the listener closed");
}

/// `serve --health-addr`: the probe answers over plaintext while the TLS
/// listeners serve, and turns NOT_SERVING on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flag_opens_the_listener() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let addr = free_addr();
    let flag = format!("--health-addr={addr}");
    let mut cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &[&flag]);
    wait_for("the control plane's probe to say SERVING", 30, || async {
        (check(addr).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    let mut watch = client(addr)
        .await
        .unwrap()
        .watch(overall())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    cp.sigterm();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    drop(watch);
    assert!(cp.wait().is_some_and(|s| s.success()), "clean exit");
}

/// `HEALTH_ADDR` on the agent: SERVING while the process runs, even with no
/// control plane to attach to (a standby or a reconnecting agent is alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_is_serving_while_it_runs() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let nobody = free_addr();
    let mut agent = AgentProc::spawn_with(
        &pki,
        "probed",
        nobody,
        &tmp.path().join("agent"),
        &["--platform=process"],
        &[("HEALTH_ADDR", &addr.to_string())],
    );
    wait_for("the agent's probe to say SERVING", 30, || async {
        (check(addr).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    agent.terminate();
    assert_eq!(check(addr).await, None, "gone with the process");
}
