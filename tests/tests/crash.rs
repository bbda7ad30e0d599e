//! Crashes lose no accepted command and duplicate none: the agent or the
//! control plane is killed with SIGKILL while commands are pending and
//! restarted; every command takes effect exactly once.

use streamspace::v1 as pb;
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::*;

use pb::SessionPhase as P;

async fn assert_exactly_one_process(api: &mut Api, name: &str) {
    let s = api.get(name).await.unwrap();
    let procs = session_processes(name);
    assert_eq!(
        procs.len(),
        1,
        "session {name} must run exactly one process, found {procs:?}"
    );
    assert_eq!(
        procs[0],
        session_pid(&s),
        "the session's pid is the one running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_pending_commands() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let mut agent = AgentProc::spawn(
        &pki,
        "crash-agent",
        cp.agent_addr,
        &tmp.path().join("agent"),
    );
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;

    for i in 0..4 {
        api.create(&format!("keep-{i}"), "static-files")
            .await
            .unwrap();
    }
    for i in 0..4 {
        api.wait_phase(&format!("keep-{i}"), P::Running, 30).await;
    }
    // Commands in flight when the agent dies: created and immediately killed.
    for i in 0..3 {
        api.create(&format!("inflight-{i}"), "static-files")
            .await
            .unwrap();
    }
    agent.kill9();
    // Commands accepted while the agent is down.
    for i in 0..3 {
        api.create(&format!("queued-{i}"), "static-files")
            .await
            .unwrap();
    }
    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "keep-0".into(),
        })
        .await
        .unwrap();
    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "keep-1".into(),
        })
        .await
        .unwrap();
    api.sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "keep-2".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    // A newer desired state supersedes a queued one.
    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "queued-2".into(),
        })
        .await
        .unwrap();
    api.sessions
        .wake_session(pb::WakeSessionRequest {
            name: "queued-2".into(),
        })
        .await
        .unwrap();

    agent.start();
    for name in [
        "keep-3",
        "inflight-0",
        "inflight-1",
        "inflight-2",
        "queued-0",
        "queued-1",
        "queued-2",
    ] {
        let s = api.wait_phase(name, P::Running, 40).await;
        assert!(http_ok(&s.url).await, "{name} answers");
        assert_exactly_one_process(&mut api, name).await;
    }
    for name in ["keep-0", "keep-1"] {
        api.wait_phase(name, P::Hibernated, 40).await;
        assert_exactly_one_process(&mut api, name).await;
    }
    api.wait_gone("keep-2", 40).await;
    assert!(
        session_processes("keep-2").is_empty(),
        "deleted session's process is gone"
    );

    // Killed again right after a burst of changes, restarted: still exactly once.
    api.sessions
        .wake_session(pb::WakeSessionRequest {
            name: "keep-0".into(),
        })
        .await
        .unwrap();
    api.sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "queued-0".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    agent.kill9();
    agent.start();
    api.wait_phase("keep-0", P::Running, 40).await;
    assert_exactly_one_process(&mut api, "keep-0").await;
    api.wait_gone("queued-0", 40).await;
    // keep-1 was hibernated (stopped process) when the agent died: it survives.
    let s = api.wait_phase("keep-1", P::Hibernated, 40).await;
    assert_exactly_one_process(&mut api, "keep-1").await;
    assert_eq!(proc_state(session_pid(&s)), Some('T'), "still stopped");
    assert!(session_processes("queued-0").is_empty());
    drop(agent);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted_on_its_store() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let mut cp = CpProc::spawn(&pki, &db, &tmp.path().join("cp"), 500);
    cp.ready().await;
    // Templates go in through the API.
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let _agent = AgentProc::spawn(
        &pki,
        "cp-crash-agent",
        cp.agent_addr,
        &tmp.path().join("agent"),
    );
    for i in 0..3 {
        api.create(&format!("before-{i}"), "static-files")
            .await
            .unwrap();
    }
    for i in 0..3 {
        api.wait_phase(&format!("before-{i}"), P::Running, 30).await;
    }
    // Accepted, then the control plane dies before (or while) sending them.
    for i in 0..4 {
        api.create(&format!("accepted-{i}"), "static-files")
            .await
            .unwrap();
    }
    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "before-0".into(),
        })
        .await
        .unwrap();
    api.sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "before-1".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    cp.kill9();
    cp.start();
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    for name in [
        "before-2",
        "accepted-0",
        "accepted-1",
        "accepted-2",
        "accepted-3",
    ] {
        let s = api.wait_phase(name, P::Running, 40).await;
        assert!(http_ok(&s.url).await);
        assert_exactly_one_process(&mut api, name).await;
    }
    api.wait_phase("before-0", P::Hibernated, 40).await;
    assert_exactly_one_process(&mut api, "before-0").await;
    api.wait_gone("before-1", 40).await;
    assert!(session_processes("before-1").is_empty());
    let listed = api
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        listed.len(),
        6,
        "no duplicate or lost sessions: {:?}",
        listed.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}
