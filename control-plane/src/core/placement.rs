//! Placement: which online agent takes a new session.

use std::collections::HashMap;

use super::model::Selector;
use super::roster::OnlineAgent;
use super::store::Slot;

/// Picks the least-loaded non-draining agent that matches `sel` and has a
/// free session slot, as the slot to take. `used` may be stale (other creates
/// run at the same time): the store re-checks the slot when it writes. On
/// failure, says why in words a user understands.
pub fn pick<'a>(
    sel: &Selector,
    online: impl IntoIterator<Item = &'a OnlineAgent>,
    used: &HashMap<String, u32>,
) -> Result<Slot, String> {
    let mut connected = 0;
    let matching: Vec<&OnlineAgent> = online
        .into_iter()
        .inspect(|_| connected += 1)
        .filter(|a| !a.draining)
        .filter(|a| sel.platform.is_empty() || a.hello.platform == sel.platform)
        .filter(|a| sel.region.is_empty() || a.hello.region == sel.region)
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
    let load = |a: &OnlineAgent| -> Option<f64> {
        let n = used.get(&a.hello.id).copied().unwrap_or(0);
        match a.hello.capacity.max_sessions {
            0 => Some(n as f64 / 1e9),
            max if n < max => Some(n as f64 / max as f64),
            _ => None,
        }
    };
    matching
        .iter()
        .filter_map(|a| load(a).map(|l| (l, a)))
        .min_by(|x, y| {
            x.0.total_cmp(&y.0)
                .then_with(|| x.1.hello.id.cmp(&y.1.hello.id))
        })
        .map(|(_, a)| Slot {
            agent: a.hello.id.clone(),
            max_sessions: a.hello.capacity.max_sessions,
        })
        .ok_or_else(|| format!("all {} matching agents are at max_sessions", matching.len()))
}
