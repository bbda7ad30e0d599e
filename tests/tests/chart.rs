//! The Helm chart on the real test API server: `helm install`, seed 000's
//! testing plan and seed 003's HA steps verbatim, the ServiceAccounts'
//! permissions against committed lists, `helm upgrade`, `helm uninstall`.
//!
//! KWOK pods run no containers, so each pod the chart makes is run as a local
//! process from its own spec (`streamspace_tests::pods`): env and args from
//! the installed Deployment's pod, certificates from the installed Secrets,
//! Kubernetes credentials from a token of the chart's own ServiceAccount.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use streamspace_tests::helm::Helm;
use streamspace_tests::init;
use streamspace_tests::k8s::{TestCluster, cluster, kubectl_ok};
use streamspace_tests::pods::{PodOptions, PodProcess, finish_pod};
use streamspace_tests::seeds::{SEED_000_REPRODUCTION, SEED_000_TESTING_PLAN as SEED_000_SESSION};

const NS: &str = "streamspace";
const RELEASE: &str = "streamspace";
const AGENT_ID: &str = "k8s-prod-cluster";
const AGENT_ENDPOINT: &str = "streamspace-agent-endpoint.streamspace.svc";

/// KWOK leaves the hook Job's pod to the test, which runs it and reports
/// its exit (without this, KWOK would complete the pod without running it).
const TEST_VALUES: &str = "tls:\n  job:\n    podAnnotations:\n      kwok.x-k8s.io/status: custom\n";

fn repo() -> PathBuf {
    streamspace_tests::repo_path("")
}

fn tool(var: &str, name: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| name.into())
}

fn run(mut c: Command) -> Output {
    c.output()
        .expect("the tool runs (scripts/tools.sh installs it)")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(k: &TestCluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_ok(&k.admin_kubeconfig, &a, None)).unwrap()
}

/// Names of the running (not terminating) pods of a chart component.
fn pods(k: &TestCluster, component: &str) -> Vec<String> {
    let v = json(
        k,
        &[
            "pods",
            "-n",
            NS,
            "-l",
            &format!("app.kubernetes.io/component={component}"),
        ],
    );
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn wait_pods(k: &TestCluster, component: &str, n: usize, except: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = pods(k, component);
        let fresh: Vec<String> = all
            .iter()
            .filter(|p| !except.contains(p))
            .cloned()
            .collect();
        if fresh.len() == n && all.len() == n {
            return fresh;
        }
        assert!(
            Instant::now() < deadline,
            "want {n} new {component} pods, have {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `helm install|upgrade` in the background while playing the
/// kubelet for the certificate hook Job's pod; returns helm's output.
fn helm_with_hook(k: &TestCluster, helm: &Helm, args: &[&str], root: &std::path::Path) -> Output {
    let mut c = helm.command(args);
    let child: Child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let hook = loop {
        if let Some(p) = pods(k, "certs").into_iter().next() {
            break p;
        }
        assert!(Instant::now() < deadline, "no hook Job pod within 120s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut p = PodProcess::start(k, NS, &hook, root, &PodOptions::default());
    let st = p.wait(60);
    assert!(st.success(), "certificate hook failed:\n{}", p.log());
    finish_pod(k, NS, &hook, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "helm {args:?}: {}", text(&out));
    out
}

/// `kubectl apply` (server-side dry run if asked); fails on any warning.
fn apply_quietly(k: &TestCluster, manifest: &str, dry_run: bool) -> String {
    let mut c = Command::new(tool("KUBECTL", "kubectl"));
    c.arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
        .args(["apply", "-f", "-"]);
    if dry_run {
        c.arg("--dry-run=server");
    }
    let out = streamspace_tests::procs::output_with_stdin(&mut c, manifest);
    assert!(out.status.success(), "kubectl apply: {}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Warning"),
        "kubectl apply printed a warning: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the namespace empty: no release, no objects from an earlier run.
fn clean(k: &TestCluster, helm: &Helm) {
    let _ = helm.uninstall(RELEASE, NS);
    let exists = Command::new(tool("KUBECTL", "kubectl"))
        .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
        .args(["get", "namespace", NS])
        .output()
        .unwrap();
    if !exists.status.success() {
        return;
    }
    let sessions = Command::new(tool("KUBECTL", "kubectl"))
        .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
        .args(["get", "sessions", "-n", NS, "-o", "json"])
        .output()
        .unwrap();
    if let Ok(v) = serde_json::from_slice::<Value>(&sessions.stdout) {
        for s in v["items"].as_array().into_iter().flatten() {
            let name = s["metadata"]["name"].as_str().unwrap();
            let _ = k.kubectl(&[
                "patch",
                "session",
                name,
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
    k.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"]);
}

/// The test cluster has no volume provisioner: a static PersistentVolume
/// (no class) for the control plane's SQLite claim to bind to, fresh per run.
fn volume_for_the_database(k: &TestCluster, dir: &std::path::Path) {
    let _ = k.kubectl(&[
        "delete",
        "pv",
        "streamspace-test-data",
        "--ignore-not-found",
    ]);
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: streamspace-test-data\nspec:\n  capacity:\n    storage: 1Gi\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Delete\n  storageClassName: \"\"\n  hostPath:\n    path: {}\n",
        dir.display()
    );
    kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(&pv));
}

/// grpcurl against the API, as NOTES.txt tells an operator.
fn grpcurl(api: std::net::SocketAddr, ca: &std::path::Path, token: &str, call: &[&str]) -> Value {
    let (ok, out) = try_grpcurl(api, ca, token, call);
    assert!(ok, "grpcurl {call:?}: {out}");
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn try_grpcurl(
    api: std::net::SocketAddr,
    ca: &std::path::Path,
    token: &str,
    call: &[&str],
) -> (bool, String) {
    let out = Command::new(tool("GRPCURL", "grpcurl"))
        .args(["-cacert", ca.to_str().unwrap(), "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg("-servername=localhost")
        .args(&call[..call.len() - 1])
        .arg(api.to_string())
        .arg(call[call.len() - 1])
        .output()
        .unwrap();
    if out.status.success() {
        (true, String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        (false, text(&out))
    }
}

fn secret_value(k: &TestCluster, name: &str, key: &str) -> String {
    let v = json(k, &["secret", name, "-n", NS]);
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(v["data"][key].as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

/// `kubectl auth can-i --list` for a ServiceAccount, one normalized line per
/// rule (columns joined by single spaces), sorted.
fn can_i(k: &TestCluster, sa: &str) -> Vec<String> {
    let out = k.kubectl(&[
        "auth",
        "can-i",
        "--list",
        "-n",
        NS,
        &format!("--as=system:serviceaccount:{NS}:{sa}"),
    ]);
    let mut lines: Vec<String> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines
}

fn committed(name: &str) -> Vec<String> {
    let path = repo().join("tests/chart").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_runs_the_seed_flows_and_uninstalls() {
    init();
    let Some(k) = cluster().await else { return };
    let Some(helm) = Helm::for_cluster(&k) else {
        return;
    };
    clean(&k, &helm);
    let tmp = tempfile::tempdir().unwrap();
    let values = tmp.path().join("test-values.yaml");
    // On the PostgreSQL pass the release uses it (URL from a Secret, as an
    // operator would); otherwise the embedded SQLite on a bound PVC.
    let db = streamspace_tests::database_url(tmp.path()).await;
    let postgres = db.starts_with("postgres");
    let mut test_values = TEST_VALUES.to_string();
    if postgres {
        k.kubectl(&["create", "namespace", NS]);
        k.kubectl(&[
            "create",
            "secret",
            "generic",
            "streamspace-db",
            "-n",
            NS,
            &format!("--from-literal=url={db}"),
        ]);
        test_values.push_str(
            "controlPlane:\n  database:\n    type: postgres\n    postgres:\n      existingSecret: streamspace-db\n",
        );
    } else {
        volume_for_the_database(&k, tmp.path());
    }
    std::fs::write(&values, test_values).unwrap();
    let values = values.to_str().unwrap();

    // The CRDs apply without a warning.
    let crds = run({
        let mut c = Command::new(tool("KUBECTL", "kubectl"));
        c.arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args(["apply", "-f", "chart/crds"])
            .current_dir(repo());
        c
    });
    assert!(crds.status.success(), "{}", text(&crds));
    assert!(
        !String::from_utf8_lossy(&crds.stderr).contains("Warning"),
        "{}",
        text(&crds)
    );

    // helm install; every rendered object is created by the API server.
    helm_with_hook(
        &k,
        &helm,
        &[
            "install",
            RELEASE,
            "./chart",
            "-n",
            NS,
            "--create-namespace",
            "-f",
            values,
            "--timeout=5m",
        ],
        tmp.path(),
    );
    let manifest = helm.run(&["get", "manifest", RELEASE, "-n", NS]);
    let listed = kubectl_ok(
        &k.admin_kubeconfig,
        &["get", "-f", "-", "-o", "name"],
        Some(&String::from_utf8_lossy(&manifest.stdout)),
    );
    let rendered = String::from_utf8_lossy(&manifest.stdout)
        .split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .count();
    assert_eq!(
        listed.lines().count(),
        rendered,
        "installed objects: {listed}"
    );
    assert!(rendered >= 13, "{listed}");

    // The control plane and the agent, as their pods would run.
    let cp_pod = wait_pods(&k, "control-plane", 1, &[]).remove(0);
    let cp = PodProcess::start(&k, NS, &cp_pod, tmp.path(), &PodOptions::default());
    let agent_opts = PodOptions {
        rewrites: vec![(format!("{AGENT_ENDPOINT}:7443"), cp.port(7443).to_string())],
        extra_env: vec![("AGENT_TLS_SERVER_NAME".into(), AGENT_ENDPOINT.into())],
    };
    let agent_pod = wait_pods(&k, "k8s-agent", 1, &[]).remove(0);
    let mut agent = PodProcess::start(&k, NS, &agent_pod, tmp.path(), &agent_opts);

    let ca = tmp.path().join("streamspace-ca.crt");
    std::fs::write(&ca, secret_value(&k, "streamspace-server-tls", "ca.crt")).unwrap();
    let token = secret_value(&k, "streamspace-tokens", "admin-token");
    let api = cp.port(8443);
    let get_agent = || {
        let (ok, out) = try_grpcurl(
            api,
            &ca,
            &token,
            &[
                "-d",
                &format!(r#"{{"id":"{AGENT_ID}"}}"#),
                "streamspace.v1.AgentAdminService/GetAgent",
            ],
        );
        if !ok {
            eprintln!("GetAgent: {out}");
        }
        serde_json::from_str::<Value>(&out)
            .ok()
            .filter(|v| ok && v["connected"] == true)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_agent().is_none() {
        assert!(
            Instant::now() < deadline,
            "agent not attached within 60s\ncontrol plane:\n{}\nagent:\n{}",
            cp.log(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Seed 000's testing plan, verbatim.
    let values_all = text(&helm.run(&["get", "values", RELEASE, "-n", NS, "--all"]));
    let controller: Vec<&str> = values_all
        .lines()
        .skip_while(|l| !l.starts_with("controller:"))
        .take(6)
        .collect();
    assert!(
        controller.iter().any(|l| l.trim() == "enabled: true"),
        "helm get values | grep -A 5 controller: {controller:?}"
    );
    let applied = apply_quietly(&k, SEED_000_SESSION, false);
    assert!(applied.contains("created"), "{applied}");
    // The reproduction's manifest (with idleTimeout) is accepted without a warning too.
    apply_quietly(&k, SEED_000_REPRODUCTION, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let session = loop {
        let v = json(&k, &["session", "test-controller-firefox", "-n", NS]);
        if v["status"]["phase"] == "Running" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "session not Running within 60s: {}\ncontrol plane:\n{}\nagent:\n{}",
            v["status"],
            cp.log(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        session["status"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http")),
        "{}",
        session["status"]
    );
    let pod = session["status"]["pod"].as_str().unwrap_or_default();
    assert!(
        pod.starts_with("test-controller-firefox-"),
        "{}",
        session["status"]
    );
    let listing = k.kubectl(&["get", "pods", "-n", NS]);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("test-controller-firefox")),
        "{listing}"
    );
    let listed = grpcurl(
        api,
        &ca,
        &token,
        &["streamspace.v1.SessionService/ListSessions"],
    );
    assert!(
        listed.to_string().contains("test-controller-firefox"),
        "{listed}"
    );
    k.kubectl(&[
        "delete",
        "session",
        "test-controller-firefox",
        "-n",
        NS,
        "--timeout=60s",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while k
        .kubectl(&["get", "pods", "-n", NS])
        .contains("test-controller-firefox")
    {
        assert!(Instant::now() < deadline, "session pod not removed in 60s");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Both ServiceAccounts may do exactly what the committed lists say.
    for (sa, file) in [
        ("streamspace-control-plane", "can-i-control-plane.txt"),
        ("streamspace-k8s-agent", "can-i-k8s-agent.txt"),
    ] {
        let got = can_i(&k, sa);
        assert!(
            got.iter().all(|l| !l.contains('*') || l.starts_with("[/")),
            "{sa} holds a wildcard: {got:#?}"
        );
        assert_eq!(
            got,
            committed(file),
            "kubectl auth can-i --list for {sa} differs from tests/chart/{file}"
        );
    }

    // Seed 003, verbatim: three replicas with HA, one holder, one stream.
    let server_before = secret_value(&k, "streamspace-server-tls", "tls.crt");
    helm_with_hook(
        &k,
        &helm,
        &[
            "upgrade",
            RELEASE,
            "./chart",
            "-n",
            NS,
            "-f",
            values,
            "--set",
            "k8sAgent.replicaCount=3",
            "--set",
            "k8sAgent.ha.enabled=true",
        ],
        tmp.path(),
    );
    assert_eq!(
        secret_value(&k, "streamspace-server-tls", "tls.crt"),
        server_before,
        "the hook keeps existing certificates"
    );
    agent.terminate();
    let attached_before = cp.log().matches("agent attached").count();
    let replicas = wait_pods(&k, "k8s-agent", 3, std::slice::from_ref(&agent_pod));
    let agents: Vec<PodProcess> = replicas
        .iter()
        .map(|p| PodProcess::start(&k, NS, p, tmp.path(), &agent_opts))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(a) = get_agent()
            && cp.log().matches("agent attached").count() > attached_before
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no replica attached in 60s\ncontrol plane:\n{}\nreplicas:\n{}",
            cp.log(),
            agents
                .iter()
                .map(|a| a.log())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The agent's Lease (the controller's, streamspace-controller, is
    // another one in the same namespace).
    let holder = || {
        let v = json(&k, &["lease", "-n", NS]);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| {
                l["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("streamspace-agent-"))
            })
            .filter_map(|l| l["spec"]["holderIdentity"].as_str())
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let holders = holder();
    assert_eq!(holders.len(), 1, "kubectl get lease: {holders:?}");
    assert!(
        replicas.contains(&holders[0]),
        "{holders:?} vs {replicas:?}"
    );
    let attaches = cp.log().matches("agent attached").count();
    let window = std::env::var("STREAMSPACE_TEST_HA_WINDOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    let end = Instant::now() + Duration::from_secs(window);
    while Instant::now() < end {
        let a = get_agent().expect("the agent stays attached");
        assert_eq!(a["fencingToken"], first["fencingToken"], "one stream");
        assert_eq!(holder(), holders, "one Lease holder");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        cp.log().matches("agent attached").count(),
        attaches,
        "zero re-attaches over {window}s"
    );
    let connects: usize = agents
        .iter()
        .map(|a| a.log().matches("connected to the control plane").count())
        .sum();
    assert_eq!(connects, 1, "exactly one replica attached, once");

    // Without ha.enabled, three replicas are refused, naming the key.
    let refused = helm.run(&[
        "upgrade",
        RELEASE,
        "./chart",
        "-n",
        NS,
        "--set",
        "k8sAgent.replicaCount=3",
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("k8sAgent.ha.enabled"),
        "{}",
        text(&refused)
    );

    // helm uninstall leaves the CRDs, the database PVC and the PKI Secrets.
    let out = helm.run(&["uninstall", RELEASE, "-n", NS, "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    // The kubelet stops the containers of the deleted pods.
    for mut a in agents {
        a.terminate();
    }
    let mut cp = cp;
    cp.terminate();
    let kinds = k.kubectl(&[
        "api-resources",
        "--verbs=list",
        "--namespaced",
        "-o",
        "name",
    ]);
    let leftovers = || {
        let mut left = Vec::new();
        for kind in kinds.lines().filter(|k| !k.starts_with("events")) {
            for o in k.kubectl(&["get", kind, "-n", NS, "-o", "name"]).lines() {
                left.push(o.to_string());
            }
        }
        left.sort();
        left
    };
    let mut expected = vec![
        "configmap/kube-root-ca.crt",
        if postgres {
            "secret/streamspace-db"
        } else {
            "persistentvolumeclaim/streamspace-data"
        },
        "secret/streamspace-agent-tls",
        "secret/streamspace-ca",
        "secret/streamspace-server-tls",
        "serviceaccount/default",
    ];
    expected.sort();
    // The agent's Lease is owned by the pod that held it last: the garbage
    // collector removes it once that pod is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftovers();
        if left == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after helm uninstall: {left:?}, expected only {expected:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let cluster_scoped = k.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    assert!(
        !cluster_scoped.contains("streamspace"),
        "cluster-scoped objects left: {cluster_scoped}"
    );
    assert!(
        k.kubectl(&["get", "crd", "-o", "name"])
            .contains("sessions.stream.space"),
        "the CRDs stay"
    );
}

/// The agent's RBAC has one source of truth in two files: the chart's Role
/// and agent/k8s/rbac.yaml (for installs without Helm) grant the same rules.
#[test]
fn chart_agent_role_matches_the_agent_manifest() {
    let out = run(helm_cmd_plain(&["template", RELEASE, "./chart", "-n", NS]));
    assert!(out.status.success(), "helm template: {}", text(&out));
    let role_rules = |yaml: &str, name: &str| -> serde_yaml::Value {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Role {name}"))["rules"]
            .clone()
    };
    let rendered = String::from_utf8_lossy(&out.stdout);
    let manifest = std::fs::read_to_string(repo().join("agent/k8s/rbac.yaml")).unwrap();
    assert_eq!(
        role_rules(&rendered, "streamspace-k8s-agent"),
        role_rules(&manifest, "streamspace-agent"),
        "chart/templates (streamspace.agent.rules) and agent/k8s/rbac.yaml disagree"
    );
}

fn helm_cmd_plain(args: &[&str]) -> Command {
    let mut c = Command::new(tool("HELM", "helm"));
    c.args(args).current_dir(repo());
    c
}
