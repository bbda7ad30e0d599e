//! Which agents are attached right now, and the attach rules of DESIGN.md 5:
//! one active stream per agent id; a healthy stream is never kicked out by a
//! newcomer; a stream whose heartbeats stopped is replaced; a higher HA
//! fencing token replaces, a lower one is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::model::{AgentRecord, Capacity, RevokedTarget};
use super::placement::Candidate;

/// What an agent said about itself in Hello.
#[derive(Debug, Clone, Default)]
pub struct AgentHello {
    pub id: String,
    pub platform: String,
    pub region: String,
    pub capacity: Capacity,
    pub version: String,
    pub fencing_token: u64,
    /// Serial of the client certificate the stream was opened with
    /// (lowercase hex without leading zeros), for serial revocations.
    pub cert_serial: String,
    /// That certificate's notAfter (ms since the epoch; 0 = unknown), for
    /// the expiry metrics.
    pub cert_expiry_ms: i64,
}

/// An attached agent.
#[derive(Debug, Clone)]
pub struct OnlineAgent {
    pub hello: AgentHello,
    /// Identifies the stream, so a replaced stream cannot unregister its successor.
    pub conn_id: u64,
    pub attached_at: Instant,
    pub last_heartbeat: Instant,
    pub heartbeat_seq: u64,
    pub in_use: Capacity,
    /// Draining agents get no new sessions.
    pub draining: bool,
    /// Rung when the agent has new commands to send.
    pub bell: Arc<Notify>,
    /// Cancelled to close the stream (replaced, drained, revoked, heartbeats lost).
    pub cancel: CancellationToken,
    /// Set when a revocation closed the stream: why, for the agent.
    pub revoked: Option<String>,
    /// The stream epoch the store gave this attach (0 until it did).
    pub epoch: i64,
}

/// Why an attach was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    #[error(
        "agent {id} already has a healthy stream (last heartbeat {age_ms} ms ago); refusing a second one"
    )]
    AlreadyAttached { id: String, age_ms: u128 },
    #[error("fencing token {got} for agent {id} is lower than {seen}, already seen: stale leader")]
    StaleFencing { id: String, got: u64, seen: u64 },
}

/// Result of a successful attach.
pub struct Registration {
    pub conn_id: u64,
    pub bell: Arc<Notify>,
    pub cancel: CancellationToken,
    /// Whether an older stream for the same id was closed to make room.
    pub replaced: bool,
}

pub struct Roster {
    agents: Mutex<HashMap<String, OnlineAgent>>,
    /// A stream with no heartbeat for this long counts as dead.
    heartbeat_timeout: Duration,
    next_conn: AtomicU64,
}

impl Roster {
    pub fn new(heartbeat_timeout: Duration) -> Self {
        Self {
            agents: Mutex::new(HashMap::new()),
            heartbeat_timeout,
            next_conn: AtomicU64::new(1),
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// Attaches `hello.id`, applying the no-thrash rules. `seen_token` is the
    /// highest fencing token the store remembers for this id.
    pub fn register(
        &self,
        hello: AgentHello,
        seen_token: u64,
        now: Instant,
    ) -> Result<Registration, AttachRefused> {
        let mut agents = self.agents.lock().expect("roster lock");
        let mut seen = seen_token;
        let mut replaced = false;
        if let Some(cur) = agents.get(&hello.id) {
            seen = seen.max(cur.hello.fencing_token);
            if hello.fencing_token < seen {
                return Err(AttachRefused::StaleFencing {
                    id: hello.id,
                    got: hello.fencing_token,
                    seen,
                });
            }
            let age = now.saturating_duration_since(cur.last_heartbeat);
            let newer_leader = hello.fencing_token > cur.hello.fencing_token;
            if !newer_leader && age < self.heartbeat_timeout {
                return Err(AttachRefused::AlreadyAttached {
                    id: hello.id,
                    age_ms: age.as_millis(),
                });
            }
            cur.cancel.cancel();
            replaced = true;
        } else if hello.fencing_token < seen {
            return Err(AttachRefused::StaleFencing {
                id: hello.id,
                got: hello.fencing_token,
                seen,
            });
        }
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let bell = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        agents.insert(
            hello.id.clone(),
            OnlineAgent {
                hello,
                conn_id,
                attached_at: now,
                last_heartbeat: now,
                heartbeat_seq: 0,
                in_use: Capacity::default(),
                draining: false,
                bell: bell.clone(),
                cancel: cancel.clone(),
                revoked: None,
                epoch: 0,
            },
        );
        Ok(Registration {
            conn_id,
            bell,
            cancel,
            replaced,
        })
    }

    /// Removes the agent if `conn_id` is still its stream. Returns whether it did.
    pub fn unregister(&self, id: &str, conn_id: u64) -> bool {
        let mut agents = self.agents.lock().expect("roster lock");
        if agents.get(id).is_some_and(|a| a.conn_id == conn_id) {
            agents.remove(id);
            true
        } else {
            false
        }
    }

    pub fn heartbeat(&self, id: &str, conn_id: u64, seq: u64, in_use: Capacity, now: Instant) {
        let mut agents = self.agents.lock().expect("roster lock");
        if let Some(a) = agents.get_mut(id).filter(|a| a.conn_id == conn_id) {
            a.last_heartbeat = now;
            a.heartbeat_seq = seq;
            a.in_use = in_use;
        }
    }

    /// Records the store's stream epoch for stream `conn_id` of `id`.
    pub fn set_epoch(&self, id: &str, conn_id: u64, epoch: i64) {
        let mut agents = self.agents.lock().expect("roster lock");
        if let Some(a) = agents.get_mut(id).filter(|a| a.conn_id == conn_id) {
            a.epoch = epoch;
        }
    }

    /// The store's stream epoch of stream `conn_id` of `id`, if it is still
    /// the agent's stream here.
    pub fn epoch(&self, id: &str, conn_id: u64) -> Option<i64> {
        let agents = self.agents.lock().expect("roster lock");
        agents
            .get(id)
            .filter(|a| a.conn_id == conn_id)
            .map(|a| a.epoch)
    }

    /// Closes `id`'s stream here if its epoch is below `epoch` (another
    /// replica took the agent over). Returns whether it did.
    pub fn taken_over(&self, id: &str, epoch: i64) -> bool {
        let agents = self.agents.lock().expect("roster lock");
        match agents.get(id) {
            Some(a) if a.epoch > 0 && a.epoch < epoch => {
                a.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Rings the agent's bell: it has commands to send.
    pub fn ring(&self, id: &str) {
        if let Some(a) = self.agents.lock().expect("roster lock").get(id) {
            a.bell.notify_one();
        }
    }

    /// Runs `f` over the connected agents as placement candidates, under the
    /// lock (nothing is copied), then over `elsewhere`: agents attached to
    /// other replicas of a shared store.
    pub fn with_candidates<R>(
        &self,
        elsewhere: &[AgentRecord],
        f: impl FnOnce(&mut dyn Iterator<Item = Candidate>) -> R,
    ) -> R {
        let agents = self.agents.lock().expect("roster lock");
        let here = agents.values().map(|a| Candidate {
            id: &a.hello.id,
            platform: &a.hello.platform,
            region: &a.hello.region,
            capacity: a.hello.capacity,
            in_use: a.in_use,
            draining: a.draining,
        });
        let mut it = here.chain(
            elsewhere
                .iter()
                .filter(|a| !agents.contains_key(&a.id))
                .map(|a| Candidate {
                    id: &a.id,
                    platform: &a.platform,
                    region: &a.region,
                    capacity: a.capacity,
                    in_use: Capacity::default(),
                    draining: false,
                }),
        );
        f(&mut it)
    }

    /// Whether stream `conn_id` is still `id`'s current stream and `f` holds for it.
    pub fn current_and(
        &self,
        id: &str,
        conn_id: u64,
        f: impl FnOnce(&OnlineAgent) -> bool,
    ) -> bool {
        self.agents
            .lock()
            .expect("roster lock")
            .get(id)
            .is_some_and(|a| a.conn_id == conn_id && f(a))
    }

    pub fn get(&self, id: &str) -> Option<OnlineAgent> {
        self.agents.lock().expect("roster lock").get(id).cloned()
    }

    pub fn all(&self) -> Vec<OnlineAgent> {
        let mut v: Vec<_> = self
            .agents
            .lock()
            .expect("roster lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.hello.id.cmp(&b.hello.id));
        v
    }

    /// Closes every stream that `target` refuses and takes it out of
    /// placement (it stays listed until its stream ends). `why` says which
    /// revocation did it. Returns the ids of the agents it closed.
    pub fn evict(&self, target: &RevokedTarget, why: &str) -> Vec<String> {
        let mut agents = self.agents.lock().expect("roster lock");
        let mut closed = vec![];
        for a in agents.values_mut() {
            let hit = match target {
                RevokedTarget::Agent(id) => a.hello.id == *id,
                RevokedTarget::Serial(s) => a.hello.cert_serial == *s,
            };
            if hit && a.revoked.is_none() {
                a.draining = true;
                a.revoked = Some(why.to_string());
                a.cancel.cancel();
                closed.push(a.hello.id.clone());
            }
        }
        closed
    }

    /// Why a revocation closed stream `conn_id` of `id`, if one did.
    pub fn revoked(&self, id: &str, conn_id: u64) -> Option<String> {
        self.agents
            .lock()
            .expect("roster lock")
            .get(id)
            .filter(|a| a.conn_id == conn_id)
            .and_then(|a| a.revoked.clone())
    }

    /// Marks the agent draining; its stream sends Drain and closes. Returns whether it was attached.
    pub fn drain(&self, id: &str) -> bool {
        let mut agents = self.agents.lock().expect("roster lock");
        match agents.get_mut(id) {
            Some(a) => {
                a.draining = true;
                a.bell.notify_one();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, token: u64) -> AgentHello {
        AgentHello {
            id: id.into(),
            fencing_token: token,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_stream_is_not_replaced() {
        let r = Roster::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let first = r.register(hello("a", 0), 0, t0).unwrap();
        let err = r
            .register(hello("a", 0), 0, t0 + Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(matches!(err, AttachRefused::AlreadyAttached { .. }));
        assert!(!first.cancel.is_cancelled());
    }

    #[test]
    fn silent_stream_is_replaced() {
        let r = Roster::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let first = r.register(hello("a", 0), 0, t0).unwrap();
        let second = r
            .register(hello("a", 0), 0, t0 + Duration::from_secs(31))
            .unwrap();
        assert!(first.cancel.is_cancelled());
        assert!(second.replaced);
        assert!(
            !r.unregister("a", first.conn_id),
            "old stream must not remove the new one"
        );
        assert!(r.unregister("a", second.conn_id));
    }

    #[test]
    fn eviction_by_serial_closes_only_that_certificate() {
        let r = Roster::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let mut h = hello("a", 0);
        h.cert_serial = "1f".into();
        let a = r.register(h, 0, t0).unwrap();
        let b = r.register(hello("b", 0), 0, t0).unwrap();
        assert!(r.evict(&RevokedTarget::Serial("2f".into()), "x").is_empty());
        assert_eq!(r.evict(&RevokedTarget::Serial("1f".into()), "why"), ["a"]);
        assert!(a.cancel.is_cancelled() && !b.cancel.is_cancelled());
        assert_eq!(r.revoked("a", a.conn_id).as_deref(), Some("why"));
        assert!(r.get("a").unwrap().draining, "out of placement");
    }

    #[test]
    fn fencing_tokens() {
        let r = Roster::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let first = r.register(hello("a", 3), 0, t0).unwrap();
        assert!(matches!(
            r.register(hello("a", 2), 0, t0).err().unwrap(),
            AttachRefused::StaleFencing { seen: 3, .. }
        ));
        r.register(hello("a", 4), 0, t0).unwrap();
        assert!(
            first.cancel.is_cancelled(),
            "a newer leader replaces a healthy stream"
        );
        assert!(matches!(
            r.register(hello("b", 1), 5, t0).err().unwrap(),
            AttachRefused::StaleFencing { seen: 5, .. }
        ));
    }
}
