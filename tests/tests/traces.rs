//! One trace per command, across the control plane and the agent, read back
//! from a real Jaeger: a CreateSession made with the caller's `traceparent`
//! continues the caller's trace through the API span, the store write, the
//! dispatch, the agent's apply and its runtime steps, to the result; a
//! Session applied with kubectl starts its trace in the controller.

use streamspace::v1 as pb;
use streamspace_tests::jaeger::{Jaeger, Trace};
use streamspace_tests::k8s::{cluster, kubectl_ok};
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::*;

/// Waits until Jaeger holds a trace that `complete` accepts (spans arrive
/// in batches from two processes).
async fn wait_trace(
    j: &Jaeger,
    what: &str,
    id: impl Fn() -> Option<String>,
    complete: impl Fn(&Trace) -> bool,
) -> Trace {
    wait_for(what, 60, || {
        let t = id().and_then(|id| j.trace(&id)).filter(|t| complete(t));
        async move { t }
    })
    .await
}

fn has_all(t: &Trace, names: &[&str]) -> bool {
    names.iter().all(|n| !t.named(n).is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_one_trace_from_the_callers_span_to_the_result() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let Some(jaeger) = Jaeger::start(&tmp.path().join("jaeger")).await else {
        return;
    };
    let pki = TestPki::new();
    let db = database_url(tmp.path()).await;
    let otlp = format!("--otlp-endpoint=http://{}", jaeger.otlp);
    let cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &[otlp.as_str()]);
    cp.ready().await;
    let _agent = AgentProc::spawn_with(
        &pki,
        "traced",
        cp.agent_addr,
        &tmp.path().join("agent"),
        &["--platform=process", otlp.as_str()],
        &[],
    );
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    api.wait_agents(1, 30).await;

    // The caller's own span: a trace id and span id of our choosing.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let mut req = tonic::Request::new(pb::CreateSessionRequest {
        name: "traced-1".into(),
        template: "static-files".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    api.sessions.create_session(req).await.unwrap();
    api.wait_phase("traced-1", pb::SessionPhase::Running, 30)
        .await;

    let expected = [
        "streamspace.v1.SessionService/CreateSession",
        "store.insert_session",
        "command.dispatch",
        "command.apply",
        "process.spawn",
        "process.port_probe",
        "command.result",
    ];
    let t = wait_trace(
        &jaeger,
        "the CreateSession trace in Jaeger",
        || Some(trace_id.clone()),
        |t| has_all(t, &expected),
    )
    .await;
    eprintln!("the trace of CreateSession traced-1:\n{}", t.tree());

    let api_span = t.named("streamspace.v1.SessionService/CreateSession")[0];
    assert_eq!(
        api_span.parent.as_deref(),
        Some(caller_span.as_str()),
        "the API span continues the caller's"
    );
    assert_eq!(api_span.service, "streamspace-control-plane");
    assert_eq!(
        api_span
            .tags
            .get("rpc.grpc.status_code")
            .map(String::as_str),
        Some("0")
    );
    let dispatch = t.one("command.dispatch", ("session_id", "traced-1"));
    let apply = t.one("command.apply", ("session_id", "traced-1"));
    let result = t.named("command.result")[0];
    for s in [t.named("store.insert_session")[0], dispatch, result] {
        assert!(
            t.descends(s, api_span),
            "{} under the API span:\n{}",
            s.name,
            t.tree()
        );
        assert_eq!(s.service, "streamspace-control-plane");
    }
    // Across the process boundary: the agent's apply is the dispatch's child.
    assert_eq!(apply.service, "streamspace-agent");
    assert_eq!(
        apply.parent.as_deref(),
        Some(dispatch.id.as_str()),
        "{}",
        t.tree()
    );
    for step in ["process.spawn", "process.port_probe"] {
        let s = t.named(step)[0];
        assert_eq!(s.service, "streamspace-agent");
        assert!(
            t.descends(s, apply),
            "{step} under the apply:\n{}",
            t.tree()
        );
    }
    assert_eq!(
        result.tags.get("outcome").map(String::as_str),
        Some("succeeded")
    );
}

const SESSION: &str = r#"
apiVersion: stream.space/v1alpha1
kind: Session
metadata:
  name: traced-obj
  namespace: traces
spec:
  user: alice
  template: static-files
  state: running
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_applied_with_kubectl_is_traced_from_the_controller() {
    init();
    let Some(k) = cluster().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(jaeger) = Jaeger::start(&tmp.path().join("jaeger")).await else {
        return;
    };
    let ns = "traces";
    k.install_crds();
    // Start clean: a failed earlier run may have left objects behind, with
    // a finalizer no controller will release now.
    let kubectl = || {
        let mut c = std::process::Command::new(
            std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        );
        c.arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()));
        c
    };
    let unfinalize = r#"{"metadata":{"finalizers":null}}"#;
    let _ = kubectl()
        .args([
            "patch",
            "session",
            "traced-obj",
            "-n",
            ns,
            "--type=merge",
            "-p",
            unfinalize,
        ])
        .output();
    let _ = kubectl()
        .args(["delete", "namespace", ns, "--wait=true", "--timeout=60s"])
        .output();
    k.kubectl(&["create", "namespace", ns]);

    let pki = TestPki::new();
    let db = database_url(tmp.path()).await;
    let otlp = format!("--otlp-endpoint=http://{}", jaeger.otlp);
    let kubeconfig = format!("--kubeconfig={}", k.admin_kubeconfig.display());
    let cp_args = [
        "--kubernetes=true",
        kubeconfig.as_str(),
        "--watch-namespace=traces",
        "--mirror-namespace=traces",
        otlp.as_str(),
    ];
    let cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &cp_args);
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let mut agent_args = k.agent_args(ns, tmp.path());
    agent_args.push(otlp.clone());
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let _agent = AgentProc::spawn_with(
        &pki,
        "traced-k8s",
        cp.agent_addr,
        &tmp.path().join("agent"),
        &agent_args,
        &[],
    );
    api.wait_agents(1, 30).await;

    kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(SESSION));
    api.wait_phase("traced-obj", pb::SessionPhase::Running, 90)
        .await;

    let expected = [
        "controller.reconcile",
        "store.insert_session",
        "command.dispatch",
        "command.apply",
        "kubernetes.apply",
        "kubernetes.wait_ready",
        "command.result",
    ];
    let t = wait_trace(
        &jaeger,
        "the Session object's trace in Jaeger",
        || {
            jaeger
                .find(
                    "streamspace-agent",
                    "command.apply",
                    &[("session_id", "traced-obj")],
                )
                .into_iter()
                .next()
        },
        |t| has_all(t, &expected),
    )
    .await;
    eprintln!("the trace of Session traced-obj:\n{}", t.tree());
    let reconcile = t.one("controller.reconcile", ("session", "traced-obj"));
    assert_eq!(reconcile.service, "streamspace-control-plane");
    // The controller starts the trace: kube-runtime's span for the event
    // ("reconciling object", naming why) is the root, ours its child.
    let roots: Vec<_> = t.spans.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "{}", t.tree());
    assert_eq!(roots[0].service, "streamspace-control-plane");
    assert!(
        roots[0].id == reconcile.id
            || (reconcile.parent.as_deref() == Some(roots[0].id.as_str())
                && roots[0].name == "reconciling object"),
        "{}",
        t.tree()
    );
    let dispatch = t.one("command.dispatch", ("session_id", "traced-obj"));
    let apply = t.one("command.apply", ("session_id", "traced-obj"));
    assert!(t.descends(dispatch, reconcile), "{}", t.tree());
    assert_eq!(
        apply.parent.as_deref(),
        Some(dispatch.id.as_str()),
        "{}",
        t.tree()
    );
    let kinds: Vec<&str> = t
        .named("kubernetes.apply")
        .iter()
        .filter(|s| t.descends(s, apply))
        .filter_map(|s| s.tags.get("kind").map(String::as_str))
        .collect();
    assert!(
        kinds.contains(&"Deployment") && kinds.contains(&"Service"),
        "{kinds:?}\n{}",
        t.tree()
    );
    let ready = t.named("kubernetes.wait_ready")[0];
    assert!(t.descends(ready, apply), "{}", t.tree());
    assert_eq!(
        ready.tags.get("phase").map(String::as_str),
        Some("SESSION_PHASE_RUNNING")
    );
    assert!(
        t.descends(t.named("command.result")[0], reconcile),
        "{}",
        t.tree()
    );

    // Leave nothing behind: the controller releases the object's finalizer.
    k.kubectl(&[
        "delete",
        "session",
        "traced-obj",
        "-n",
        ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    let _ = kubectl()
        .args(["delete", "namespace", ns, "--wait=false"])
        .output();
}
