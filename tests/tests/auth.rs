//! Identity and no-thrash rules on the agent port, and user isolation on the API.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_agent::Client;
use streamspace_agent::runtime::{StatusSink, process::ProcessRuntime};
use streamspace_control_plane::pki;
use streamspace_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

async fn cp() -> (
    TestPki,
    tempfile::TempDir,
    streamspace_control_plane::server::ControlPlane,
) {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    (pki, tmp, cp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_identity_is_enforced() {
    let (pki, _tmp, cp) = cp().await;
    // A certificate for agent-a saying Hello as agent-b.
    let a = pki.agent_pem("agent-a");
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&a))
        .await
        .unwrap();
    let err = raw::attach(&mut c, vec![raw::hello("agent-b")])
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("hello.agent_id"),
        "{}",
        err.message()
    );

    // No client certificate: refused in the TLS handshake, nothing attaches.
    let refused = match raw::connect(&pki.ca.cert, cp.agent_addr, None).await {
        Err(_) => true,
        Ok(mut c) => raw::attach(&mut c, vec![raw::hello("agent-a")])
            .await
            .is_err(),
    };
    assert!(
        refused,
        "an agent without a client certificate must be refused"
    );

    // A certificate from another CA.
    let other_ca = pki::new_ca("rogue CA").unwrap();
    let rogue = pki::new_agent(
        &other_ca,
        pki::agent_uri("x", "y").split('/').nth(2).unwrap(),
        "agent-a",
    )
    .unwrap();
    let rogue2 =
        pki::new_agent(&other_ca, streamspace_tests::pki::TRUST_DOMAIN, "agent-a").unwrap();
    for cert in [rogue, rogue2] {
        let refused = match raw::connect(&pki.ca.cert, cp.agent_addr, Some(&cert)).await {
            Err(_) => true,
            Ok(mut c) => raw::attach(&mut c, vec![raw::hello("agent-a")])
                .await
                .is_err(),
        };
        assert!(refused, "a certificate from another CA must be refused");
    }
    assert!(cp.lifecycle.roster().all().is_empty(), "nothing attached");

    // The right certificate works.
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&a))
        .await
        .unwrap();
    raw::attach(&mut c, vec![raw::hello("agent-a")])
        .await
        .expect("attach with the right identity");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_attach_is_refused_and_first_keeps_working() {
    let (pki, tmp, cp) = cp().await;
    let pem = pki.agent_pem("agent-1");
    let (sink, statuses) = StatusSink::channel(1024);
    let rt = Arc::new(
        ProcessRuntime::open(
            &tmp.path().join("agent"),
            sink,
            Duration::from_secs(2),
            true,
        )
        .unwrap(),
    );
    let client = Arc::new(Client::new(
        pki.client_config("agent-1", cp.agent_addr, "process", 10),
        rt,
        statuses,
    ));
    let stop = CancellationToken::new();
    let (c2, s2) = (client.clone(), stop.clone());
    let task = tokio::spawn(async move { c2.run(s2).await });
    let roster = cp.lifecycle.roster().clone();
    wait_for("agent-1 to attach", 20, || {
        let r = roster.clone();
        async move { r.get("agent-1").map(|_| ()) }
    })
    .await;

    // A second stream with the same identity while the first is healthy.
    for _ in 0..3 {
        let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
            .await
            .unwrap();
        let err = raw::attach(&mut c, vec![raw::hello("agent-1")])
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }
    // The first stream still delivers commands.
    let mut api = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    for i in 0..3 {
        let name = format!("thrash-{i}");
        api.create(&name, "static-files").await.unwrap();
        let s = api.wait_phase(&name, pb::SessionPhase::Running, 30).await;
        assert!(http_ok(&s.url).await);
    }
    assert_eq!(
        client.stats.attaches.load(Ordering::SeqCst),
        1,
        "the first agent never reconnected"
    );
    stop.cancel();
    task.await.unwrap();
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_sessions() {
    let (pki, _tmp, cp) = cp().await;
    let mut alice = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let mut bob = Api::connect(&pki, cp.api_addr, BOB_TOKEN).await;
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    alice.create("alice-1", "static-files").await.unwrap();
    bob.create("bob-1", "static-files").await.unwrap();

    // Another user's session looks exactly like one that does not exist
    // (`answers_hide_which_sessions_exist` checks every method).
    assert_eq!(bob.get("alice-1").await.unwrap_err().code(), Code::NotFound);
    let e = bob
        .sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "alice-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = bob
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "alice-1".into(),
            delete_home: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = bob
        .sessions
        .create_session(pb::CreateSessionRequest {
            name: "sneaky".into(),
            template: "static-files".into(),
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = bob
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mine = bob
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        mine.sessions
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["bob-1"]
    );
    assert_eq!(
        alice.get("alice-1").await.unwrap().desired_state,
        pb::DesiredState::Running as i32,
        "bob changed nothing"
    );

    // An admin sees and acts on all.
    let all = admin
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sessions.len(), 2);
    admin
        .sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "alice-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        alice.get("alice-1").await.unwrap().desired_state,
        pb::DesiredState::Hibernated as i32
    );
    admin
        .sessions
        .create_session(pb::CreateSessionRequest {
            name: "for-bob".into(),
            template: "static-files".into(),
            user: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bob.get("for-bob").await.unwrap().user, "bob");
    // Only admins use the agent admin service and change templates.
    assert_eq!(
        bob.admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    admin
        .admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap();
    let e = bob
        .templates
        .delete_template(pb::DeleteTemplateRequest {
            name: "static-files".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // No token, or a wrong one.
    let ch = channel(&pki, cp.api_addr).await;
    let mut anon = pb::session_service_client::SessionServiceClient::new(ch);
    let e = anon
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = Api::connect(&pki, cp.api_addr, "not-a-real-token-xxxx").await;
    assert_eq!(
        wrong.get("alice-1").await.unwrap_err().code(),
        Code::Unauthenticated
    );
    cp.shutdown().await;
}

/// What one caller gets from one method on one name: the code, and the
/// message with the name taken out (so two names can be compared).
async fn answer(api: &mut Api, method: &str, name: &str) -> (Code, String) {
    let s = &mut api.sessions;
    let r = match method {
        "get" => s
            .get_session(pb::GetSessionRequest { name: name.into() })
            .await
            .map(|_| ()),
        "hibernate" => s
            .hibernate_session(pb::HibernateSessionRequest { name: name.into() })
            .await
            .map(|_| ()),
        "wake" => s
            .wake_session(pb::WakeSessionRequest { name: name.into() })
            .await
            .map(|_| ()),
        "delete" => s
            .delete_session(pb::DeleteSessionRequest {
                name: name.into(),
                delete_home: false,
            })
            .await
            .map(|_| ()),
        m => panic!("unknown method {m}"),
    };
    match r {
        Ok(()) => (Code::Ok, String::new()),
        Err(e) => (e.code(), e.message().replace(name, "<name>")),
    }
}

/// Three callers (two users and an admin) x every per-session method: a
/// user asking about another user's session gets the very answer (code and
/// message) of a name that does not exist, so nobody can probe which names
/// exist; the owner and the admin are answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hide_which_sessions_exist() {
    let (pki, _tmp, cp) = cp().await;
    let mut alice = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let mut bob = Api::connect(&pki, cp.api_addr, BOB_TOKEN).await;
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    // Delete last: it ends the sessions.
    let methods = ["get", "hibernate", "wake", "delete"];
    alice.create("alice-m", "static-files").await.unwrap();
    bob.create("bob-m", "static-files").await.unwrap();
    for method in methods {
        for (caller, api, theirs) in [("alice", &mut alice, "bob-m"), ("bob", &mut bob, "alice-m")]
        {
            let other = answer(api, method, theirs).await;
            let missing = answer(api, method, "no-such-session").await;
            assert_eq!(
                other, missing,
                "{caller} {method}: another user's session must look like a missing one"
            );
            assert_eq!(other.0, Code::NotFound, "{caller} {method}: {other:?}");
        }
        // The admin tells them apart: that is allowed.
        assert_eq!(
            answer(&mut admin, method, "no-such-session").await.0,
            Code::NotFound
        );
    }
    for (api, own) in [(&mut alice, "alice-m"), (&mut bob, "bob-m")] {
        for method in methods {
            let (code, msg) = answer(api, method, own).await;
            assert_eq!(code, Code::Ok, "owner {method} {own}: {msg}");
        }
    }
    // The admin acts on a user's session (bob's is deleted by now: recreate).
    bob.create("bob-n", "static-files").await.unwrap();
    for method in methods {
        let (code, msg) = answer(&mut admin, method, "bob-n").await;
        assert_eq!(code, Code::Ok, "admin {method}: {msg}");
    }
    cp.shutdown().await;
}
