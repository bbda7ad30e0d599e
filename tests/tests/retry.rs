//! Automatic retry of retryable failures, over real mTLS with an agent whose
//! runtime fault is scripted: its first two starts of a session fail as
//! retryable (CAPACITY), the third succeeds; every attempt is a command the
//! outbox tools list. A start that fails for good (IMAGE, not retryable)
//! fails the session at once.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as Out;
use streamspace_tests::*;

fn frame(f: Out) -> pb::AgentFrame {
    pb::AgentFrame { frame: Some(f) }
}

/// Acks `c` and answers it with `outcome`, then (on success) a RUNNING status.
async fn answer(s: &raw::RawStream, c: &pb::Command, outcome: pb::command_result::Outcome) {
    let ok = matches!(outcome, pb::command_result::Outcome::Succeeded(_));
    s.tx.send(frame(Out::Ack(pb::CommandAck {
        command_id: c.command_id.clone(),
    })))
    .await
    .unwrap();
    s.tx.send(frame(Out::Result(pb::CommandResult {
        command_id: c.command_id.clone(),
        outcome: Some(outcome),
    })))
    .await
    .unwrap();
    if ok {
        s.tx.send(frame(Out::Status(pb::SessionStatus {
            session_id: c.session_id.clone(),
            phase: pb::SessionPhase::Running as i32,
            url: "http://127.0.0.1:1/".into(),
            ..Default::default()
        })))
        .await
        .unwrap();
    }
}

fn failed(reason: pb::FailureReason, retryable: bool) -> pb::command_result::Outcome {
    pb::command_result::Outcome::Failed(pb::CommandFailed {
        reason: reason as i32,
        message: "scripted fault".into(),
        retryable,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_and_every_attempt_is_listed() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(
        &pki,
        &db,
        &CpOptions {
            heartbeat: Duration::from_secs(10),
            ..CpOptions::default()
        },
    )
    .await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pki.agent_pem("flaky")))
        .await
        .unwrap();
    let mut agent = raw::attach(&mut c, vec![raw::hello("flaky")])
        .await
        .unwrap();

    api.create("flaky-s", "static-files").await.unwrap();
    let mut ids = vec![];
    for attempt in 1..=3 {
        let cmd = raw::next_command(&mut agent).await;
        assert!(matches!(cmd.action, Some(pb::command::Action::Start(_))));
        ids.push(cmd.command_id.clone());
        if attempt < 3 {
            answer(&agent, &cmd, failed(pb::FailureReason::Capacity, true)).await;
            let s = api.get("flaky-s").await.unwrap();
            assert_ne!(s.phase, pb::SessionPhase::Failed as i32, "{s:#?}");
        } else {
            answer(
                &agent,
                &cmd,
                pb::command_result::Outcome::Succeeded(pb::CommandSucceeded {}),
            )
            .await;
        }
    }
    api.wait_phase("flaky-s", pb::SessionPhase::Running, 15)
        .await;
    let listed = api
        .admin
        .list_commands(pb::ListCommandsRequest {
            session: "flaky-s".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .commands;
    let seen: Vec<(String, u32, i32)> = listed
        .iter()
        .map(|c| (c.id.clone(), c.attempt, c.state))
        .collect();
    use pb::CommandState as S;
    assert_eq!(
        seen,
        vec![
            (ids[2].clone(), 3, S::Succeeded as i32),
            (ids[1].clone(), 2, S::Failed as i32),
            (ids[0].clone(), 1, S::Failed as i32),
        ],
        "newest first, every attempt"
    );
    assert!(listed[0].not_before.is_some() && listed[2].not_before.is_none());

    // Not retryable: FAILED at once, one attempt.
    api.create("broken-s", "static-files").await.unwrap();
    let cmd = raw::next_command(&mut agent).await;
    answer(&agent, &cmd, failed(pb::FailureReason::Image, false)).await;
    let s = api
        .wait_phase("broken-s", pb::SessionPhase::Failed, 15)
        .await;
    assert_eq!(s.failure_reason, pb::FailureReason::Image as i32);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), raw::next_command(&mut agent))
            .await
            .is_err(),
        "no retry of a failure that is not retryable"
    );
    cp.shutdown().await;
}
