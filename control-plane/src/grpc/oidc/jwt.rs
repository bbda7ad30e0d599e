//! JSON Web Tokens checked against a JSON Web Key Set, as pure functions:
//! split and decode a compact JWS, pick the key by `kid`, verify the
//! signature with ring (the one crypto library of the control plane), then
//! check the claims and map them to a [`Caller`].
//!
//! Only asymmetric algorithms are accepted (RS*, PS*, ES256, ES384, EdDSA):
//! `none` and the HMAC family are refused before any key is looked at, and a
//! key is only used for the algorithms of its own type (an RSA key never
//! verifies an ES256 token), so a public key can never act as an HMAC secret.
//! Claims are parsed strictly: a time claim that is not a number, or an
//! audience that is neither a string nor a list of strings, is a malformed
//! token, never a claim treated as absent.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::core::Caller;
use crate::core::validate::shown;

/// Longest bearer accepted as a JWT; identity providers' tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. Messages name what failed and never contain
/// the token; values taken from it are quoted through [`shown`] (bounded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error(
        "alg not allowed: {0} (allowed: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
    )]
    AlgNotAllowed(String),
    #[error("unknown signing key (kid {0})")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired (exp {exp}, now {now}, clock skew {skew}s)")]
    Expired { exp: i64, now: i64, skew: i64 },
    #[error("token not yet valid (nbf {nbf}, now {now}, clock skew {skew}s)")]
    NotYetValid { nbf: i64, now: i64, skew: i64 },
    #[error("wrong issuer: expected {expected}, got {got}")]
    WrongIssuer { expected: String, got: String },
    #[error("wrong audience: expected {expected}, got {got}")]
    WrongAudience { expected: String, got: String },
    #[error("{0}")]
    User(String),
}

fn malformed(what: impl Into<String>) -> Reject {
    Reject::Malformed(what.into())
}

/// A signature algorithm this verifier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Result<Self, Reject> {
        Ok(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            other => return Err(Reject::AlgNotAllowed(shown(other))),
        })
    }
}

/// One verification key from a JWKS, already decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 || x || y) on P-256 or P-384.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`, if it names one: then only that algorithm.
    pub alg: Option<Alg>,
    pub key: Key,
}

impl Jwk {
    fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (
                Key::Rsa { .. },
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (Key::Ec { p384: false, .. }, Alg::Es256)
                | (Key::Ec { p384: true, .. }, Alg::Es384)
                | (Key::Ed25519 { .. }, Alg::EdDsa)
        )
    }

    fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let ok = match &self.key {
            Key::Rsa { n, e } => {
                let params: &sig::RsaParameters = match alg {
                    Alg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
                    Alg::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            Key::Ec { p384, point } => {
                let algorithm = if *p384 {
                    &sig::ECDSA_P384_SHA384_FIXED
                } else {
                    &sig::ECDSA_P256_SHA256_FIXED
                };
                UnparsedPublicKey::new(algorithm, point).verify(message, signature)
            }
            Key::Ed25519 { x } => {
                UnparsedPublicKey::new(&sig::ED25519, x).verify(message, signature)
            }
        };
        ok.is_ok()
    }
}

/// The keys of one JWKS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

fn b64_field(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("field {name} is missing or not a string"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("field {name} is not base64url"))
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that are not for
    /// signing or of a type this verifier does not use (`oct`, other curves)
    /// are skipped; a set with no usable key at all is an error.
    pub fn parse(doc: &Value) -> Result<Self, String> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("expected a JSON object with a \"keys\" array")?;
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let Some(obj) = k.as_object() else {
                return Err(format!("keys[{i}]: expected a JSON object"));
            };
            if obj
                .get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let key = match obj.get("kty").and_then(Value::as_str) {
                Some("RSA") => Key::Rsa {
                    n: b64_field(obj, "n").map_err(|e| format!("keys[{i}]: {e}"))?,
                    e: b64_field(obj, "e").map_err(|e| format!("keys[{i}]: {e}"))?,
                },
                Some("EC") => {
                    let (p384, len) = match obj.get("crv").and_then(Value::as_str) {
                        Some("P-256") => (false, 32),
                        Some("P-384") => (true, 48),
                        _ => continue,
                    };
                    let x = b64_field(obj, "x").map_err(|e| format!("keys[{i}]: {e}"))?;
                    let y = b64_field(obj, "y").map_err(|e| format!("keys[{i}]: {e}"))?;
                    if x.len() != len || y.len() != len {
                        return Err(format!("keys[{i}]: x and y must be {len} bytes each"));
                    }
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    Key::Ec { p384, point }
                }
                Some("OKP") if obj.get("crv").and_then(Value::as_str) == Some("Ed25519") => {
                    Key::Ed25519 {
                        x: b64_field(obj, "x").map_err(|e| format!("keys[{i}]: {e}"))?,
                    }
                }
                _ => continue,
            };
            // A key with an algorithm we refuse (HS256 on an RSA key, say)
            // is skipped rather than used for another algorithm.
            let alg = match obj.get("alg").and_then(Value::as_str) {
                Some(a) => match Alg::parse(a) {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
                None => None,
            };
            let kid = obj.get("kid").and_then(Value::as_str).map(str::to_string);
            out.push(Jwk { kid, alg, key });
        }
        if out.is_empty() {
            return Err("no usable signing key (RSA, EC P-256/P-384 or Ed25519)".into());
        }
        Ok(Self { keys: out })
    }

    /// The key for a token's `kid` and algorithm. Without a `kid`, the one
    /// key that fits the algorithm, if there is exactly one.
    fn find(&self, kid: Option<&str>, alg: Alg) -> Option<&Jwk> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.fits(alg)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                let first = fitting.next()?;
                fitting.next().is_none().then_some(first)
            }
        }
    }
}

/// Whether a bearer has the shape of a compact JWT (three dot-separated
/// parts, the first starting like a base64url JSON object); anything else
/// is treated as an unknown static token.
pub fn looks_like_jwt(bearer: &str) -> bool {
    bearer.starts_with("eyJ") && bearer.split('.').count() == 3
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, Reject> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(malformed(format!("{what} is not a JSON object"))),
    }
}

/// Checks the signature of `token` against `keys`; returns the claims.
pub fn verify(token: &str, keys: &KeySet) -> Result<Map<String, Value>, Reject> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three base64url parts separated by '.'"));
    };
    let header = decode_json(h, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => Alg::parse(a)?,
        _ => return Err(malformed("header has no alg string")),
    };
    if header.contains_key("crit") {
        return Err(malformed("header has crit extensions, none are supported"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(malformed("header kid is not a string")),
    };
    let key = keys
        .find(kid, alg)
        .ok_or_else(|| Reject::UnknownKey(kid.map(shown).unwrap_or_else(|| "none".into())))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signed = &token[..h.len() + 1 + p.len()];
    if !key.verify(alg, signed.as_bytes(), &signature) {
        return Err(Reject::BadSignature);
    }
    decode_json(p, "payload")
}

/// What the claims must say, and how they map to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    pub issuer: String,
    pub audience: String,
    pub username_claim: String,
    pub groups_claim: String,
    /// Members of this group are admins; None = no caller is an admin by group.
    pub admin_group: Option<String>,
    /// Tolerance for `exp` and `nbf`, in seconds.
    pub clock_skew_secs: i64,
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Reject> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| malformed(format!("claim {name} is not a number of seconds"))),
        Some(_) => Err(malformed(format!("claim {name} must be a number"))),
    }
}

/// Checks `iss`, `aud`, `exp` (required) and `nbf` (if present) at `now`
/// (seconds since the epoch), then reads the user name and groups.
pub fn caller(claims: &Map<String, Value>, rules: &ClaimRules, now: i64) -> Result<Caller, Reject> {
    let skew = rules.clock_skew_secs;
    let exp = time_claim(claims, "exp")?.ok_or_else(|| malformed("claim exp is required"))?;
    if now >= exp.saturating_add(skew) {
        return Err(Reject::Expired { exp, now, skew });
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && now.saturating_add(skew) < nbf
    {
        return Err(Reject::NotYetValid { nbf, now, skew });
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(iss)) => {
            return Err(Reject::WrongIssuer {
                expected: shown(&rules.issuer),
                got: shown(iss),
            });
        }
        _ => return Err(malformed("claim iss is required and must be a string")),
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str())
            .collect::<Option<_>>()
            .ok_or_else(|| malformed("claim aud must be a string or a list of strings"))?,
        None => return Err(malformed("claim aud is required")),
        Some(_) => return Err(malformed("claim aud must be a string or a list of strings")),
    };
    if !audiences.contains(&rules.audience.as_str()) {
        let got = match audiences.as_slice() {
            [] => "none".to_string(),
            [one] => shown(one),
            [first, rest @ ..] => format!("{} and {} more", shown(first), rest.len()),
        };
        return Err(Reject::WrongAudience {
            expected: shown(&rules.audience),
            got,
        });
    }
    let claim = &rules.username_claim;
    let user = match claims.get(claim) {
        Some(Value::String(u)) => u,
        Some(_) => {
            return Err(Reject::User(format!(
                "claim {} is not a string",
                shown(claim)
            )));
        }
        None => {
            return Err(Reject::User(format!(
                "token has no {} claim (the user-name claim, --oidc-username-claim); there is no fallback to another claim",
                shown(claim)
            )));
        }
    };
    crate::core::validate::user_name(&format!("claim {}", shown(claim)), user)
        .map_err(|e| Reject::User(e.to_string()))?;
    let admin = match (&rules.admin_group, claims.get(&rules.groups_claim)) {
        (Some(group), Some(Value::Array(groups))) => {
            groups.iter().any(|g| g.as_str() == Some(group.as_str()))
        }
        (Some(group), Some(Value::String(g))) => g == group,
        _ => false,
    };
    // The groups are the caller's roles (for role quotas); a bounded number
    // of them, each a valid role name, the rest ignored.
    let roles = match claims.get(&rules.groups_claim) {
        Some(Value::Array(groups)) => groups.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(g)) => vec![g.as_str()],
        _ => vec![],
    };
    let roles = roles
        .into_iter()
        .filter(|r| crate::core::quota::role_name("groups", r).is_ok())
        .take(MAX_ROLES)
        .map(str::to_string)
        .collect();
    Ok(Caller {
        user: user.clone(),
        admin,
        roles,
    })
}

/// Most groups of one token taken as roles.
const MAX_ROLES: usize = 64;

/// The `kid`s of a key set, quoted (for logs: which keys a refresh brought).
pub fn kids(keys: &KeySet) -> Vec<String> {
    keys.keys
        .iter()
        .filter_map(|k| k.kid.as_deref())
        .map(shown)
        .collect()
}
