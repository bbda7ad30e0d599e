//! Users from an OpenID Connect issuer, through the real API listener: a
//! test issuer on loopback HTTPS serves discovery and JWKS and signs tokens;
//! the control plane verifies them, maps groups to admin, refuses bad tokens
//! with the reason (never the token), and follows key rotation.

use std::time::Duration;

use serde_json::json;
use streamspace::v1 as pb;
use streamspace_tests::oidc::{AUDIENCE, SigningKey, TestIssuer, now};
use streamspace_tests::procs::CpProc;
use streamspace_tests::*;
use tonic::Code;

async fn cp_with(
    issuer: &TestIssuer,
    pki: &TestPki,
    min_refresh: Duration,
) -> (
    tempfile::TempDir,
    streamspace_control_plane::server::ControlPlane,
) {
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let o = CpOptions {
        oidc: Some(issuer.config(pki, min_refresh)),
        ..Default::default()
    };
    (tmp, start_cp(pki, &db, &o).await)
}

async fn list(api: &mut Api) -> Result<Vec<String>, tonic::Status> {
    let r = api
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await?;
    Ok(r.into_inner()
        .sessions
        .into_iter()
        .map(|s| s.name)
        .collect())
}

/// Waits until `token` is accepted (the first key fetch is in the background).
async fn accepted(pki: &TestPki, addr: std::net::SocketAddr, token: &str) -> Api {
    let api = Api::connect(pki, addr, token).await;
    wait_for("the token to be accepted", 15, || {
        let mut api = api.clone();
        async move { list(&mut api).await.ok() }
    })
    .await;
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_users_see_only_their_sessions_and_the_admin_group_is_admin() {
    init();
    let pki = TestPki::new();
    let issuer = TestIssuer::start(&pki).await;
    let (_tmp, cp) = cp_with(&issuer, &pki, Duration::from_secs(1)).await;
    let mut erin = accepted(&pki, cp.api_addr, &issuer.token("erin", &["dev"])).await;
    let mut frank = Api::connect(&pki, cp.api_addr, &issuer.token("frank", &[])).await;
    erin.create("erin-1", "static-files").await.unwrap();
    frank.create("frank-1", "static-files").await.unwrap();
    assert_eq!(erin.get("erin-1").await.unwrap().user, "erin");
    assert_eq!(
        frank.get("erin-1").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(list(&mut erin).await.unwrap(), ["erin-1"]);
    assert_eq!(list(&mut frank).await.unwrap(), ["frank-1"]);

    // Admin by group; everyone else is refused the admin service.
    let e = erin
        .admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut olga = Api::connect(&pki, cp.api_addr, &issuer.token("olga", &["dev", "ops"])).await;
    olga.admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .expect("a member of the admin group lists agents");
    let mut sessions = list(&mut olga).await.unwrap();
    sessions.sort();
    assert_eq!(
        sessions,
        ["erin-1", "frank-1"],
        "an admin sees every session"
    );

    // Static tokens keep working beside OIDC.
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    admin
        .admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap();
    let mut alice = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    assert!(list(&mut alice).await.unwrap().is_empty());
    cp.shutdown().await;
}

/// Tampers with the signature without breaking its base64url.
fn flip_signature(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", sig.into_iter().collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_the_reason() {
    init();
    let pki = TestPki::new();
    let issuer = TestIssuer::start(&pki).await;
    let (_tmp, cp) = cp_with(&issuer, &pki, Duration::from_secs(1)).await;
    accepted(&pki, cp.api_addr, &issuer.token("erin", &[])).await;
    let key = issuer.key();
    let with = |change: serde_json::Value| {
        let mut c = issuer.claims("erin", &[]);
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let unsigned = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b.encode(issuer.claims("erin", &["ops"]).to_string())
        )
    };
    let cases = [
        (
            "expired",
            key.token(&with(json!({"exp": now() - 3600}))),
            "token expired",
        ),
        (
            "not yet valid",
            key.token(&with(json!({"nbf": now() + 3600}))),
            "token not yet valid",
        ),
        (
            "wrong audience",
            key.token(&with(json!({"aud": "someone-else"}))),
            "wrong audience: expected \"streamspace-test\"",
        ),
        (
            "wrong issuer",
            key.token(&with(json!({"iss": "https://evil.example"}))),
            "wrong issuer",
        ),
        (
            "unknown kid",
            SigningKey::new("stranger").token(&issuer.claims("erin", &[])),
            "unknown signing key (kid \"stranger\"), refreshing keys; retry",
        ),
        ("alg none", unsigned, "alg not allowed: \"none\""),
        (
            "HS256",
            key.sign(
                &json!({"alg": "HS256", "kid": key.kid}),
                &issuer.claims("erin", &[]),
            ),
            "alg not allowed: \"HS256\"",
        ),
        (
            "tampered signature",
            flip_signature(&issuer.token("erin", &[])),
            "bad signature",
        ),
        (
            "claims swapped after signing",
            {
                let good = issuer.token("erin", &[]);
                let forged = key.token(&issuer.claims("mallory", &["ops"]));
                let g: Vec<&str> = good.split('.').collect();
                let f: Vec<&str> = forged.split('.').collect();
                format!("{}.{}.{}", g[0], f[1], g[2])
            },
            "bad signature",
        ),
        (
            "no user-name claim",
            key.token(&with(json!({"preferred_username": null}))),
            "no \"preferred_username\" claim",
        ),
        (
            "bad user name",
            key.token(&with(json!({"preferred_username": "../root"}))),
            "claim \"preferred_username\"",
        ),
        ("malformed", "eyJhbGciOi.x.y".to_string(), "malformed token"),
    ];
    for (what, token, reason) in cases {
        let mut api = Api::connect(&pki, cp.api_addr, &token).await;
        let e = list(&mut api).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(
            e.message().starts_with("authorization: ") && e.message().contains(reason),
            "{what}: expected {reason:?} in {:?}",
            e.message()
        );
        assert!(!e.message().contains(&token), "{what}: the token is echoed");
        assert!(e.message().len() < 300, "{what}: {}", e.message());
    }
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_followed_and_dropped_keys_stop_working() {
    init();
    let pki = TestPki::new();
    let issuer = TestIssuer::start(&pki).await;
    let (_tmp, cp) = cp_with(&issuer, &pki, Duration::from_secs(2)).await;
    let old = issuer.token("erin", &[]);
    let mut old_api = accepted(&pki, cp.api_addr, &old).await;
    let fetches = issuer.jwks_fetches();

    // The issuer switches to key-2 and drops key-1 from its JWKS.
    issuer.rotate("key-2", false);
    let new = issuer.token("erin", &[]);
    let mut new_api = Api::connect(&pki, cp.api_addr, &new).await;
    let e = list(&mut new_api).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message()
            .contains("unknown signing key (kid \"key-2\"), refreshing keys; retry"),
        "{}",
        e.message()
    );
    // Made-up kids do not make the control plane hammer the issuer.
    for i in 0..30 {
        let t = SigningKey::new(&format!("made-up-{i}")).token(&issuer.claims("erin", &[]));
        let mut api = Api::connect(&pki, cp.api_addr, &t).await;
        assert_eq!(
            list(&mut api).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    wait_for("the new key's token to be accepted", 15, || {
        let mut api = new_api.clone();
        async move { list(&mut api).await.ok() }
    })
    .await;
    let refreshes = issuer.jwks_fetches() - fetches;
    assert!(
        (1..=2).contains(&refreshes),
        "{refreshes} JWKS fetches for one rotation and 30 unknown kids"
    );
    let e = list(&mut old_api).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("unknown signing key (kid \"key-1\")"),
        "{}",
        e.message()
    );

    // A rotation that keeps the previous key: both work after the refresh.
    issuer.rotate("key-3", true);
    let newest = issuer.token("erin", &[]);
    accepted(&pki, cp.api_addr, &newest).await;
    list(&mut new_api).await.expect("key-2 is still published");
    cp.shutdown().await;
}

/// The `serve` flags, end to end through the binary: issuer, audience, CA
/// bundle and admin group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flags_turn_oidc_on() {
    init();
    let pki = TestPki::new();
    let issuer = TestIssuer::start(&pki).await;
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let flags = [
        format!("--oidc-issuer={}", issuer.url),
        format!("--oidc-audience={AUDIENCE}"),
        format!("--oidc-ca={}", pki.ca_path().display()),
        "--admin-group=ops".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &flags);
    cp.ready().await;
    let olga = accepted(&pki, cp.api_addr, &issuer.token("olga", &["ops"])).await;
    olga.admin
        .clone()
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap();
    let erin = accepted(&pki, cp.api_addr, &issuer.token("erin", &[])).await;
    let e = erin
        .admin
        .clone()
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let log = cp.log();
    assert!(log.contains("OIDC signing keys loaded"), "{log}");
    assert!(!log.contains(&issuer.token("erin", &[])[..40]));
}
