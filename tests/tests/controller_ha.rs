//! The embedded Session controller on several replicas: exactly one runs it,
//! the holder of the Lease `streamspace-controller`, and when that replica
//! dies (SIGKILL, so nothing is released) another takes the Lease over and
//! Session objects keep being reconciled. Real API server (KWOK nodes), real
//! PostgreSQL shared by the replicas, a real agent behind a Service.

use std::time::{Duration, Instant};

use streamspace_tests::k8s::{TestCluster, cluster, kubectl_ok};
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::service::Service;
use streamspace_tests::*;

const LEASE_SECONDS: u64 = 3;

fn session(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: stream.space/v1alpha1
kind: Session
metadata:
  name: {name}
  namespace: {ns}
spec:
  user: alice
  template: static-files
  state: running
"
    )
}

/// The Lease's holder, if any.
fn holder(k: &TestCluster, ns: &str) -> Option<String> {
    let out =
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args([
                "get",
                "lease",
                "streamspace-controller",
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .output()
            .unwrap();
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !h.is_empty()).then_some(h)
}

/// Waits until Session object `name` reports `phase`.
async fn wait_object_phase(k: &TestCluster, ns: &str, name: &str, phase: &str) {
    wait_for(&format!("Session {name} to be {phase}"), 90, || {
        let out = std::process::Command::new(
            std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        )
        .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
        .args([
            "get",
            "session",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .output()
        .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        async move { (got == phase).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_moves_when_its_replica_dies() {
    init();
    let Some(k) = cluster().await else { return };
    k.install_crds();
    let ns = k.namespace("ctl-ha");
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = postgres_url().await;
    let kubeconfig = format!("--kubeconfig={}", k.admin_kubeconfig.display());
    let (watch, mirror) = (
        format!("--watch-namespace={ns}"),
        format!("--mirror-namespace={ns}"),
    );
    let lease = format!("--controller-lease-seconds={LEASE_SECONDS}");
    let mut cps: Vec<CpProc> = (0..2)
        .map(|r| {
            let id = format!("--replica-id=ctl-{r}");
            let args = [
                "--kubernetes=true",
                &kubeconfig,
                &watch,
                &mirror,
                &lease,
                &id,
            ];
            CpProc::spawn_with(&pki, &db, &tmp.path().join(format!("cp-{r}")), 500, &args)
        })
        .collect();
    for cp in &cps {
        cp.ready().await;
    }
    let mut api = Api::connect(&pki, cps[0].api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let svc = Service::start(cps.iter().map(|c| c.agent_addr).collect()).await;
    let agent_args = k.agent_args(&ns, tmp.path());
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let _agent = AgentProc::spawn_with(
        &pki,
        "ctl-ha-agent",
        svc.addr,
        &tmp.path().join("agent"),
        &agent_args,
        &[],
    );

    kubectl_ok(
        &k.admin_kubeconfig,
        &["apply", "-f", "-"],
        Some(&session(&ns, "before")),
    );
    wait_object_phase(&k, &ns, "before", "Running").await;
    let first = holder(&k, &ns).expect("a replica holds the controller lease");
    let leader: usize = first.trim_start_matches("ctl-").parse().unwrap();
    // Only the holder runs the controller.
    let running = |cp: &CpProc| strip_ansi(&cp.log()).contains("holding the controller lease");
    assert!(running(&cps[leader]) && !running(&cps[1 - leader]));

    cps[leader].kill9();
    let killed = Instant::now();
    let next = wait_for("another replica to take the controller lease", 60, || {
        let h = holder(&k, &ns).filter(|h| *h != first);
        async move { h }
    })
    .await;
    let moved = killed.elapsed();
    println!(
        "the controller lease moved from {first} to {next} in {moved:?} (lease {LEASE_SECONDS} s)"
    );
    assert!(moved < Duration::from_secs(4 * LEASE_SECONDS), "{moved:?}");

    // The survivor reconciles new objects and changes to old ones.
    kubectl_ok(
        &k.admin_kubeconfig,
        &["apply", "-f", "-"],
        Some(&session(&ns, "after")),
    );
    wait_object_phase(&k, &ns, "after", "Running").await;
    k.kubectl(&[
        "patch",
        "session",
        "before",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"state":"hibernated"}}"#,
    ]);
    wait_object_phase(&k, &ns, "before", "Hibernated").await;
    println!(
        "Session objects reconciled {:?} after the leader died",
        killed.elapsed()
    );
    // Deleted while a controller still runs to release their finalizers.
    k.kubectl(&[
        "delete",
        "sessions",
        "--all",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    drop(cps);
    k.delete_namespace(&ns);
}
