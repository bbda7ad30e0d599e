//! The checks that make a run fail: every accepted command applied exactly
//! once (the simulated agents count first deliveries; re-deliveries they
//! recognise are counted apart), and the sessions left are the ones expected.

use std::time::Duration;

use anyhow::bail;

use super::api::Api;
use super::children::AgentsChild;

/// `issued` commands were accepted by the API; `left` sessions should remain.
/// Returns how many deliveries the agents recognised as duplicates.
pub async fn commands(
    agents: &mut AgentsChild,
    api: &Api,
    issued: u64,
    left: usize,
) -> anyhow::Result<u64> {
    match agents
        .wait_until(
            "every accepted command to be applied",
            Duration::from_secs(30),
            |c| c.applied >= issued,
        )
        .await
    {
        Ok(_) => {}
        Err(e) => bail!("LOST commands: {issued} accepted, fewer applied: {e}"),
    }
    // Anything applied late would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c2 = agents.counts().await?;
    if c2.applied > issued {
        bail!(
            "DUPLICATED commands: {issued} accepted, {} applied by the agents",
            c2.applied
        );
    }
    let sessions = api.all_sessions().await?;
    if sessions.len() != left {
        let names: Vec<_> = sessions.iter().take(5).map(|s| s.name.as_str()).collect();
        bail!(
            "LOST commands: expected {left} sessions left, found {} (e.g. {names:?})",
            sessions.len()
        );
    }
    Ok(c2.duplicates)
}
