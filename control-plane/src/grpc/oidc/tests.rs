//! Claim checks and signature checks on tokens signed here, and arbitrary
//! bearers through the interceptor: all without a network.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use super::jwt::{self, ClaimRules, KeySet, Reject};
use super::{Oidc, OidcConfig};
use crate::grpc::auth::{Authenticator, Tokens};

const ISS: &str = "https://idp.example";
const AUD: &str = "streamspace";
const NOW: i64 = 1_900_000_000;

fn rules() -> ClaimRules {
    ClaimRules {
        issuer: ISS.into(),
        audience: AUD.into(),
        username_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        admin_group: Some("ops".into()),
        clock_skew_secs: 60,
    }
}

fn claims(v: Value) -> serde_json::Map<String, Value> {
    let mut base = json!({
        "iss": ISS, "aud": AUD, "exp": NOW + 300, "preferred_username": "alice"
    });
    for (k, val) in v.as_object().unwrap() {
        if val.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = val.clone();
        }
    }
    base.as_object().unwrap().clone()
}

fn check(v: Value) -> Result<crate::core::Caller, Reject> {
    jwt::caller(&claims(v), &rules(), NOW)
}

#[test]
fn time_claims_are_checked_with_bounded_skew() {
    assert!(check(json!({})).is_ok());
    // Expired 59 s ago: within the skew; 60 s ago: not.
    assert!(check(json!({"exp": NOW - 59})).is_ok());
    let e = check(json!({"exp": NOW - 60})).unwrap_err();
    assert!(matches!(e, Reject::Expired { .. }), "{e}");
    assert!(e.to_string().starts_with("token expired"), "{e}");
    assert!(check(json!({"nbf": NOW + 60})).is_ok());
    let e = check(json!({"nbf": NOW + 61})).unwrap_err();
    assert!(e.to_string().starts_with("token not yet valid"), "{e}");
    // exp is required; a time claim of the wrong type is never "absent".
    let e = check(json!({"exp": null})).unwrap_err();
    assert_eq!(e.to_string(), "malformed token: claim exp is required");
    for bad in [json!({"exp": "never"}), json!({"nbf": "99999999999"})] {
        let e = check(bad).unwrap_err();
        assert!(matches!(e, Reject::Malformed(_)), "{e}");
    }
}

#[test]
fn issuer_and_audience_must_match() {
    let e = check(json!({"iss": "https://evil.example"})).unwrap_err();
    assert!(e.to_string().starts_with("wrong issuer: expected"), "{e}");
    let e = check(json!({"aud": "other"})).unwrap_err();
    assert!(e.to_string().starts_with("wrong audience"), "{e}");
    assert!(check(json!({"aud": ["other", AUD]})).is_ok());
    let e = check(json!({"aud": ["a", "b"]})).unwrap_err();
    assert!(e.to_string().contains("and 1 more"), "{e}");
    assert!(matches!(
        check(json!({"aud": [1]})).unwrap_err(),
        Reject::Malformed(_)
    ));
    assert!(matches!(
        check(json!({"iss": null})).unwrap_err(),
        Reject::Malformed(_)
    ));
}

#[test]
fn the_user_name_claim_is_required_and_checked() {
    let e = check(json!({"preferred_username": null, "sub": "abc"})).unwrap_err();
    assert!(e.to_string().contains("no fallback"), "{e}");
    for bad in ["..", "", "a/b"] {
        let e = check(json!({ "preferred_username": bad })).unwrap_err();
        assert!(
            e.to_string().starts_with("claim \"preferred_username\""),
            "{e}"
        );
    }
    let e = check(json!({"preferred_username": 7})).unwrap_err();
    assert!(e.to_string().contains("not a string"), "{e}");
}

#[test]
fn the_admin_group_makes_an_admin() {
    assert!(!check(json!({})).unwrap().admin);
    assert!(!check(json!({"groups": ["dev"]})).unwrap().admin);
    assert!(check(json!({"groups": ["dev", "ops"]})).unwrap().admin);
    assert!(check(json!({"groups": "ops"})).unwrap().admin);
    let mut r = rules();
    r.admin_group = None;
    let c = jwt::caller(&claims(json!({"groups": ["ops"]})), &r, NOW).unwrap();
    assert!(!c.admin && c.user == "alice");
}

/// An ES256 key, its JWKS entry, and a signer.
struct Signer {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self {
            pair,
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
               "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])})
    }

    fn sign(&self, header: Value, claims: &Value) -> String {
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

    fn token(&self, claims: &Value) -> String {
        self.sign(json!({"alg": "ES256", "kid": self.kid}), claims)
    }
}

fn keys(signers: &[&Signer]) -> KeySet {
    let jwks: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    KeySet::parse(&json!({ "keys": jwks })).unwrap()
}

#[test]
fn signatures_are_verified_with_the_key_of_the_kid() {
    let (a, b) = (Signer::new("a"), Signer::new("b"));
    let set = keys(&[&a, &b]);
    let body = json!({"sub": "x"});
    assert_eq!(jwt::verify(&a.token(&body), &set).unwrap()["sub"], "x");
    // b's kid on a's signature.
    let forged = a.sign(json!({"alg": "ES256", "kid": "b"}), &body);
    assert_eq!(jwt::verify(&forged, &set), Err(Reject::BadSignature));
    // The payload changed after signing.
    let t = a.token(&body);
    let mut parts: Vec<&str> = t.split('.').collect();
    let other = B64.encode(json!({"sub": "root"}).to_string());
    parts[1] = &other;
    assert_eq!(
        jwt::verify(&parts.join("."), &set),
        Err(Reject::BadSignature)
    );
    let e = jwt::verify(&Signer::new("c").token(&body), &set).unwrap_err();
    assert_eq!(e.to_string(), "unknown signing key (kid \"c\")");
    // No kid: fine while exactly one key fits, unknown with two.
    let no_kid = a.sign(json!({"alg": "ES256"}), &body);
    assert!(jwt::verify(&no_kid, &keys(&[&a])).is_ok());
    assert!(matches!(
        jwt::verify(&no_kid, &set),
        Err(Reject::UnknownKey(_))
    ));
}

#[test]
fn only_asymmetric_algorithms_are_allowed() {
    let a = Signer::new("a");
    let set = keys(&[&a]);
    for alg in ["none", "HS256", "HS512", "ES512"] {
        let t = a.sign(json!({"alg": alg, "kid": "a"}), &json!({}));
        let e = jwt::verify(&t, &set).unwrap_err();
        assert!(matches!(e, Reject::AlgNotAllowed(_)), "{alg}: {e}");
        assert!(e.to_string().contains(alg), "{e}");
    }
    // An RSA-typed algorithm never selects an EC key.
    let t = a.sign(json!({"alg": "RS256", "kid": "a"}), &json!({}));
    assert!(matches!(jwt::verify(&t, &set), Err(Reject::UnknownKey(_))));
    // Unsigned token with an empty signature.
    let t = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode("{}"));
    assert!(matches!(
        jwt::verify(&t, &set),
        Err(Reject::AlgNotAllowed(_))
    ));
}

#[test]
fn jwks_skip_keys_they_cannot_use() {
    let a = Signer::new("a");
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "HS256", "kid": "r"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-256", "use": "enc", "x": "AA", "y": "AA"},
        a.jwk(),
    ]});
    assert_eq!(KeySet::parse(&doc).unwrap().keys.len(), 1);
    let e = KeySet::parse(&json!({"keys": [{"kty": "oct", "k": "eA"}]})).unwrap_err();
    assert!(e.starts_with("no usable signing key"), "{e}");
    assert!(KeySet::parse(&json!({"nope": 1})).is_err());
    let e = KeySet::parse(&json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}))
        .unwrap_err();
    assert!(e.contains("32 bytes"), "{e}");
}

fn authenticator(signer: &Signer) -> Authenticator {
    let mut cfg = OidcConfig::new(ISS, AUD);
    cfg.admin_group = Some("ops".into());
    let oidc = Oidc::with_keys(&cfg, keys(&[signer]));
    let tokens = Tokens::parse("static-token-0123456789,carol,user\n").unwrap();
    Authenticator::new(tokens, Some(oidc))
}

fn call(auth: &Authenticator, bearer: &str) -> Result<crate::core::Caller, tonic::Status> {
    let mut req = tonic::Request::new(());
    let value = format!("Bearer {bearer}")
        .parse()
        .map_err(|_| tonic::Status::unauthenticated("not ASCII"))?;
    req.metadata_mut().insert("authorization", value);
    auth.authenticate(req).map(|r| {
        r.extensions()
            .get::<crate::core::Caller>()
            .cloned()
            .unwrap()
    })
}

#[test]
fn static_tokens_and_jwts_work_side_by_side() {
    let a = Signer::new("a");
    let auth = authenticator(&a);
    assert_eq!(
        call(&auth, "static-token-0123456789").unwrap().user,
        "carol"
    );
    let t = a.token(&json!({
        "iss": ISS, "aud": AUD, "exp": jwt_now() + 60,
        "preferred_username": "dave", "groups": ["ops"]
    }));
    let c = call(&auth, &t).unwrap();
    assert!(c.user == "dave" && c.admin);
    let e = call(&auth, "not-a-known-token").unwrap_err();
    assert_eq!(e.message(), "authorization: unknown bearer token");
    let expired =
        a.token(&json!({"iss": ISS, "aud": AUD, "exp": 1000, "preferred_username": "dave"}));
    let e = call(&auth, &expired).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(
        e.message().starts_with("authorization: token expired"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains(&expired));
}

fn jwt_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A part of a JWT: base64url of some JSON or of arbitrary bytes.
fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,40}",
        any::<Vec<u8>>().prop_map(|b| B64.encode(b)),
        (
            prop::sample::select(vec!["none", "HS256", "ES256", "RS256", "EdDSA", ""]),
            proptest::option::of("[a-z]{0,8}")
        )
            .prop_map(|(alg, kid)| B64.encode(json!({"alg": alg, "kid": kid}).to_string())),
        any::<i64>().prop_map(|n| B64.encode(
            json!({"iss": ISS, "aud": AUD, "exp": n, "preferred_username": "x"}).to_string()
        )),
    ]
}

proptest! {
    /// Whatever the bearer, the answer is UNAUTHENTICATED with a message of
    /// bounded length that does not repeat the bearer.
    #[test]
    fn arbitrary_bearers_are_refused_without_echo(
        bearer in prop_oneof![
            "eyJ[ -~]{0,600}",
            (part(), part(), part()).prop_map(|(h, p, s)| format!("eyJ{h}.{p}.{s}")),
            (part(), part(), part()).prop_map(|(h, p, s)| format!("{h}.{p}.{s}")),
            "\\PC{0,200}",
        ]
    ) {
        let auth = authenticator(&Signer::new("a"));
        let e = call(&auth, &bearer).unwrap_err();
        prop_assert_eq!(e.code(), tonic::Code::Unauthenticated);
        prop_assert!(e.message().len() <= 400, "{} bytes: {}", e.message().len(), e.message());
        let trimmed = bearer.trim();
        if trimmed.len() >= 24 {
            prop_assert!(!e.message().contains(trimmed), "{}", e.message());
        }
    }
}
