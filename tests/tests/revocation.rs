//! Agent revocation end to end: a real control-plane process and real agent
//! processes (plus raw streams where the exact status matters), on the store
//! the run asks for. Revoking closes an attached stream within a second,
//! re-attach is refused with PERMISSION_DENIED naming the revocation while
//! the agent backs off, a revoked agent's sessions move to another agent,
//! certificate-serial revocations refuse only that certificate, the deny
//! list survives a restart, unrevoking lets the agent back, and only admins
//! may do any of it.

use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use streamspace::v1::revoke_agent_request::Target as Revoke;
use streamspace::v1::unrevoke_agent_request::Target as Unrevoke;
use streamspace_control_plane::pki;
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::{ADMIN_TOKEN, ALICE_TOKEN, Api, TestPki, raw, wait_for};
use tonic::Code;

fn revoke(target: Revoke, reason: &str) -> pb::RevokeAgentRequest {
    pb::RevokeAgentRequest {
        target: Some(target),
        reason: reason.into(),
    }
}

async fn connected(api: &Api, id: &str) -> bool {
    let mut admin = api.admin.clone();
    admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
        .iter()
        .any(|a| a.id == id && a.connected)
}

/// Attaches a raw stream as `id` with certificate `pem`.
async fn attach_as(
    pki: &TestPki,
    cp: &CpProc,
    id: &str,
    pem: &pki::Pem,
) -> Result<raw::RawStream, tonic::Status> {
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(pem))
        .await
        .unwrap();
    raw::attach(&mut c, vec![raw::hello(id)]).await
}

/// Revokes `target` and measures how long until the raw stream `s` ends; the
/// status must be PERMISSION_DENIED naming the revocation.
async fn revoke_closes(api: &mut Api, mut s: raw::RawStream, target: Revoke, named: &str) {
    let t0 = Instant::now();
    let r = api
        .admin
        .revoke_agent(revoke(target, "test: key leaked"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked_by, "admin");
    let end = raw::end_status(&mut s.rx).await;
    let took = t0.elapsed();
    println!("revocation of {named}: stream closed {took:?} after RevokeAgent was sent");
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    assert!(end.message().contains(named), "{}", end.message());
    assert!(
        end.message().contains("test: key leaked"),
        "{}",
        end.message()
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// The text of a log without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agents_are_closed_refused_and_their_sessions_move() {
    streamspace_tests::init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = streamspace_tests::database_url(tmp.path()).await;
    let mut cp = CpProc::spawn(&pki, &db, &tmp.path().join("cp"), 500);
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;

    // A session on agent a1, then a second agent that can take it over.
    let a1 = AgentProc::spawn(&pki, "a1", cp.agent_addr, &tmp.path().join("a1"));
    api.wait_agents(1, 30).await;
    api.create("s1", "static-files").await.unwrap();
    let s = api.wait_phase("s1", pb::SessionPhase::Running, 60).await;
    assert_eq!(s.agent_id, "a1");
    let _a2 = AgentProc::spawn(&pki, "a2", cp.agent_addr, &tmp.path().join("a2"));
    api.wait_agents(2, 30).await;

    // Revoke a1: its stream closes at once, its session moves to a2.
    let t0 = Instant::now();
    let attempts_before = a1.log().matches("control plane stream ended").count();
    let r = api
        .admin
        .revoke_agent(revoke(
            Revoke::AgentId("a1".into()),
            "test: host compromised",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.sessions_released, 1);
    let mut poll = api.clone();
    let gone = wait_for("a1 to be disconnected", 5, || {
        let p = poll.clone();
        async move { (!connected(&p, "a1").await).then(Instant::now) }
    })
    .await;
    let took = gone - t0;
    println!(
        "revocation of agent a1 (real agent): disconnected {took:?} after RevokeAgent was sent"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let moved = wait_for("s1 to run on a2", 60, || {
        let mut p = poll.clone();
        async move {
            let s = p.get("s1").await.ok()?;
            (s.agent_id == "a2" && s.phase == pb::SessionPhase::Running as i32).then_some(s)
        }
    })
    .await;
    println!(
        "s1 re-placed on {} after {:?}",
        moved.agent_id,
        t0.elapsed()
    );
    let _ = &mut poll;

    // Re-attach is refused, naming the revocation; the agent backs off.
    let refused = attach_as(&pki, &cp, "a1", &pki.agent_pem("a1"))
        .await
        .err()
        .expect("a revoked agent id is refused, whatever its certificate");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    for part in [
        "agent id \"a1\"",
        "test: host compromised",
        "revoked at",
        "by admin",
    ] {
        assert!(
            refused.message().contains(part),
            "{part}: {}",
            refused.message()
        );
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed())).await;
    let log = strip_ansi(&a1.log());
    let attempts = log.matches("control plane stream ended").count() - attempts_before;
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("control plane stream ended") && l.contains("revoked"))
        .filter_map(|l| l.split("retry_in=").nth(1))
        .map(|d| d.split_whitespace().next().unwrap_or(d))
        .collect();
    if let Some(l) = log
        .lines()
        .rfind(|l| l.contains("control plane stream ended"))
    {
        println!("last refusal in the agent log: {l}");
    }
    println!(
        "a1 made {attempts} attach attempts in the 3 s after revocation; retry delays {delays:?}"
    );
    assert!(log.contains("revoked"), "the agent logs why it was refused");
    assert!(
        (1..=15).contains(&attempts),
        "{attempts} attempts: not backing off"
    );

    // By certificate serial: only that certificate is refused.
    let first = pki.agent_pem("r1");
    let serial = pki::pem_serial(&first.cert).unwrap();
    let shown = serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let s = attach_as(&pki, &cp, "r1", &first).await.unwrap();
    revoke_closes(&mut api, s, Revoke::CertificateSerial(shown), &serial).await;
    let again = attach_as(&pki, &cp, "r1", &first).await.err().unwrap();
    assert_eq!(again.code(), Code::PermissionDenied);
    assert!(
        again
            .message()
            .contains(&format!("certificate serial {serial}")),
        "{}",
        again.message()
    );
    let other = attach_as(&pki, &cp, "r1", &pki.agent_pem("r1")).await;
    assert!(
        other.is_ok(),
        "another certificate for r1 is accepted: {:?}",
        other.err()
    );
    drop(other);

    // A raw stream revoked by agent id: closed within a second too.
    let s = attach_as(&pki, &cp, "r2", &pki.agent_pem("r2"))
        .await
        .unwrap();
    revoke_closes(&mut api, s, Revoke::AgentId("r2".into()), "agent id \"r2\"").await;

    // Bad requests and repeats.
    let e = api
        .admin
        .revoke_agent(pb::RevokeAgentRequest {
            target: None,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("target")),
        (Code::InvalidArgument, true),
        "{e:?}"
    );
    let e = api
        .admin
        .revoke_agent(revoke(Revoke::AgentId("z".into()), " "))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().starts_with("reason"),
        "{e:?}"
    );
    let e = api
        .admin
        .revoke_agent(revoke(Revoke::CertificateSerial("not-hex".into()), "x"))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().starts_with("certificate_serial"),
        "{e:?}"
    );
    let e = api
        .admin
        .revoke_agent(revoke(Revoke::AgentId("a1".into()), "again"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("host compromised"),
        "names the existing one: {e:?}"
    );

    // Only admins.
    let mut alice = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let e = alice
        .admin
        .revoke_agent(revoke(Revoke::AgentId("a2".into()), "x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = alice
        .admin
        .unrevoke_agent(pb::UnrevokeAgentRequest {
            target: Some(Unrevoke::AgentId("a1".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = alice
        .admin
        .list_revocations(pb::ListRevocationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(connected(&api, "a2").await, "a non-admin revoked nothing");

    // The deny list survives a restart.
    cp.kill9();
    cp.start();
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let list = api
        .admin
        .list_revocations(pb::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .revocations;
    assert_eq!(list.len(), 3, "{list:?}");
    let e = attach_as(&pki, &cp, "a1", &pki.agent_pem("a1"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "still revoked after a restart: {e:?}"
    );
    api.wait_agents(1, 30).await;
    assert!(!connected(&api, "a1").await);

    // Unrevoke: the real agent attaches again by itself.
    let lifted = api
        .admin
        .unrevoke_agent(pb::UnrevokeAgentRequest {
            target: Some(Unrevoke::AgentId("a1".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .lifted
        .unwrap();
    assert_eq!(lifted.reason, "test: host compromised");
    let p = api.clone();
    wait_for("a1 to attach again after unrevoke", 30, || {
        let p = p.clone();
        async move { connected(&p, "a1").await.then_some(()) }
    })
    .await;
    let e = api
        .admin
        .unrevoke_agent(pb::UnrevokeAgentRequest {
            target: Some(Unrevoke::AgentId("a1".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let s = api.get("s1").await.unwrap();
    assert_eq!(
        s.agent_id, "a2",
        "a released session stays where it was placed since"
    );
    drop(a1);
}
