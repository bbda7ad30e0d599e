//! The outbox tools with the real grpcurl: an agent that never answers lets
//! a start expire; grpcurl lists the session's commands, retries the expired
//! one (a new command reaches the agent), cannot cancel a delivered one,
//! cancels a pending one (a retry waiting out its backoff), and the audit log
//! shows each, naming the caller.

use std::process::Command;

use streamspace::v1 as pb;
use streamspace_tests::procs::CpProc;
use streamspace_tests::*;

/// grpcurl as an admin against `addr`; (succeeded, stdout + stderr).
fn grpcurl(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    body: &str,
) -> (bool, String) {
    let bin = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let out = Command::new(&bin)
        .args([
            "-cacert",
            pki.ca_path().to_str().unwrap(),
            "-authority",
            "localhost",
            "-H",
            &format!("authorization: Bearer {token}"),
            "-d",
            body,
            &addr.to_string(),
            &format!("streamspace.v1.AgentAdminService/{method}"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{bin} must run (scripts/test.sh installs it): {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_retries_and_the_audit_log_shows_it() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let audit = tmp.path().join("audit.log");
    let flags = [
        format!("--audit-log={}", audit.display()),
        "--command-timeout-seconds=2".to_string(),
        // A retry waits a minute: long enough to cancel it below.
        "--retry-backoff=60s".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Heartbeats every 5 s: the silent test agent below stays attached.
    let cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 5_000, &flags);
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    // An agent that takes commands and never answers.
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pki.agent_pem("mute")))
        .await
        .unwrap();
    let mut agent = raw::attach(&mut c, vec![raw::hello("mute")]).await.unwrap();

    api.create("stuck", "static-files").await.unwrap();
    let first = raw::next_command(&mut agent).await;
    let failed = api.wait_phase("stuck", pb::SessionPhase::Failed, 30).await;
    assert_eq!(failed.failure_reason, pb::FailureReason::Deadline as i32);

    let (ok, out) = grpcurl(
        &pki,
        cp.api_addr,
        ADMIN_TOKEN,
        "ListCommands",
        r#"{"session":"stuck"}"#,
    );
    assert!(ok, "{out}");
    let listed = json(&out);
    let cmds = listed["commands"].as_array().expect("commands");
    assert_eq!(cmds.len(), 1, "{out}");
    assert_eq!(cmds[0]["id"], first.command_id);
    assert_eq!(cmds[0]["state"], "COMMAND_STATE_EXPIRED");
    assert_eq!(cmds[0]["action"], "start");

    // A user may not look.
    let (ok, out) = grpcurl(&pki, cp.api_addr, ALICE_TOKEN, "ListCommands", "{}");
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    // A bad id is refused naming the field.
    let (ok, out) = grpcurl(
        &pki,
        cp.api_addr,
        ADMIN_TOKEN,
        "GetCommand",
        r#"{"id":"../x"}"#,
    );
    assert!(!ok && out.contains("id: must be a command id"), "{out}");

    let body = format!(r#"{{"id":"{}"}}"#, first.command_id);
    let (ok, out) = grpcurl(&pki, cp.api_addr, ADMIN_TOKEN, "RetryCommand", &body);
    assert!(ok, "{out}");
    let retried = json(&out);
    let new_id = retried["command"]["id"]
        .as_str()
        .expect("a new command")
        .to_string();
    assert_ne!(new_id, first.command_id);
    assert_eq!(retried["command"]["action"], "start");
    assert!(
        retried["session"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("retried by admin"),
        "{out}"
    );
    let again = raw::next_command(&mut agent).await;
    assert_eq!(again.command_id, new_id, "the retry reaches the agent");
    // Retrying it twice: the session is no longer failed.
    let (ok, out) = grpcurl(&pki, cp.api_addr, ADMIN_TOKEN, "RetryCommand", &body);
    assert!(!ok && out.contains("FailedPrecondition"), "{out}");
    // Delivered: it cannot be taken back.
    let cancel = format!(r#"{{"id":"{new_id}"}}"#);
    let (ok, out) = grpcurl(&pki, cp.api_addr, ADMIN_TOKEN, "CancelCommand", &cancel);
    assert!(
        !ok && out.contains("only a pending command can be cancelled"),
        "{out}"
    );

    // A pending command can be cancelled: a start failed as retryable and
    // its retry waits out the backoff; cancelling fails it and its session.
    api.create("waits", "static-files").await.unwrap();
    let start = raw::next_command(&mut agent).await;
    raw::answer(
        &agent,
        &start,
        raw::failed(pb::FailureReason::Capacity, true),
    )
    .await;
    let pending = wait_for("the retry to be pending", 15, || async {
        let (ok, out) = grpcurl(
            &pki,
            cp.api_addr,
            ADMIN_TOKEN,
            "ListCommands",
            r#"{"session":"waits","state":"COMMAND_STATE_PENDING"}"#,
        );
        assert!(ok, "{out}");
        json(&out)["commands"][0]["id"].as_str().map(String::from)
    })
    .await;
    let cancel = format!(r#"{{"id":"{pending}"}}"#);
    let (ok, out) = grpcurl(&pki, cp.api_addr, ADMIN_TOKEN, "CancelCommand", &cancel);
    assert!(ok, "{out}");
    let cancelled = json(&out);
    assert_eq!(cancelled["state"], "COMMAND_STATE_FAILED", "{out}");
    assert_eq!(cancelled["attempt"], 2, "{out}");
    let s = api.wait_phase("waits", pb::SessionPhase::Failed, 15).await;
    assert!(s.message.contains("cancelled by admin"), "{}", s.message);

    let lines = std::fs::read_to_string(&audit).unwrap();
    let entries: Vec<serde_json::Value> = lines.lines().map(json).collect();
    let find = |method: &str, outcome: &str| {
        entries.iter().any(|e| {
            e["method"].as_str().is_some_and(|m| m.ends_with(method))
                && e["outcome"] == outcome
                && e["user"] == "admin"
        })
    };
    assert!(find("RetryCommand", "OK"), "{lines}");
    assert!(find("RetryCommand", "FAILED_PRECONDITION"), "{lines}");
    assert!(find("CancelCommand", "FAILED_PRECONDITION"), "{lines}");
    assert!(find("CancelCommand", "OK"), "{lines}");
    assert!(
        !entries.iter().any(|e| e["method"]
            .as_str()
            .is_some_and(|m| m.ends_with("ListCommands"))),
        "reads are not audited: {lines}"
    );
}
