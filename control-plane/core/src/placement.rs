//! Placement: which online agent takes a new session. It works on plain
//! [`Candidate`]s, so it knows nothing of how agents are attached; the roster
//! turns its attached agents into candidates.
//!
//! A session goes to a non-draining agent that matches its selector and has
//! room for it: a free session slot, and CPU and memory for what the session
//! requests next to what the sessions placed there request already. Among
//! those, the least loaded after placing wins (load: the fullest of the
//! agent's declared limits), which spreads sessions across agents; ties go
//! to the lower id, so placement is deterministic.

use std::collections::HashMap;

use super::model::{Capacity, Selector, Usage};
use super::store::Slot;

/// What placement needs to know about one attached agent.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub platform: &'a str,
    pub region: &'a str,
    /// What the agent may hold; 0 in a field = no limit there.
    pub capacity: Capacity,
    /// What the agent reported in use in its last heartbeat (sessions with
    /// a workload, what they request).
    pub in_use: Capacity,
    /// Draining agents get no new sessions.
    pub draining: bool,
}

/// Why no agent takes a session: a condition reason and words a user
/// understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// `NoAgentAvailable` (none connected or matching) or
    /// `InsufficientResources` (matching agents, none with room).
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The fullest of an agent's declared limits once `request` is added to
/// `used`, as a fraction; `None` if it does not fit.
fn load(cap: &Capacity, used: &Usage, request: &Usage) -> Option<f64> {
    let mut worst: f64 = 0.0;
    for (limit, now, add) in [
        (u64::from(cap.max_sessions), used.sessions, 1),
        (cap.cpu_millis, used.cpu_millis, request.cpu_millis),
        (cap.memory_bytes, used.memory_bytes, request.memory_bytes),
    ] {
        if limit == 0 {
            continue;
        }
        let after = now.saturating_add(add);
        if after > limit {
            return None;
        }
        worst = worst.max(after as f64 / limit as f64);
    }
    // An agent without any limit counts as nearly empty, by its sessions.
    if *cap == Capacity::default() {
        worst = used.sessions as f64 / 1e9;
    }
    Some(worst)
}

/// Picks the agent for a session requesting `request` (its CPU and memory)
/// that matches `sel`. `used` may be stale (other creates run at the same
/// time): the store re-checks the slot when it writes.
pub fn pick<'a>(
    sel: &Selector,
    request: Usage,
    online: impl IntoIterator<Item = Candidate<'a>>,
    used: &HashMap<String, Usage>,
) -> Result<Slot, NoFit> {
    let mut connected = 0;
    let matching: Vec<Candidate<'a>> = online
        .into_iter()
        .inspect(|_| connected += 1)
        .filter(|a| !a.draining)
        .filter(|a| sel.platform.is_empty() || a.platform == sel.platform)
        .filter(|a| sel.region.is_empty() || a.region == sel.region)
        .collect();
    let none = |message: String| NoFit {
        reason: "NoAgentAvailable",
        message,
    };
    if connected == 0 {
        return Err(none("no agent is connected".into()));
    }
    if matching.is_empty() {
        return Err(none(format!(
            "no connected agent matches platform={:?} region={:?} ({connected} connected)",
            sel.platform, sel.region,
        )));
    }
    // The store's sums, or what the agent reports if that is more (workloads
    // the store does not count, e.g. started by hand).
    let used_by = |a: &Candidate| {
        let u = used.get(a.id).copied().unwrap_or_default();
        Usage {
            sessions: u.sessions.max(u64::from(a.in_use.max_sessions)),
            running: u.running,
            cpu_millis: u.cpu_millis.max(a.in_use.cpu_millis),
            memory_bytes: u.memory_bytes.max(a.in_use.memory_bytes),
        }
    };
    matching
        .iter()
        .filter_map(|a| load(&a.capacity, &used_by(a), &request).map(|l| (l, a)))
        .min_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.id.cmp(y.1.id)))
        .map(|(_, a)| Slot {
            agent: a.id.to_string(),
            capacity: a.capacity,
            request,
        })
        .ok_or_else(|| NoFit {
            reason: "InsufficientResources",
            message: shortage(&matching, &request, used_by),
        })
}

/// One resource of the shortage report: its name, how to read its limit and
/// use, what the session needs, and how to show an amount.
type Dim = (
    &'static str,
    fn(&Capacity) -> u64,
    fn(&Usage) -> u64,
    u64,
    fn(u64) -> String,
);

/// Says what is short on the matching agents: for each resource, on how
/// many agents, and the most that any of them has free.
fn shortage(
    matching: &[Candidate],
    request: &Usage,
    used_by: impl Fn(&Candidate) -> Usage,
) -> String {
    let mut parts = vec![];
    let dims: [Dim; 3] = [
        (
            "session slots",
            |c| u64::from(c.max_sessions),
            |u| u.sessions,
            1,
            |n| n.to_string(),
        ),
        (
            "cpu",
            |c| c.cpu_millis,
            |u| u.cpu_millis,
            request.cpu_millis,
            |n| format!("{n}m"),
        ),
        (
            "memory",
            |c| c.memory_bytes,
            |u| u.memory_bytes,
            request.memory_bytes,
            |n| format!("{}Mi", n >> 20),
        ),
    ];
    for (what, limit, now, need, show) in dims {
        let mut short = 0;
        let mut most_free = 0;
        for a in matching {
            let l = limit(&a.capacity);
            if l == 0 {
                continue;
            }
            let free = l.saturating_sub(now(&used_by(a)));
            most_free = most_free.max(free);
            if free < need {
                short += 1;
            }
        }
        if short > 0 {
            parts.push(format!(
                "{what} short on {short} (needs {}, most free {})",
                show(need),
                show(most_free)
            ));
        }
    }
    format!(
        "no room on the {} matching agent(s): {}",
        matching.len(),
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent(id: &'static str, sessions: u32, cpu: u64, mem_gi: u64) -> Candidate<'static> {
        Candidate {
            id,
            platform: "process",
            region: "",
            capacity: Capacity {
                max_sessions: sessions,
                cpu_millis: cpu,
                memory_bytes: mem_gi << 30,
            },
            in_use: Capacity::default(),
            draining: false,
        }
    }

    fn req(cpu: u64, mem_gi: u64) -> Usage {
        Usage {
            cpu_millis: cpu,
            memory_bytes: mem_gi << 30,
            ..Usage::default()
        }
    }

    #[test]
    fn least_loaded_fit_wins() {
        let agents = [agent("a", 10, 4000, 8), agent("b", 10, 8000, 16)];
        let mut used = HashMap::new();
        // Empty: both fit; b ends less full (0.25 vs 0.5).
        assert_eq!(
            pick(&Selector::default(), req(2000, 1), agents, &used)
                .unwrap()
                .agent,
            "b"
        );
        used.insert("b".to_string(), req(7000, 1));
        assert_eq!(
            pick(&Selector::default(), req(2000, 1), agents, &used)
                .unwrap()
                .agent,
            "a"
        );
    }

    #[test]
    fn too_big_for_all_names_what_is_short() {
        let agents = [agent("a", 10, 4000, 8), agent("b", 10, 2000, 32)];
        let e = pick(&Selector::default(), req(6000, 16), agents, &HashMap::new()).unwrap_err();
        assert_eq!(e.reason, "InsufficientResources");
        assert_eq!(
            e.message,
            "no room on the 2 matching agent(s): cpu short on 2 (needs 6000m, most free 4000m); \
             memory short on 1 (needs 16384Mi, most free 32768Mi)"
        );
        let e = pick(&Selector::default(), req(1, 1), [], &HashMap::new()).unwrap_err();
        assert_eq!(e.reason, "NoAgentAvailable");
    }

    #[test]
    fn reported_use_counts_when_it_is_more() {
        let mut a = agent("a", 10, 4000, 8);
        a.in_use.cpu_millis = 3500;
        let b = agent("b", 10, 4000, 8);
        // The store knows of nothing on either; a reports 3500m in use.
        let e = pick(&Selector::default(), req(1000, 1), [a], &HashMap::new()).unwrap_err();
        assert!(e.message.contains("most free 500m"), "{e}");
        assert_eq!(
            pick(&Selector::default(), req(1000, 1), [a, b], &HashMap::new())
                .unwrap()
                .agent,
            "b"
        );
    }

    #[test]
    fn full_slots_are_reported() {
        let agents = [agent("a", 1, 0, 0)];
        let used = HashMap::from([(
            "a".to_string(),
            Usage {
                sessions: 1,
                ..Usage::default()
            },
        )]);
        let e = pick(&Selector::default(), req(0, 0), agents, &used).unwrap_err();
        assert!(e.message.contains("session slots short on 1"), "{e}");
    }

    proptest! {
        /// Whatever the agents and their use, a pick fits the agent it
        /// names (the same rule the store re-checks), and a refusal means
        /// no matching agent fits.
        #[test]
        fn a_pick_always_fits(
            caps in proptest::collection::vec((0u32..4, 0u64..5000, 0u64..5), 1..5),
            used in proptest::collection::vec((0u64..4, 0u64..5000, 0u64..5), 5),
            r in (0u64..3000, 0u64..3),
        ) {
            const IDS: [&str; 5] = ["a0", "a1", "a2", "a3", "a4"];
            let agents: Vec<Candidate> = caps
                .iter()
                .enumerate()
                .map(|(i, (s, c, m))| agent(IDS[i], *s, *c, *m))
                .collect();
            let used: HashMap<String, Usage> = used
                .iter()
                .enumerate()
                .map(|(i, (s, c, m))| {
                    (IDS[i].to_string(), Usage { sessions: *s, running: 0, cpu_millis: *c, memory_bytes: m << 30 })
                })
                .collect();
            let request = req(r.0, r.1);
            match pick(&Selector::default(), request, agents.clone(), &used) {
                Ok(slot) => prop_assert!(slot.fits(&used[&slot.agent])),
                Err(_) => {
                    for a in &agents {
                        let slot = Slot { agent: a.id.into(), capacity: a.capacity, request };
                        prop_assert!(!slot.fits(&used[a.id]));
                    }
                }
            }
        }
    }
}
