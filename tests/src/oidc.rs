//! A real OpenID Connect issuer for tests: an HTTPS server on loopback
//! (certificate from the test PKI) serving discovery and JWKS, signing
//! ES256 tokens with keys it generates, and able to rotate them mid-test.
//! It speaks just enough HTTP/1.1 for a GET: one request per connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use streamspace_control_plane::grpc::oidc::OidcConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::TestPki;

/// The audience test tokens are issued for.
pub const AUDIENCE: &str = "streamspace-test";

/// One ES256 signing key and its `kid`.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pub kid: String,
}

impl SigningKey {
    pub fn new(kid: &str) -> Arc<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Arc::new(Self {
            pair,
            kid: kid.into(),
        })
    }

    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
               "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])})
    }

    /// A compact JWS of `claims` with this header, signed by this key
    /// whatever the header says.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    /// A token with a proper ES256 header naming this key.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

struct State {
    /// Keys published in the JWKS.
    published: Vec<Arc<SigningKey>>,
    /// The key new tokens are signed with.
    current: Arc<SigningKey>,
    jwks_fetches: usize,
}

pub struct TestIssuer {
    /// The issuer URL (https://127.0.0.1:PORT), as tokens carry it.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TestIssuer {
    pub async fn start(pki: &TestPki) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let key = SigningKey::new("key-1");
        let state = Arc::new(Mutex::new(State {
            published: vec![key.clone()],
            current: key,
            jwks_fetches: 0,
        }));
        let tls = streamspace_control_plane::tls::ServerTls::new(
            &streamspace_control_plane::tls::TlsMaterial {
                server_cert: pki.server.cert.clone(),
                server_key: pki.server.key.clone(),
                agent_ca: pki.ca.cert.clone(),
            },
        )
        .unwrap()
        .api();
        // The API listener's settings speak only h2; this server speaks HTTP/1.1.
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (st, issuer) = (state.clone(), url.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, st, issuer) = (acceptor.clone(), st.clone(), issuer.clone());
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or_default();
                    let (status, body) = match path {
                        "/.well-known/openid-configuration" => (
                            "200 OK",
                            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}),
                        ),
                        "/jwks" => {
                            let mut s = st.lock().unwrap();
                            s.jwks_fetches += 1;
                            let keys: Vec<Value> = s.published.iter().map(|k| k.jwk()).collect();
                            ("200 OK", json!({ "keys": keys }))
                        }
                        _ => ("404 Not Found", json!({})),
                    };
                    let body = body.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { url, state, task }
    }

    /// Settings for a control plane trusting this issuer (test CA), admins
    /// by group `ops`, refreshing keys at most every `min_refresh`.
    pub fn config(&self, pki: &TestPki, min_refresh: Duration) -> OidcConfig {
        let mut c = OidcConfig::new(&self.url, AUDIENCE);
        c.ca_pem = Some(pki.ca.cert.clone());
        c.admin_group = Some("ops".into());
        c.min_refresh = min_refresh;
        c
    }

    /// Claims of a valid token for `user` in `groups`, for 5 minutes.
    pub fn claims(&self, user: &str, groups: &[&str]) -> Value {
        json!({
            "iss": self.url, "aud": AUDIENCE, "sub": format!("sub-{user}"),
            "iat": now(), "exp": now() + 300,
            "preferred_username": user, "groups": groups,
        })
    }

    /// A valid token for `user`, signed with the current key.
    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        self.key().token(&self.claims(user, groups))
    }

    pub fn key(&self) -> Arc<SigningKey> {
        self.state.lock().unwrap().current.clone()
    }

    /// Signs with a new key from now on and publishes it; the old key stays
    /// in the JWKS only if `keep_old`.
    pub fn rotate(&self, kid: &str, keep_old: bool) -> Arc<SigningKey> {
        let key = SigningKey::new(kid);
        let mut s = self.state.lock().unwrap();
        if !keep_old {
            s.published.clear();
        }
        s.published.push(key.clone());
        s.current = key.clone();
        key
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.lock().unwrap().jwks_fetches
    }
}
