//! The agent at the edges: a session whose process dies while the control
//! plane is down (and whose start result never reached it) ends in a phase
//! that matches reality, and a burst of concurrent creates on one agent gets
//! one distinct port per session.

use std::collections::HashSet;

use streamspace::v1 as pb;
use streamspace_tests::faults::{
    freeze, pid_with_arg, rx_queued_from, shell_template, thaw, url_port,
};
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::*;

use pb::SessionPhase as P;

/// The start's result is held in flight (the control plane is frozen when
/// the agent sends it, then killed), the process dies while the control
/// plane is down, and the restarted control plane re-sends the start, which
/// the agent answers from its de-duplication cache. The session must not
/// stay PROVISIONING or RUNNING without a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_died_while_the_control_plane_was_down_converges() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    // Long heartbeats: the agent is frozen for a moment below and must not
    // be dropped for it.
    let mut cp = CpProc::spawn(&pki, &db, &tmp.path().join("cp"), 5_000);
    cp.ready().await;
    let agent = AgentProc::spawn(&pki, "edge-agent", cp.agent_addr, &tmp.path().join("agent"));
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.templates
        .put_template(pb::PutTemplateRequest {
            template: Some(shell_template("exits-soon", "sleep 2; exit 3")),
        })
        .await
        .expect("put template");
    let attached = || async {
        agent
            .log()
            .contains("connected to the control plane")
            .then_some(())
    };
    wait_for("the agent to attach", 30, attached).await;

    // The command reaches the frozen agent's socket...
    freeze(agent.pid());
    api.create("dies", "exits-soon").await.expect("create");
    wait_for("the start to be delivered", 30, || async {
        (cp.log().contains("command delivered") && rx_queued_from(cp.agent_addr) > 0).then_some(())
    })
    .await;
    // ...the control plane freezes before the result can come back...
    let cp_pid = pid_with_arg(&format!("--api-addr={}", cp.api_addr)).expect("control plane pid");
    freeze(cp_pid);
    thaw(agent.pid());
    wait_for("the session's process", 30, || async {
        (!session_processes("dies").is_empty()).then_some(())
    })
    .await;
    // ...and dies with the result unread.
    thaw(cp_pid);
    cp.kill9();
    wait_for("the session's process to exit", 30, || async {
        session_processes("dies").is_empty().then_some(())
    })
    .await;
    cp.start();
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;

    let mut last = None;
    let converged = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Ok(s) = api.get("dies").await {
                let procs = session_processes("dies");
                let phase = P::try_from(s.phase).unwrap_or(P::Unspecified);
                let consistent = match phase {
                    P::Failed | P::Stopped => true,
                    P::Provisioning | P::Running => procs.len() == 1,
                    _ => false,
                };
                if consistent {
                    return s;
                }
                last = Some((phase, procs));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let s = converged.unwrap_or_else(|_| {
        panic!(
            "session dies never matched its processes within 30s; last (phase, processes): {last:?}"
        )
    });
    if s.phase == P::Failed as i32 {
        assert!(
            s.message.contains("exit"),
            "FAILED says why: {:?}",
            s.message
        );
    }
}

/// Forty sessions created at once on one agent all run, each on its own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_get_distinct_ports() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let _agent = AgentProc::spawn(
        &pki,
        "ports-agent",
        cp.agent_addr,
        &tmp.path().join("agent"),
    );
    let api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let names: Vec<String> = (0..40).map(|i| format!("port-{i}")).collect();
    let creates = names.iter().map(|n| {
        let mut api = Api {
            sessions: api.sessions.clone(),
            templates: api.templates.clone(),
            admin: api.admin.clone(),
        };
        let n = n.clone();
        async move { api.create(&n, "static-files").await }
    });
    for r in futures::future::join_all(creates).await {
        r.expect("create");
    }
    let mut api = api;
    let mut ports = HashSet::new();
    for n in &names {
        let s = api.wait_phase(n, P::Running, 90).await;
        let port = url_port(&s.url).unwrap_or_else(|| panic!("{n} has no port in {:?}", s.url));
        assert!(
            ports.insert(port),
            "port {port} of {n} is another session's too"
        );
        assert!(http_ok(&s.url).await, "{n} answers on {}", s.url);
    }
    assert_eq!(ports.len(), 40);
}
