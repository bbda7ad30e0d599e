//! Automatic retry of retryable failures, over real mTLS:
//! - with the real agent and its process runtime, a template whose process
//!   exits before it opens its port the first two times (CRASH_LOOP,
//!   retryable) runs on the third attempt; one that always exits fails after
//!   the configured attempts with the last reason; a command that cannot be
//!   executed (IMAGE, not retryable) fails at once; every attempt is a
//!   command the outbox tools list;
//! - with a scripted agent, the same at the protocol level: two CAPACITY
//!   failures, then success; a failure that is not retryable is not retried.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_tests::*;

/// The attempts of `session`'s commands, newest first: (attempt, state,
/// failure reason, message).
async fn attempts(api: &mut Api, session: &str) -> Vec<(u32, i32, i32, String)> {
    api.admin
        .list_commands(pb::ListCommandsRequest {
            session: session.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .commands
        .into_iter()
        .map(|c| (c.attempt, c.state, c.failure_reason, c.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_crashes_while_starting_is_started_again() {
    let x = Scratch::new().await;
    let (pki, tmp) = (&x.pki, x.tmp.path());
    // Three attempts in all.
    let cp = x
        .cp(&CpOptions {
            command_retries: 2,
            ..CpOptions::default()
        })
        .await;
    let _agent = procs::AgentProc::spawn(pki, "retry-agent", cp.agent_addr, &tmp.join("agent"));
    let mut api = Api::connect(pki, cp.api_addr, ADMIN_TOKEN).await;
    // Counts its starts in a file outside the session's home (which each
    // start makes afresh); the first two exit before serving.
    let count = tmp.join("starts");
    let flaky = format!(
        "n=$(( $(cat {c} 2>/dev/null || echo 0) + 1 )); echo $n > {c}; \
         if [ $n -lt 3 ]; then echo \"start $n: cannot open the display\" >&2; exit 1; fi; \
         exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        c = count.display()
    );
    let broken = pb::Template {
        command: vec!["/nonexistent/streamspace-session".into()],
        ..faults::shell_template("broken", "")
    };
    for t in [
        faults::shell_template("flaky", &flaky),
        faults::shell_template("always-crashes", "echo 'bad config' >&2; exit 7"),
        broken,
    ] {
        api.templates
            .put_template(pb::PutTemplateRequest { template: Some(t) })
            .await
            .unwrap();
    }
    api.wait_agents(1, 30).await;

    api.create("flaky-p", "flaky").await.unwrap();
    let s = api
        .wait_phase("flaky-p", pb::SessionPhase::Running, 60)
        .await;
    assert!(http_ok(&s.url).await, "serves on the third attempt: {s:#?}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    use pb::CommandState as S;
    use pb::FailureReason as R;
    let seen = attempts(&mut api, "flaky-p").await;
    let shape: Vec<(u32, i32, i32)> = seen.iter().map(|a| (a.0, a.1, a.2)).collect();
    assert_eq!(
        shape,
        vec![
            (3, S::Succeeded as i32, R::Unspecified as i32),
            (2, S::Failed as i32, R::CrashLoop as i32),
            (1, S::Failed as i32, R::CrashLoop as i32),
        ],
        "every attempt, newest first: {seen:#?}"
    );
    assert!(
        seen[2].3.contains("start 1: cannot open the display"),
        "{seen:#?}"
    );
    assert!(seen[1].3.contains("exit status: 1"), "{seen:#?}");

    // Always exits: FAILED after three attempts, with the last reason.
    api.create("doomed", "always-crashes").await.unwrap();
    let s = api.wait_phase("doomed", pb::SessionPhase::Failed, 60).await;
    assert_eq!(s.failure_reason, R::CrashLoop as i32, "{s:#?}");
    assert!(
        s.message.contains("start failed after 3 attempts"),
        "{}",
        s.message
    );
    assert!(
        s.message.contains("exit status: 7") && s.message.contains("bad config"),
        "{}",
        s.message
    );
    let seen = attempts(&mut api, "doomed").await;
    assert_eq!(
        seen.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(),
        vec![
            (3, S::Failed as i32),
            (2, S::Failed as i32),
            (1, S::Failed as i32)
        ],
        "{seen:#?}"
    );
    assert!(session_processes("doomed").is_empty());

    // Cannot be executed: not retryable, FAILED at once.
    api.create("broken-p", "broken").await.unwrap();
    let s = api
        .wait_phase("broken-p", pb::SessionPhase::Failed, 30)
        .await;
    assert_eq!(s.failure_reason, R::Image as i32, "{s:#?}");
    let seen = attempts(&mut api, "broken-p").await;
    assert_eq!(seen.len(), 1, "one attempt: {seen:#?}");
    assert_eq!((seen[0].0, seen[0].1), (1, S::Failed as i32));
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_and_every_attempt_is_listed() {
    let x = Scratch::new().await;
    let pki = &x.pki;
    let cp = x
        .cp(&CpOptions {
            heartbeat: Duration::from_secs(10),
            ..CpOptions::default()
        })
        .await;
    let mut api = Api::connect(pki, cp.api_addr, ADMIN_TOKEN).await;
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
            raw::answer(&agent, &cmd, raw::failed(pb::FailureReason::Capacity, true)).await;
            let s = api.get("flaky-s").await.unwrap();
            assert_ne!(s.phase, pb::SessionPhase::Failed as i32, "{s:#?}");
        } else {
            raw::answer(
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
    raw::answer(&agent, &cmd, raw::failed(pb::FailureReason::Image, false)).await;
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
