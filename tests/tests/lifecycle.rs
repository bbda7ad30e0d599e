//! A session's whole life over real mTLS on loopback, with a real agent
//! process and the process runtime: create -> RUNNING (URL answers) ->
//! hibernate (process stopped) -> wake -> delete (process gone, session gone).
//! WatchSessions must deliver each transition.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_hibernate_wake_delete() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let _agent = AgentProc::spawn(&pki, "agent-1", cp.agent_addr, &tmp.path().join("agent"));
    let mut api = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;

    let mut watch = api
        .sessions
        .watch_sessions(pb::WatchSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The session waits for the agent if it is not attached yet, then runs.
    let created = api.create("alice-files", "static-files").await.unwrap();
    assert_eq!(created.user, "alice");
    assert_eq!(created.desired_state, pb::DesiredState::Running as i32);

    let running = api
        .wait_phase("alice-files", pb::SessionPhase::Running, 30)
        .await;
    assert!(
        running.url.starts_with("http://127.0.0.1:"),
        "url: {}",
        running.url
    );
    assert!(http_ok(&running.url).await, "the session's URL must answer");
    assert_eq!(running.agent_id, "agent-1");
    let pid = session_pid(&running);
    assert!(matches!(proc_state(pid), Some('S' | 'R')));

    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "alice-files".into(),
        })
        .await
        .unwrap();
    api.wait_phase("alice-files", pb::SessionPhase::Hibernated, 30)
        .await;
    wait_for("the process to be stopped (state T)", 10, || async move {
        (proc_state(pid) == Some('T')).then_some(())
    })
    .await;

    api.sessions
        .wake_session(pb::WakeSessionRequest {
            name: "alice-files".into(),
        })
        .await
        .unwrap();
    let woken = api
        .wait_phase("alice-files", pb::SessionPhase::Running, 30)
        .await;
    assert_eq!(session_pid(&woken), pid, "wake resumes the same process");
    assert!(http_ok(&woken.url).await);

    api.sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "alice-files".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    api.wait_gone("alice-files", 30).await;
    wait_for("the process to be gone", 10, || async move {
        proc_state(pid).is_none().then_some(())
    })
    .await;

    // Every transition was delivered to the watcher, in order.
    let mut phases = vec![];
    let mut deleted = false;
    let collect = async {
        while let Some(Ok(ev)) = watch.next().await {
            let s = ev.session.unwrap();
            if s.name != "alice-files" {
                continue;
            }
            if ev.r#type == pb::session_event::Type::Deleted as i32 {
                deleted = true;
                break;
            }
            let p = pb::SessionPhase::try_from(s.phase).unwrap();
            if phases.last() != Some(&p) {
                phases.push(p);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("watch delivers the deletion");
    assert!(deleted, "DELETED event");
    use pb::SessionPhase::*;
    for want in [Pending, Provisioning, Running, Hibernated, Stopped] {
        assert!(phases.contains(&want), "watch missed {want:?}: {phases:?}");
    }
    let pos = |p| phases.iter().position(|x| *x == p).unwrap();
    assert!(
        pos(Pending) < pos(Running)
            && pos(Running) < pos(Hibernated)
            && pos(Hibernated) < pos(Stopped),
        "{phases:?}"
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_run_fails_with_a_reason() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let _agent = AgentProc::spawn(&pki, "agent-2", cp.agent_addr, &tmp.path().join("agent"));
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let t = pb::Template {
        name: "broken".into(),
        command: vec!["/nonexistent/streamspace-session".into()],
        ..Default::default()
    };
    admin
        .templates
        .put_template(pb::PutTemplateRequest { template: Some(t) })
        .await
        .unwrap();
    let crash = pb::Template {
        name: "exits".into(),
        command: vec!["sh".into(), "-c".into(), "exit 3".into()],
        ..Default::default()
    };
    admin
        .templates
        .put_template(pb::PutTemplateRequest {
            template: Some(crash),
        })
        .await
        .unwrap();
    admin.create("cannot-run", "broken").await.unwrap();
    admin.create("dies", "exits").await.unwrap();
    let s = admin
        .wait_phase("cannot-run", pb::SessionPhase::Failed, 30)
        .await;
    assert_eq!(s.failure_reason, pb::FailureReason::Image as i32, "{s:?}");
    assert!(s.message.contains("cannot be executed"), "{}", s.message);
    let s = admin.wait_phase("dies", pb::SessionPhase::Failed, 30).await;
    assert_eq!(
        s.failure_reason,
        pb::FailureReason::CrashLoop as i32,
        "{s:?}"
    );
    assert!(s.message.contains("exit status: 3"), "{}", s.message);
    cp.shutdown().await;
}

/// More commands than the agent's in-flight window: the rest wait in the
/// store and go out as results free slots; every session runs, then every
/// one is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_commands_than_the_window_all_complete() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let opts = CpOptions {
        max_in_flight: 2,
        ..CpOptions::default()
    };
    let cp = start_cp(&pki, &db, &opts).await;
    let _agent = AgentProc::spawn(&pki, "agent-w", cp.agent_addr, &tmp.path().join("agent"));
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let names: Vec<String> = (0..7).map(|i| format!("window-{i}")).collect();
    for n in &names {
        api.create(n, "static-files").await.unwrap();
    }
    for n in &names {
        api.wait_phase(n, pb::SessionPhase::Running, 60).await;
    }
    for n in &names {
        api.sessions
            .delete_session(pb::DeleteSessionRequest {
                name: n.clone(),
                delete_home: false,
            })
            .await
            .unwrap();
    }
    for n in &names {
        api.wait_gone(n, 60).await;
        let n = n.clone();
        wait_for("the process to be gone", 10, || {
            let n = n.clone();
            async move { session_processes(&n).is_empty().then_some(()) }
        })
        .await;
    }
    cp.shutdown().await;
}
