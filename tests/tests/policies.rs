//! Session policies the control plane enforces, with a real control-plane
//! process, a real agent with the process runtime and real sessions:
//! - the idle timeout hibernates a session nobody uses (condition Idle,
//!   reason IdleTimeout), while a TCP client connected to the session's port
//!   or TouchSession calls keep another RUNNING; waking clears the condition;
//! - its deadline survives a control-plane restart (kept, not restarted);
//! - the maximum duration warns first (Expiring/MaxDurationSoon) and then
//!   terminates the session (Expiring/MaxDurationReached).

use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::*;

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

async fn create(api: &mut Api, name: &str, idle: i64, max: i64) {
    api.sessions
        .create_session(pb::CreateSessionRequest {
            name: name.into(),
            template: "static-files".into(),
            timeouts: Some(pb::Timeouts {
                idle_timeout: secs(idle),
                max_session_duration: secs(max),
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
}

fn condition<'a>(s: &'a pb::Session, kind: &str) -> Option<&'a pb::Condition> {
    s.conditions.iter().find(|c| c.r#type == kind)
}

/// A control-plane process with a sweep every second, and one agent.
async fn setup(tmp: &std::path::Path, extra: &[&str]) -> (TestPki, CpProc, AgentProc, Api) {
    init();
    let pki = TestPki::new();
    let db = database_url(tmp).await;
    let cp = CpProc::spawn_with(&pki, &db, &tmp.join("cp"), 500, extra);
    cp.ready().await;
    let agent = AgentProc::spawn(&pki, "agent-1", cp.agent_addr, &tmp.join("agent"));
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    api.wait_agents(1, 30).await;
    (pki, cp, agent, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hibernate_unless_someone_is_active() {
    let tmp = tempfile::tempdir().unwrap();
    let (_pki, _cp, _agent, mut api) = setup(tmp.path(), &[]).await;
    for name in ["idle", "connected", "touched"] {
        create(&mut api, name, 3, 0).await;
    }
    let mut conn = None;
    for name in ["idle", "connected", "touched"] {
        let s = api.wait_phase(name, pb::SessionPhase::Running, 30).await;
        if name == "connected" {
            let addr = s.url.trim_start_matches("http://").trim_end_matches('/');
            conn = Some(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
    }

    // For 8 s (well past the 3 s idle timeout): "touched" is touched every
    // second, "connected" has a client; "idle" is hibernated meanwhile.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        api.sessions
            .touch_session(pb::TouchSessionRequest {
                name: "touched".into(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let idle = api
        .wait_phase("idle", pb::SessionPhase::Hibernated, 10)
        .await;
    assert_eq!(idle.desired_state, pb::DesiredState::Hibernated as i32);
    let c = condition(&idle, "Idle").expect("the Idle condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "IdleTimeout")
    );
    assert!(c.message.contains("idle timeout 3s"), "{}", c.message);
    for name in ["connected", "touched"] {
        let s = api.get(name).await.unwrap();
        assert_eq!(
            s.phase,
            pb::SessionPhase::Running as i32,
            "{name} is active and must still run: {s:#?}"
        );
        assert!(s.last_activity_time.is_some());
    }

    // The client leaves: "connected" becomes idle too.
    drop(conn);
    let s = api
        .wait_phase("connected", pb::SessionPhase::Hibernated, 15)
        .await;
    assert_eq!(condition(&s, "Idle").unwrap().reason, "IdleTimeout");

    // Waking clears the condition, and the timeout counts afresh.
    api.sessions
        .wake_session(pb::WakeSessionRequest {
            name: "idle".into(),
        })
        .await
        .unwrap();
    let woken = api.wait_phase("idle", pb::SessionPhase::Running, 30).await;
    assert!(condition(&woken, "Idle").is_none(), "{woken:#?}");
    api.wait_phase("idle", pb::SessionPhase::Hibernated, 15)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_deadline_survives_a_control_plane_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, mut cp, _agent, mut api) = setup(tmp.path(), &[]).await;
    create(&mut api, "s", 6, 0).await;
    api.wait_phase("s", pb::SessionPhase::Running, 30).await;
    let running_at = Instant::now();
    // Down for 3 s in the middle of the 6 s: a deadline restarted with the
    // control plane would fall at least 6 s after it is back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cp.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cp.start();
    cp.ready().await;
    let back = Instant::now();
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.wait_phase("s", pb::SessionPhase::Hibernated, 20).await;
    let after_back = back.elapsed();
    assert!(
        after_back < Duration::from_secs(5),
        "hibernated {after_back:?} after the restart ({:?} after RUNNING): the 6 s deadline was restarted, not kept",
        running_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_duration_warns_then_terminates() {
    let tmp = tempfile::tempdir().unwrap();
    let (_pki, _cp, _agent, mut api) = setup(tmp.path(), &["--max-duration-warning=3s"]).await;
    let mut watch = api
        .sessions
        .watch_sessions(pb::WatchSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    create(&mut api, "short", 0, 6).await;
    api.wait_phase("short", pb::SessionPhase::Running, 30).await;
    // Every state the session went through, until it is deleted.
    let mut seen = vec![];
    let collect = async {
        while let Some(Ok(ev)) = watch.message().await.transpose() {
            let s = ev.session.unwrap();
            if s.name != "short" {
                continue;
            }
            if ev.r#type == pb::session_event::Type::Deleted as i32 {
                return true;
            }
            seen.push(s);
        }
        false
    };
    let deleted = tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("the session is terminated within 30 s");
    assert!(deleted);
    let reasons: Vec<String> = seen
        .iter()
        .filter_map(|s| condition(s, "Expiring"))
        .map(|c| c.reason.clone())
        .collect();
    let soon = reasons.iter().position(|r| r == "MaxDurationSoon");
    let reached = reasons.iter().position(|r| r == "MaxDurationReached");
    assert!(
        matches!((soon, reached), (Some(a), Some(b)) if a < b),
        "warned, then terminated: {reasons:?}"
    );
    let last = seen
        .iter()
        .rev()
        .find(|s| condition(s, "Expiring").is_some_and(|c| c.reason == "MaxDurationReached"))
        .unwrap();
    assert_eq!(last.desired_state, pb::DesiredState::Terminated as i32);
    let msg = &condition(last, "Expiring").unwrap().message;
    assert!(msg.contains("maximum duration 6s"), "{msg}");
}
