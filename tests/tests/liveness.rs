//! Placement, deadlines and liveness: a session waits (Pending, with a
//! condition saying why) until a matching agent appears; a command the agent
//! never finishes expires and the session shows FAILED with the reason; a
//! stream whose heartbeats stop is closed and the agent shown offline.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_waits_for_a_matching_agent() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let mut api = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let s = api.create("early", "static-files").await.unwrap();
    assert_eq!(s.phase, pb::SessionPhase::Pending as i32);
    let c = s
        .conditions
        .iter()
        .find(|c| c.r#type == "Scheduled")
        .expect("Scheduled condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NoAgentAvailable")
    );
    assert!(c.message.contains("no agent is connected"), "{c:?}");
    let picky = api
        .sessions
        .create_session(pb::CreateSessionRequest {
            name: "picky".into(),
            template: "static-files".into(),
            selector: Some(pb::AgentSelector {
                platform: "process".into(),
                region: "mars".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(picky.phase, pb::SessionPhase::Pending as i32);

    // The agent (region "test") appears: the first session is placed and runs,
    // the one asking for region "mars" keeps waiting and says why.
    let _agent = AgentProc::spawn(&pki, "late-agent", cp.agent_addr, &tmp.path().join("agent"));
    let s = api.wait_phase("early", pb::SessionPhase::Running, 30).await;
    assert_eq!(s.agent_id, "late-agent");
    let picky = api.get("picky").await.unwrap();
    assert_eq!(picky.phase, pb::SessionPhase::Pending as i32);
    assert!(picky.agent_id.is_empty());
    assert!(
        picky.message.contains("region=\"mars\""),
        "{}",
        picky.message
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_command_expires_and_the_session_fails() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let opts = CpOptions {
        command_timeout: Duration::from_secs(2),
        ..CpOptions::default()
    };
    let cp = start_cp(&pki, &db, &opts).await;
    // An agent that acknowledges but never reports a result.
    let pem = pki.agent_pem("silent");
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
        .await
        .unwrap();
    let mut stream = raw::attach(&mut c, vec![raw::hello("silent")])
        .await
        .unwrap();
    let mut api = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    api.create("stuck", "static-files").await.unwrap();
    let cmd = loop {
        let f = stream.rx.message().await.unwrap().unwrap();
        if let Some(pb::control_frame::Frame::Command(c)) = f.frame {
            break c;
        }
    };
    assert_eq!(cmd.session_id, "stuck");
    assert!(matches!(cmd.action, Some(pb::command::Action::Start(_))));
    stream
        .tx
        .send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Ack(pb::CommandAck {
                command_id: cmd.command_id.clone(),
            })),
        })
        .await
        .unwrap();
    let hb = tokio::spawn({
        let tx = stream.tx.clone();
        async move {
            for seq in 1.. {
                let f = pb::AgentFrame {
                    frame: Some(pb::agent_frame::Frame::Heartbeat(pb::Heartbeat {
                        sequence: seq,
                        in_use: None,
                        active_sessions: vec![],
                    })),
                };
                if tx.send(f).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let s = api.wait_phase("stuck", pb::SessionPhase::Failed, 30).await;
    assert_eq!(s.failure_reason, pb::FailureReason::Deadline as i32);
    assert!(
        s.message.contains("expired") && s.message.contains(&cmd.command_id),
        "{}",
        s.message
    );
    // A late result for the expired command changes nothing.
    let late = pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Result(pb::CommandResult {
            command_id: cmd.command_id.clone(),
            outcome: Some(pb::command_result::Outcome::Succeeded(
                pb::CommandSucceeded {},
            )),
        })),
    };
    stream.tx.send(late).await.unwrap();
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let agent = admin
        .admin
        .get_agent(pb::GetAgentRequest {
            id: "silent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(agent.connected, "a late result is not a protocol error");
    assert_eq!(
        api.get("stuck").await.unwrap().phase,
        pb::SessionPhase::Failed as i32
    );
    hb.abort();
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_is_closed_and_replaced() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let opts = CpOptions {
        heartbeat: Duration::from_millis(200),
        ..CpOptions::default()
    };
    let cp = start_cp(&pki, &db, &opts).await;
    let pem = pki.agent_pem("quiet");
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
        .await
        .unwrap();
    let mut stream = raw::attach(&mut c, vec![raw::hello("quiet")])
        .await
        .unwrap();
    // No heartbeats: three intervals later the stream is closed.
    let end = raw::end_status(&mut stream.rx).await;
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("no heartbeat"), "{}", end.message());
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let agent = admin
        .admin
        .get_agent(pb::GetAgentRequest { id: "quiet".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!agent.connected);
    // The same identity attaches again at once.
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
        .await
        .unwrap();
    raw::attach(&mut c, vec![raw::hello("quiet")])
        .await
        .expect("re-attach after the silent stream was closed");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_attached_agents() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use streamspace_agent::Client;
    use streamspace_agent::runtime::{StatusSink, noop::NoopRuntime};
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let (sink, statuses) = StatusSink::channel(64);
    let client = Arc::new(Client::new(
        pki.client_config("drained", cp.agent_addr, "noop", 0),
        Arc::new(NoopRuntime::new(sink)),
        statuses,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let (c, s) = (client.clone(), stop.clone());
    let task = tokio::spawn(async move { c.run(s).await });
    let roster = cp.lifecycle.roster().clone();
    wait_for("the agent to attach", 20, || {
        let r = roster.clone();
        async move { r.get("drained").map(|_| ()) }
    })
    .await;
    // SIGTERM path: every attached agent gets Drain before the listeners stop.
    cp.shutdown().await;
    assert_eq!(
        client.stats.drains.load(Ordering::SeqCst),
        1,
        "the agent was told to drain"
    );
    stop.cancel();
    task.await.unwrap();
}
