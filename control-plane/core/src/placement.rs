//! Placement: which online agent takes a new session. It works on plain
//! [`Candidate`]s, so it knows nothing of how agents are attached; the roster
//! turns its attached agents into candidates.

use std::collections::HashMap;

use super::model::Selector;
use super::store::Slot;

/// What placement needs to know about one attached agent.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub platform: &'a str,
    pub region: &'a str,
    /// Most sessions the agent takes; 0 = no limit.
    pub max_sessions: u32,
    /// Draining agents get no new sessions.
    pub draining: bool,
}

/// Picks the least-loaded non-draining agent that matches `sel` and has a
/// free session slot, as the slot to take. `used` may be stale (other creates
/// run at the same time): the store re-checks the slot when it writes. On
/// failure, says why in words a user understands.
pub fn pick<'a>(
    sel: &Selector,
    online: impl IntoIterator<Item = Candidate<'a>>,
    used: &HashMap<String, u32>,
) -> Result<Slot, String> {
    let mut connected = 0;
    let matching: Vec<Candidate<'a>> = online
        .into_iter()
        .inspect(|_| connected += 1)
        .filter(|a| !a.draining)
        .filter(|a| sel.platform.is_empty() || a.platform == sel.platform)
        .filter(|a| sel.region.is_empty() || a.region == sel.region)
        .collect();
    if connected == 0 {
        return Err("no agent is connected".into());
    }
    if matching.is_empty() {
        return Err(format!(
            "no connected agent matches platform={:?} region={:?} ({connected} connected)",
            sel.platform, sel.region,
        ));
    }
    let load = |a: &Candidate| -> Option<f64> {
        let n = used.get(a.id).copied().unwrap_or(0);
        match a.max_sessions {
            0 => Some(n as f64 / 1e9),
            max if n < max => Some(n as f64 / max as f64),
            _ => None,
        }
    };
    matching
        .iter()
        .filter_map(|a| load(a).map(|l| (l, a)))
        .min_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.id.cmp(y.1.id)))
        .map(|(_, a)| Slot {
            agent: a.id.to_string(),
            max_sessions: a.max_sessions,
        })
        .ok_or_else(|| format!("all {} matching agents are at max_sessions", matching.len()))
}
