//! Bearer-token authentication for the API listener. The token file has one
//! `token,user,role` line per caller (role `admin` or `user`); `#` starts a
//! comment. The interceptor puts the `Caller` into the request extensions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

use crate::core::Caller;

#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<HashMap<String, Caller>>);

impl Tokens {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split(',').map(str::trim).collect();
            let [token, user, role] = parts[..] else {
                return Err(format!("line {}: expected token,user,role", i + 1));
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
                        "line {}: role must be admin or user, got {r:?}",
                        i + 1
                    ));
                }
            };
            map.insert(
                token.to_string(),
                Caller {
                    user: user.to_string(),
                    admin,
                },
            );
        }
        Ok(Self(Arc::new(map)))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The interceptor: `authorization: Bearer <token>` -> `Caller`.
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
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?;
        let caller = self
            .0
            .get(token.trim())
            .cloned()
            .ok_or_else(|| Status::unauthenticated("authorization: unknown bearer token"))?;
        req.extensions_mut().insert(caller);
        Ok(req)
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
