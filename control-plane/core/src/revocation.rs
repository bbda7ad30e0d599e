//! The agent deny list: an operator revokes an agent id (every stream of
//! that agent) or one client certificate (by serial). A revocation is stored
//! first, so it holds across restarts and on every replica; then the streams
//! it refuses are closed, and, for an agent id, the agent's sessions are
//! released as if the agent were gone for good (`steps::released`) and
//! placed again on the agents that remain. Attach consults the list before
//! and after it registers a stream (see `streams.rs`), and the sweeper
//! closes, about once a second, streams that another replica revoked.

use tracing::{info, warn};

use super::lifecycle::{Caller, Lifecycle, LifecycleError};
use super::model::{Revocation, RevokedTarget, now_ms};
use super::steps;
use super::validate::{Invalid, invalid};

/// Longest revocation reason, in characters.
pub const MAX_REASON: usize = 256;

/// The normal form of a certificate serial: lowercase hex without leading
/// zeros or separators. Accepts upper case, `:` separators and leading zeros.
pub fn normal_serial(field: &str, raw: &str) -> Result<String, Invalid> {
    let digits: String = raw.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            field,
            format!(
                "must be a hexadecimal serial number (e.g. 4f:1a:09 or 4F1A09), got {:?}",
                super::validate::shown(raw)
            ),
        ));
    }
    let trimmed = digits.trim_start_matches('0').to_ascii_lowercase();
    if trimmed.len() > 40 {
        return Err(invalid(
            field,
            format!(
                "must be at most 20 bytes (40 hex digits), got {}",
                trimmed.len()
            ),
        ));
    }
    Ok(if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed
    })
}

/// An agent id as agent certificates carry it: 1-63 letters, digits, `-`,
/// `.` or `_`.
pub fn agent_id(field: &str, id: &str) -> Result<(), Invalid> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "must be 1-63 letters, digits, '-', '.' or '_', got {:?}",
                super::validate::shown(id)
            ),
        ))
    }
}

fn reason(field: &str, r: &str) -> Result<(), Invalid> {
    let n = r.chars().count();
    if r.trim().is_empty() {
        return Err(invalid(field, "is required (say why the agent is revoked)"));
    }
    if n > MAX_REASON {
        return Err(invalid(
            field,
            format!("must be at most {MAX_REASON} characters, got {n}"),
        ));
    }
    if r.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn admin_only(caller: &Caller) -> Result<(), LifecycleError> {
    if caller.admin {
        Ok(())
    } else {
        Err(LifecycleError::PermissionDenied(
            "only an admin may revoke agents".into(),
        ))
    }
}

/// Checks a target as a request names it (`field` is the oneof's field).
pub fn check_target(field: &str, target: RevokedTarget) -> Result<RevokedTarget, Invalid> {
    match target {
        RevokedTarget::Agent(id) => agent_id(field, &id).map(|()| RevokedTarget::Agent(id)),
        RevokedTarget::Serial(s) => normal_serial(field, &s).map(RevokedTarget::Serial),
    }
}

impl Lifecycle {
    /// Revokes `target` (already checked by [`check_target`]). Returns the
    /// revocation and how many sessions were released from the agent.
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: RevokedTarget,
        why: &str,
    ) -> Result<(Revocation, u32), LifecycleError> {
        admin_only(caller)?;
        reason("reason", why)?;
        let r = Revocation {
            target,
            reason: why.to_string(),
            revoked_by: caller.user.clone(),
            revoked_ms: now_ms(),
        };
        if let Err(e) = self.store().insert_revocation(&r).await {
            return Err(match e {
                super::store::StoreError::AlreadyExists(_) => {
                    let existing = self
                        .store()
                        .list_revocations()
                        .await?
                        .into_iter()
                        .find(|x| x.target == r.target);
                    LifecycleError::AlreadyExists(match existing {
                        Some(x) => x.to_string(),
                        None => format!("{} is revoked already", r.target),
                    })
                }
                e => e.into(),
            });
        }
        let message = r.to_string();
        let closed = self.roster().evict(&r.target, &message);
        info!(target = %r.target, by = %r.revoked_by, reason = %r.reason, closed = ?closed, "agent revoked");
        let mut released = 0;
        if let RevokedTarget::Agent(agent) = &r.target {
            for s in self.store().sessions_on_agent(agent).await? {
                let (a, why, now) = (agent.clone(), message.clone(), now_ms());
                let change = self
                    .transition(&s.name, move |s, active| {
                        Ok(steps::released(s, active, &a, &why, now))
                    })
                    .await?;
                if !change.is_empty() {
                    released += 1;
                }
            }
            if let Err(e) = self.place_unplaced().await {
                warn!(error = %e, "placing the sessions of a revoked agent");
            }
        }
        Ok((r, released))
    }

    /// Lifts the revocation of `target`; returns it.
    pub async fn unrevoke(
        &self,
        caller: &Caller,
        target: RevokedTarget,
    ) -> Result<Revocation, LifecycleError> {
        admin_only(caller)?;
        let r = self
            .store()
            .delete_revocation(&target)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(format!("{target} is not revoked")))?;
        info!(target = %r.target, by = %caller.user, "revocation lifted");
        Ok(r)
    }

    pub async fn revocations(&self, caller: &Caller) -> Result<Vec<Revocation>, LifecycleError> {
        admin_only(caller)?;
        Ok(self.store().list_revocations().await?)
    }

    /// The revocation that refuses agent `agent` presenting certificate `serial`.
    pub async fn revoked(
        &self,
        agent: &str,
        serial: &str,
    ) -> Result<Option<Revocation>, LifecycleError> {
        Ok(self.store().find_revocation(agent, serial).await?)
    }

    /// Closes attached streams that a stored revocation refuses (revoked on
    /// another replica, or while their attach was under way). Returns how
    /// many it closed.
    pub async fn enforce_revocations(&self) -> Result<usize, LifecycleError> {
        let online = self.roster().all();
        if online.is_empty() {
            return Ok(0);
        }
        let mut closed = 0;
        for r in self.store().list_revocations().await? {
            closed += self.roster().evict(&r.target, &r.to_string()).len();
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_have_one_normal_form() {
        for raw in ["4F:1A:09", "004f1a09", "4f1a09", "0:4f:1a:09"] {
            assert_eq!(normal_serial("s", raw).unwrap(), "4f1a09", "{raw}");
        }
        assert_eq!(normal_serial("s", "00").unwrap(), "0");
        let e = normal_serial("certificate_serial", "xyz").unwrap_err();
        assert_eq!(e.field, "certificate_serial");
        assert!(normal_serial("s", &"f".repeat(41)).is_err());
        assert!(normal_serial("s", "").is_err());
    }

    #[test]
    fn reasons_are_required_and_bounded() {
        assert!(reason("reason", "  ").is_err());
        assert!(reason("reason", &"x".repeat(MAX_REASON + 1)).is_err());
        assert!(reason("reason", "bad\nline").is_err());
        assert!(reason("reason", "key leaked").is_ok());
    }
}
