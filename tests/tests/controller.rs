//! The Session custom resource, reconciled by the controller embedded in the
//! control plane (the P0 of seed 000), against the real API server with a
//! real agent and KWOK. Seed 000's manifests and testing-plan steps are used
//! verbatim with kubectl. The control plane's `/metrics` shows the
//! controller running and reconciling.

use std::process::Command;

use streamspace::v1 as pb;
use streamspace_tests::k8s::{TestCluster, cluster};
use streamspace_tests::procs::{AgentProc, CpProc, free_addr};
use streamspace_tests::*;

use streamspace_tests::seeds::{
    SEED_000_REPRODUCTION as SEED_REPRODUCTION, SEED_000_TESTING_PLAN as SEED_TESTING_PLAN,
};

fn session_json(k: &TestCluster, name: &str) -> Option<serde_json::Value> {
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
        .args(["get", "session", name, "-n", "streamspace", "-o", "json"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

async fn wait_status(k: &TestCluster, name: &str, phase: &str, secs: u64) -> serde_json::Value {
    wait_for(
        &format!("session object {name} to be {phase}"),
        secs,
        || async move { session_json(k, name).filter(|v| v["status"]["phase"] == phase) },
    )
    .await
}

fn kubectl_fails(k: &TestCluster, args: &[&str], stdin: &str) -> String {
    let out = streamspace_tests::procs::output_with_stdin(
        Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args(args),
        stdin,
    );
    assert!(
        !out.status.success(),
        "kubectl {args:?} should have been refused"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_objects_are_reconciled() {
    init();
    let Some(k) = cluster().await else { return };
    k.install_crds();
    let _ = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
        .args(["create", "namespace", "streamspace"])
        .output();
    let ns = "streamspace";
    // Seed 000 names its namespace: start it clean (a failed earlier run may
    // have left objects whose finalizer no controller will release now).
    for name in k
        .kubectl(&["get", "sessions", "-n", ns, "-o", "name"])
        .lines()
    {
        let _ = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args([
                "patch",
                name,
                "-n",
                ns,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ])
            .output();
    }
    k.kubectl(&[
        "delete",
        "sessions,deployments,services",
        "--all",
        "-n",
        ns,
        "--wait=true",
    ]);
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let kubeconfig = format!("--kubeconfig={}", k.admin_kubeconfig.display());
    let metrics = free_addr();
    let metrics_flag = format!("--metrics-addr={metrics}");
    let cp_args = [
        "--kubernetes=true",
        kubeconfig.as_str(),
        "--mirror-namespace=streamspace",
        metrics_flag.as_str(),
    ];
    let mut cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &cp_args);
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let agent_args = k.agent_args(ns, tmp.path());
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let mut agent = AgentProc::spawn_with(
        &pki,
        "k8s-ctl",
        cp.agent_addr,
        &tmp.path().join("agent"),
        &agent_args,
        &[],
    );

    // Seed 000, reproduction step 1-3 and testing plan steps 2-5, verbatim.
    streamspace_tests::k8s::kubectl_ok(
        &k.admin_kubeconfig,
        &["apply", "-f", "-"],
        Some(SEED_REPRODUCTION),
    );
    streamspace_tests::k8s::kubectl_ok(
        &k.admin_kubeconfig,
        &["apply", "-f", "-"],
        Some(SEED_TESTING_PLAN),
    );
    for name in ["test-admin-firefox", "test-controller-firefox"] {
        let v = wait_status(&k, name, "Running", 60).await;
        assert_eq!(
            v["status"]["url"],
            format!("http://{name}.streamspace.svc.cluster.local:5800/")
        );
        assert!(
            v["status"]["pod"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{name}-")),
            "{v}"
        );
        assert_eq!(v["status"]["agent"], "k8s-ctl");
        assert_eq!(
            v["status"]["observedGeneration"],
            v["metadata"]["generation"]
        );
        let pods = k.kubectl(&["get", "pods", "-n", ns]);
        assert!(
            pods.lines()
                .any(|l| l.starts_with(name) && l.contains("Running")),
            "pod {name}-* Running: {pods}"
        );
        k.kubectl(&["get", "deployment", name, "-n", ns]);
    }
    assert!(
        agent.log().contains("test-controller-firefox"),
        "the agent's log shows the start"
    );
    // The controller says it runs and has reconciled the objects.
    let text = streamspace_tests::prom::http_get(metrics, "/metrics");
    let value = |series: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(value("streamspace_controller_running"), Some(1.0), "{text}");
    let ok = value(r#"streamspace_controller_reconciles_total{outcome="ok"}"#).unwrap_or(0.0);
    assert!(ok > 0.0, "reconciles counted: {text}");
    let timed = value("streamspace_controller_reconcile_seconds_count").unwrap_or(0.0);
    assert!(timed >= ok, "every reconcile timed: {text}");
    let events = k.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.kind=Session",
    ]);
    assert!(
        events.contains("Running"),
        "transitions are recorded as Events: {events}"
    );

    // Printer columns, and a session created through the API shows up too.
    api.create("from-grpc", "firefox-browser").await.unwrap();
    wait_status(&k, "from-grpc", "Running", 60).await;
    let table = k.kubectl(&["get", "sessions", "-n", ns]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "USER", "TEMPLATE", "STATE", "PHASE", "URL", "AGE"] {
        assert!(header.contains(col), "column {col} in: {header}");
    }
    assert!(
        table.contains("from-grpc") && table.contains("test-admin-firefox"),
        "{table}"
    );
    let short = k.kubectl(&["get", "sess", "-n", ns]);
    assert!(short.contains("from-grpc"));
    // Hibernating through the API updates the object's spec (one view, no loops).
    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "from-grpc".into(),
        })
        .await
        .unwrap();
    wait_status(&k, "from-grpc", "Hibernated", 60).await;
    wait_for("the API's hibernate to reach spec.state", 30, || async {
        session_json(&k, "from-grpc").filter(|v| v["spec"]["state"] == "hibernated")
    })
    .await;
    // ...and is not reverted by the controller.
    let s = api.get("from-grpc").await.unwrap();
    assert_eq!(s.desired_state, pb::DesiredState::Hibernated as i32);
    assert_eq!(
        wait_status(&k, "from-grpc", "Hibernated", 5).await["spec"]["state"],
        "hibernated"
    );

    // kubectl patch spec.state: hibernated and back.
    k.kubectl(&[
        "patch",
        "session",
        "test-admin-firefox",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"state":"hibernated"}}"#,
    ]);
    wait_status(&k, "test-admin-firefox", "Hibernated", 60).await;
    let replicas = k.kubectl(&[
        "get",
        "deployment",
        "test-admin-firefox",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas.trim(), "0");
    assert_eq!(
        api.get("test-admin-firefox").await.unwrap().phase,
        pb::SessionPhase::Hibernated as i32
    );
    k.kubectl(&[
        "patch",
        "session",
        "test-admin-firefox",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"state":"running"}}"#,
    ]);
    wait_status(&k, "test-admin-firefox", "Running", 60).await;

    // Seed 000's manifest with its idleTimeout shortened: nobody touches it
    // (the kubernetes runtime reports no activity), so the control plane
    // hibernates it, says why in a condition and an Event, and writes the
    // new state to the object's spec.
    let idle = SEED_REPRODUCTION
        .replace("test-admin-firefox", "idle-firefox")
        .replace("idleTimeout: 30m", "idleTimeout: 4s");
    streamspace_tests::k8s::kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(&idle));
    wait_status(&k, "idle-firefox", "Running", 60).await;
    let v = wait_status(&k, "idle-firefox", "Hibernated", 60).await;
    let idle_condition = v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Idle")
        .cloned()
        .unwrap_or_else(|| panic!("an Idle condition: {v}"));
    assert_eq!(idle_condition["status"], "True", "{v}");
    assert_eq!(idle_condition["reason"], "IdleTimeout", "{v}");
    wait_for("the policy's hibernate to reach spec.state", 30, || async {
        session_json(&k, "idle-firefox").filter(|v| v["spec"]["state"] == "hibernated")
    })
    .await;
    let table = k.kubectl(&["get", "sessions", "-n", ns]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("idle-firefox") && l.contains("Hibernated")),
        "{table}"
    );
    let events = k.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.name=idle-firefox",
    ]);
    assert!(
        events.contains("IdleTimeout"),
        "an IdleTimeout Event: {events}"
    );

    // Invalid objects: refused by the schema, or a clear condition.
    let bad_quantity = SEED_TESTING_PLAN
        .replace("test-controller-firefox", "bad-quantity")
        .replace(
            "memory: 1Gi\n      cpu: 500m\n  persistentHome",
            "memory: lots\n      cpu: 500m\n  persistentHome",
        );
    let err = kubectl_fails(&k, &["apply", "-f", "-"], &bad_quantity);
    assert!(err.contains("spec.resources.limits.memory"), "{err}");
    let empty_user = SEED_TESTING_PLAN
        .replace("test-controller-firefox", "empty-user")
        .replace("user: admin", "user: \"\"");
    let err = kubectl_fails(&k, &["apply", "-f", "-"], &empty_user);
    assert!(err.contains("spec.user"), "{err}");
    // A user name is a directory on the agent: the schema itself refuses "..".
    for user in ["..", ".", "../etc"] {
        let dots = SEED_TESTING_PLAN
            .replace("test-controller-firefox", "dots-user")
            .replace("user: admin", &format!("user: \"{user}\""));
        let err = kubectl_fails(&k, &["apply", "-f", "-"], &dots);
        assert!(err.contains("spec.user"), "{user}: {err}");
    }
    let unknown = SEED_TESTING_PLAN
        .replace("test-controller-firefox", "unknown-template")
        .replace("firefox-browser", "no-such-template");
    streamspace_tests::k8s::kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(&unknown));
    let v = wait_status(&k, "unknown-template", "Failed", 30).await;
    let msg = v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"].as_str().unwrap_or_default())
        .collect::<String>();
    assert!(
        msg.contains("template: no template named \"no-such-template\""),
        "{v}"
    );
    let fine = SEED_TESTING_PLAN.replace("test-controller-firefox", "still-reconciling");
    streamspace_tests::k8s::kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(&fine));
    wait_status(&k, "still-reconciling", "Running", 60).await;

    // Deleting while the agent is down: the object waits and says why.
    agent.kill9();
    k.kubectl(&[
        "delete",
        "session",
        "still-reconciling",
        "-n",
        ns,
        "--wait=false",
    ]);
    let v = wait_for("the Terminating condition", 30, || async {
        session_json(&k, "still-reconciling").filter(|v| {
            v["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "Terminating"
                        && c["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("not connected")
                })
            })
        })
    })
    .await;
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    agent.start();
    wait_for("the object to go once the agent is back", 60, || async {
        session_json(&k, "still-reconciling")
            .is_none()
            .then_some(())
    })
    .await;

    // Control plane killed mid-reconcile and restarted: no duplicates, status converges.
    for i in 0..3 {
        let m = SEED_TESTING_PLAN.replace("test-controller-firefox", &format!("mid-{i}"));
        streamspace_tests::k8s::kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(&m));
    }
    cp.kill9();
    cp.start();
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    for i in 0..3 {
        wait_status(&k, &format!("mid-{i}"), "Running", 90).await;
    }
    let all = api
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "no duplicate sessions");
    let deployments = k.kubectl(&["get", "deployments", "-n", ns, "-o", "name"]);
    for i in 0..3 {
        assert_eq!(
            deployments
                .lines()
                .filter(|l| *l == format!("deployment.apps/mid-{i}"))
                .count(),
            1
        );
    }

    // Testing plan step 6: kubectl delete -> workload gone, then the object.
    k.kubectl(&[
        "delete",
        "session",
        "test-controller-firefox",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    assert!(session_json(&k, "test-controller-firefox").is_none());
    let left = k.kubectl(&["get", "deployments,services", "-n", ns, "-o", "name"]);
    assert!(!left.contains("test-controller-firefox"), "{left}");
    for s in [
        "test-admin-firefox",
        "idle-firefox",
        "from-grpc",
        "unknown-template",
        "mid-0",
        "mid-1",
        "mid-2",
    ] {
        let _ = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args(["delete", "session", s, "-n", ns, "--wait=false"])
            .output();
    }
}
