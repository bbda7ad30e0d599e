//! Bearer-token authentication for the API listener. The token file has one
//! `token,user,role[,roles]` line per caller (role `admin` or `user`; the
//! optional fourth field lists more roles, `;`-separated, for role quotas);
//! `#` starts a comment. The interceptor puts the `Caller` into the request extensions.
//!
//! With OIDC on ([`Authenticator`]), a bearer that is not a known static
//! token and has the shape of a JWT is verified against the identity
//! provider's keys instead (see [`crate::grpc::oidc`]).
//!
//! The file is watched while the server runs, so revoking a token does not
//! need a restart: a change is applied once two reads a second apart agree
//! (a file caught half-written is not applied), and a file that no longer
//! parses leaves the tokens in force unchanged and logs the offending line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic::{Request, Status};
use tracing::{error, info, warn};

use crate::core::Caller;
use crate::grpc::oidc::Oidc;
use crate::grpc::oidc::jwt::looks_like_jwt;

type Map = HashMap<String, Caller>;

/// The callers the API accepts. Clones share one table, so a reload through
/// any clone (or the file watcher) is seen by all of them.
#[derive(Clone, Default)]
pub struct Tokens(Arc<RwLock<Arc<Map>>>);

impl fmt::Debug for Tokens {
    // Never print the tokens themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("callers", &self.len())
            .finish()
    }
}

fn parse_map(text: &str) -> Result<Map, String> {
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        let (token, user, role, extra) = match parts[..] {
            [t, u, r] => (t, u, r, ""),
            [t, u, r, x] => (t, u, r, x),
            _ => {
                return Err(format!(
                    "line {}: expected token,user,role[,roles], found {} fields",
                    i + 1,
                    parts.len()
                ));
            }
        };
        if token.len() < 16 {
            return Err(format!(
                "line {}: token must be at least 16 characters",
                i + 1
            ));
        }
        crate::core::validate::user_name("user", user)
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        let admin = match role {
            "admin" => true,
            "user" => false,
            r => {
                return Err(format!(
                    "line {}: role must be admin or user, got {}",
                    i + 1,
                    crate::core::validate::shown(r)
                ));
            }
        };
        let mut roles = vec![role.to_string()];
        for r in extra.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            crate::core::quota::role_name("roles", r)
                .map_err(|e| format!("line {}: {e}", i + 1))?;
            roles.push(r.to_string());
        }
        map.insert(
            token.to_string(),
            Caller {
                user: user.to_string(),
                admin,
                roles,
            },
        );
    }
    Ok(map)
}

impl Tokens {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Self(Arc::new(RwLock::new(Arc::new(parse_map(text)?)))))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Loads `path` and keeps watching it (every `every`) until the returned
    /// watcher is dropped. Must be called inside a Tokio runtime.
    pub fn watch_file(path: &Path, every: Duration) -> Result<(Self, TokensWatcher), String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| format!("{}: expected UTF-8 text: {e}", path.display()))?;
        let tokens = Self::parse(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let task = tokio::spawn(watch(tokens.clone(), path.to_path_buf(), every, bytes));
        Ok((tokens, TokensWatcher(task)))
    }

    /// Replaces every token with those in `text`; on an error nothing
    /// changes. Returns the number of callers now accepted.
    pub fn replace(&self, text: &str) -> Result<usize, String> {
        let map = Arc::new(parse_map(text)?);
        let n = map.len();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(n)
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Map> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The interceptor for static tokens only.
    #[allow(clippy::result_large_err)]
    pub fn authenticate(&self, req: Request<()>) -> Result<Request<()>, Status> {
        Authenticator::new(self.clone(), None).authenticate(req)
    }

    fn get(&self, token: &str) -> Option<Caller> {
        self.current().get(token).cloned()
    }
}

/// The API listener's interceptor: static tokens first, then (if on) OIDC.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Tokens,
    oidc: Option<Oidc>,
}

impl Authenticator {
    pub fn new(tokens: Tokens, oidc: Option<Oidc>) -> Self {
        Self { tokens, oidc }
    }

    /// `authorization: Bearer <token>` -> `Caller` in the extensions.
    #[allow(clippy::result_large_err)]
    pub fn authenticate(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "authorization: missing; send \"authorization: Bearer <token>\"",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?
            .trim();
        let caller = match (self.tokens.get(token), &self.oidc) {
            (Some(caller), _) => caller,
            (None, Some(oidc)) if looks_like_jwt(token) => oidc
                .authenticate(token)
                .map_err(|e| Status::unauthenticated(format!("authorization: {e}")))?,
            (None, _) => {
                return Err(Status::unauthenticated(
                    "authorization: unknown bearer token",
                ));
            }
        };
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// Stops watching the tokens file when dropped.
pub struct TokensWatcher(JoinHandle<()>);

impl Drop for TokensWatcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Re-reads `path` every `every`; `applied` is the content in force.
async fn watch(tokens: Tokens, path: PathBuf, every: Duration, mut applied: Vec<u8>) {
    let file = path.display().to_string();
    // A changed content seen once; applied when the next read agrees.
    let mut candidate: Option<Vec<u8>> = None;
    let mut unreadable = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = match tokio::fs::read(&path).await {
            Ok(b) => {
                unreadable = false;
                b
            }
            Err(e) => {
                if !unreadable {
                    warn!(%file, error = %e, "tokens file unreadable; keeping the tokens in force");
                }
                unreadable = true;
                continue;
            }
        };
        if now == applied {
            candidate = None;
            continue;
        }
        if candidate.as_ref() != Some(&now) {
            candidate = Some(now);
            continue;
        }
        candidate = None;
        let result = std::str::from_utf8(&now)
            .map_err(|e| format!("expected UTF-8 text: {e}"))
            .and_then(|text| tokens.replace(text));
        match result {
            Ok(callers) => info!(%file, callers, "tokens file reloaded"),
            Err(e) => error!(
                %file,
                error = %e,
                "tokens file no longer parses; keeping the previous tokens"
            ),
        }
        applied = now;
    }
}

/// The authenticated caller of a request (set by [`Tokens::authenticate`]).
#[allow(clippy::result_large_err)]
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa-token";
    const B: &str = "bbbbbbbbbbbbbbbb-token";

    fn who(t: &Tokens, token: &str) -> Result<Caller, tonic::Code> {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        t.authenticate(req)
            .map(|r| r.extensions().get::<Caller>().cloned().unwrap())
            .map_err(|s| s.code())
    }

    #[test]
    fn replace_swaps_all_clones_and_a_bad_text_keeps_the_old() {
        let t = Tokens::parse(&format!("{A},alice,user\n{B},bob,admin\n")).unwrap();
        let served = t.clone();
        assert_eq!(who(&served, B).unwrap().user, "bob");
        assert_eq!(t.replace(&format!("{A},alice,user\n")), Ok(1));
        assert_eq!(who(&served, B), Err(tonic::Code::Unauthenticated));
        let e = t
            .replace(&format!("{A},alice,user\n{B},bob,superuser\n"))
            .unwrap_err();
        assert!(e.starts_with("line 2: role must be admin or user"), "{e}");
        assert_eq!(who(&served, A).unwrap().user, "alice");
        assert_eq!(format!("{t:?}"), "Tokens { callers: 1 }");
    }

    #[test]
    fn errors_name_the_line_and_quote_a_bounded_prefix() {
        let e = Tokens::parse(&format!("# callers\n{A},alice,user\nshort,bob,user\n")).unwrap_err();
        assert_eq!(e, "line 3: token must be at least 16 characters");
        let e = Tokens::parse(&format!("{A},alice,{}\n", "x".repeat(10_000))).unwrap_err();
        assert!(e.len() < 160, "{e}");
        // The message names the optional fourth field since roles exist.
        let e = Tokens::parse("just-one-field\n").unwrap_err();
        assert_eq!(
            e,
            "line 1: expected token,user,role[,roles], found 1 fields"
        );
        let e = Tokens::parse(&format!("{A},alice,user,a;b,c\n")).unwrap_err();
        assert_eq!(
            e,
            "line 1: expected token,user,role[,roles], found 5 fields"
        );
    }

    /// The fourth field adds roles (for role quotas) after the base role.
    #[test]
    fn roles_follow_the_role() {
        let t = Tokens::parse(&format!("{A},alice,user, students ;gpu;\n{B},bob,admin\n")).unwrap();
        assert_eq!(who(&t, A).unwrap().roles, ["user", "students", "gpu"]);
        assert_eq!(who(&t, B).unwrap().roles, ["admin"]);
        let e = Tokens::parse(&format!("{A},alice,user,bad role\n")).unwrap_err();
        assert!(e.starts_with("line 1: roles:"), "{e}");
    }

    /// Dot names reach paths (a user's home directory); the user-name rule
    /// refuses them, and the error names the line.
    #[test]
    fn dot_user_names_are_refused() {
        for user in ["..", "."] {
            let e = Tokens::parse(&format!("{A},alice,user\n{B},{user},user\n")).unwrap_err();
            assert!(e.starts_with("line 2: user"), "{user}: {e}");
        }
    }

    #[tokio::test]
    async fn the_watcher_applies_removed_and_added_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, format!("{A},alice,user\n{B},bob,user\n")).unwrap();
        let (t, _w) = Tokens::watch_file(&path, Duration::from_millis(20)).unwrap();
        assert_eq!(t.len(), 2);
        std::fs::write(&path, format!("{A},alice,user\n")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while who(&t, B).is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "bob's token still works"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(&path, format!("{A},alice,user\n{B},carol,admin\n")).unwrap();
        while who(&t, B).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "carol's token never worked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(who(&t, B).unwrap().admin);
    }
}
