//! The outbox tools for operators: list and read durable commands, retry a
//! failed or expired one, cancel one not sent yet. Retry and cancel run as
//! transitions of the command's session, decided on the stored state by
//! [`steps::retry`] and [`steps::cancel`].

use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::model::{Command, Session};
use crate::steps;
use crate::store::{CommandFilter, SessionWrite};
use crate::validate;

/// Most commands one list returns.
pub const MAX_PAGE: u32 = 1000;

impl Lifecycle {
    /// Commands matching `filter`, newest first (at most [`MAX_PAGE`]).
    pub async fn list_commands(
        &self,
        mut filter: CommandFilter,
    ) -> Result<Vec<Command>, LifecycleError> {
        if let Some(s) = &filter.session {
            validate::dns_label("session", s, validate::MAX_SESSION_NAME)?;
        }
        if let Some(a) = &filter.agent {
            validate::dns_label("agent_id", a, validate::MAX_NAME)?;
        }
        filter.limit = match filter.limit {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        Ok(self.store().list_commands(&filter).await?)
    }

    pub async fn get_command(&self, id: &str) -> Result<Command, LifecycleError> {
        check_id(id)?;
        self.store()
            .get_command(id)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(format!("command {id} not found")))
    }

    /// Retries command `id` (see [`steps::retry`]); the session as written,
    /// and the new command unless the session waits for an agent.
    pub async fn retry_command(
        &self,
        id: &str,
        by: &str,
    ) -> Result<(Session, Option<Command>), LifecycleError> {
        let cmd = self.get_command(id).await?;
        let latest = self
            .store()
            .list_commands(&CommandFilter {
                session: Some(cmd.session.clone()),
                limit: 1,
                ..CommandFilter::default()
            })
            .await?
            .into_iter()
            .next();
        let (cfg, id, by) = (self.step_cfg(), id.to_string(), by.to_string());
        let change = self
            .transition(&cmd.session, move |s, active| {
                steps::retry(s, active, latest.as_ref(), &id, &by, cfg)
                    .map_err(LifecycleError::FailedPrecondition)
            })
            .await?;
        match change.session {
            SessionWrite::Upsert(s) => Ok((s, change.new_command)),
            _ => Err(LifecycleError::FailedPrecondition(format!(
                "command {}: its session no longer exists",
                cmd.id
            ))),
        }
    }

    /// Cancels command `id` (see [`steps::cancel`]); the command as written.
    pub async fn cancel_command(&self, id: &str, by: &str) -> Result<Command, LifecycleError> {
        let cmd = self.get_command(id).await?;
        let (cfg, id, by) = (self.step_cfg(), id.to_string(), by.to_string());
        let change = self
            .transition(&cmd.session, move |s, active| {
                steps::cancel(s, active, &id, &by, cfg).map_err(LifecycleError::FailedPrecondition)
            })
            .await?;
        Ok(change.update_command.unwrap_or(cmd))
    }
}

/// Finished commands pruned per store transaction: small, so the store's
/// writer (one on SQLite) is never held for long.
pub const PRUNE_BATCH: u32 = 500;
/// Batches one retention pass runs at most (the next pass goes on).
pub const PRUNE_BATCHES: u32 = 200;

impl Lifecycle {
    /// Wakes the streams of agents whose delayed (retry) commands are due:
    /// writing them rang no bell, since they could not be sent yet.
    pub async fn ring_due(&self) -> Result<(), LifecycleError> {
        for agent in self
            .store()
            .agents_with_due_commands(crate::model::now_ms())
            .await?
        {
            self.roster().ring(&agent);
        }
        Ok(())
    }

    /// Deletes finished commands older than `retention`, in batches of
    /// [`PRUNE_BATCH`] with a pause between them; returns how many. Active
    /// commands are never pruned, so nothing accepted is lost.
    pub async fn prune_commands(
        &self,
        retention: std::time::Duration,
    ) -> Result<u64, LifecycleError> {
        let before = crate::model::now_ms() - retention.as_millis() as i64;
        let mut total = 0;
        for _ in 0..PRUNE_BATCHES {
            let n = self.store().prune_commands(before, PRUNE_BATCH).await?;
            total += n;
            if n < u64::from(PRUNE_BATCH) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(total)
    }
}

/// Command ids are UUIDs; anything else is refused before it reaches the store.
fn check_id(id: &str) -> Result<(), LifecycleError> {
    if id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(())
    } else {
        Err(validate::invalid(
            "id",
            format!("must be a command id (a UUID), got {}", validate::shown(id)),
        )
        .into())
    }
}
