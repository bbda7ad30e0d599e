//! Users from an OpenID Connect identity provider: a bearer that is a JWT
//! signed by the issuer's keys becomes a [`Caller`] named by one of its
//! claims, an admin if its groups claim holds the admin group.
//!
//! The tonic interceptor is synchronous, so verification never waits on the
//! network: tokens are checked against the key set in memory, and a
//! background task keeps that set fresh. The task fetches discovery and
//! JWKS at start, again at least every `max_key_age` (so a key the issuer
//! dropped stops working), and sooner when a token names a `kid` it does not
//! know — key rotation — but never twice within `min_refresh`, so tokens
//! with made-up kids cannot turn the control plane into a load generator
//! for the issuer. Such a token fails at once with "unknown signing key ...
//! refreshing keys; retry"; the retry succeeds once the refresh is in.
//! A failed fetch keeps the keys in force and is retried after
//! `min_refresh`; an issuer that is down at start does not stop the control
//! plane (static tokens keep working), OIDC callers are told the keys are
//! not loaded yet.
//!
//! # Layout
//! - `jwt.rs`: pure functions: JWKS parsing, signature and claim checks.
//! - `fetch.rs`: discovery and JWKS over HTTPS (hyper + rustls).
//! - `tests.rs`: claim checks and arbitrary bearers, without a network.

pub mod fetch;
pub mod jwt;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::jwt::{ClaimRules, KeySet, Reject};
use crate::core::Caller;

/// A setting that cannot work (bad CA bundle, issuer not https).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Config(String),
}

/// Where the identity provider is and how its tokens map to callers.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL exactly as tokens carry it in `iss` (https://).
    pub issuer: String,
    /// The `aud` tokens must carry (the client id the IdP issues them for).
    pub audience: String,
    /// The claim holding the user name; a token without it is refused.
    pub username_claim: String,
    /// The claim holding the caller's groups (a list of strings, or one).
    pub groups_claim: String,
    /// Callers in this group are admins; None = none are, by group.
    pub admin_group: Option<String>,
    /// PEM bundle trusted for the issuer's HTTPS; None = the system's roots.
    pub ca_pem: Option<String>,
    /// Tolerance for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Least time between two key fetches.
    pub min_refresh: Duration,
    /// Keys are fetched again at least this often.
    pub max_key_age: Duration,
}

impl OidcConfig {
    /// The defaults of `serve`'s flags for `issuer` and `audience`.
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            admin_group: None,
            ca_pem: None,
            clock_skew: Duration::from_secs(60),
            min_refresh: Duration::from_secs(10),
            max_key_age: Duration::from_secs(300),
        }
    }

    fn rules(&self) -> ClaimRules {
        ClaimRules {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            username_claim: self.username_claim.clone(),
            groups_claim: self.groups_claim.clone(),
            admin_group: self.admin_group.clone(),
            clock_skew_secs: i64::try_from(self.clock_skew.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// The verifier the interceptor calls; clones share one key set.
#[derive(Clone)]
pub struct Oidc(Arc<Inner>);

struct Inner {
    rules: ClaimRules,
    /// None until the first fetch succeeds.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Why the last fetch failed, shown to callers while no keys are loaded.
    last_error: RwLock<Option<String>>,
    /// Asks the refresher for a fetch (it keeps one permit while busy).
    wake: Notify,
}

/// Longest fetch error kept for callers and logs.
const MAX_ERROR: usize = 300;

fn bounded(mut s: String) -> String {
    if s.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

impl Oidc {
    /// Checks the settings and starts the refresher, which runs until
    /// `stop`. Must be called inside a Tokio runtime.
    pub fn start(
        cfg: &OidcConfig,
        stop: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), OidcError> {
        if !cfg.issuer.starts_with("https://") {
            return Err(OidcError::Config(format!(
                "--oidc-issuer: must be an https:// URL, got {}",
                crate::core::validate::shown(&cfg.issuer)
            )));
        }
        for (flag, v) in [
            ("--oidc-audience", &cfg.audience),
            ("--oidc-username-claim", &cfg.username_claim),
            ("--oidc-groups-claim", &cfg.groups_claim),
        ] {
            if v.trim().is_empty() {
                return Err(OidcError::Config(format!("{flag}: must not be empty")));
            }
        }
        let fetcher = fetch::Fetcher::new(&cfg.issuer, cfg.ca_pem.as_deref())?;
        let oidc = Self::new(cfg, None);
        let task = tokio::spawn(refresh(
            oidc.0.clone(),
            fetcher,
            cfg.issuer.clone(),
            cfg.min_refresh,
            cfg.max_key_age.max(cfg.min_refresh),
            stop,
        ));
        Ok((oidc, task))
    }

    fn new(cfg: &OidcConfig, keys: Option<KeySet>) -> Self {
        Self(Arc::new(Inner {
            rules: cfg.rules(),
            keys: RwLock::new(keys.map(Arc::new)),
            last_error: RwLock::new(None),
            wake: Notify::new(),
        }))
    }

    /// A verifier with a fixed key set and no refresher (for tests).
    pub fn with_keys(cfg: &OidcConfig, keys: KeySet) -> Self {
        Self::new(cfg, Some(keys))
    }

    /// Verifies `bearer` now; the error is a message for the caller.
    pub fn authenticate(&self, bearer: &str) -> Result<Caller, String> {
        let keys = self
            .0
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(keys) = keys else {
            self.0.wake.notify_one();
            let why = self
                .0
                .last_error
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "first fetch in progress".into());
            return Err(format!(
                "the identity provider's signing keys are not loaded yet ({why}); retry"
            ));
        };
        let claims = match jwt::verify(bearer, &keys) {
            Ok(c) => c,
            Err(Reject::UnknownKey(kid)) => {
                self.0.wake.notify_one();
                return Err(format!(
                    "unknown signing key (kid {kid}), refreshing keys; retry"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        jwt::caller(&claims, &self.0.rules, now).map_err(|e| e.to_string())
    }
}

/// Fetches keys now, then whenever asked or `max_age` passed, never
/// twice within `min_gap`, until `stop`.
async fn refresh(
    inner: Arc<Inner>,
    fetcher: fetch::Fetcher,
    issuer: String,
    min_gap: Duration,
    max_age: Duration,
    stop: CancellationToken,
) {
    loop {
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            r = fetcher.keys() => match r {
                Ok(keys) => {
                    info!(%issuer, kids = ?jwt::kids(&keys), "OIDC signing keys loaded");
                    *inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
                    *inner.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
                    true
                }
                Err(e) => {
                    let e = bounded(e);
                    warn!(%issuer, error = %e, "fetching OIDC signing keys failed; keeping the keys in force");
                    *inner.last_error.write().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    false
                }
            },
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(min_gap) => {}
        }
        if !ok {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(max_age - min_gap) => {}
        }
    }
}

#[cfg(test)]
mod tests;
