//! Several control-plane replicas on one shared store. Each agent's stream is
//! held by one replica at a time, recorded in the store with an epoch (see
//! [`crate::store::Store::take_over_agent`]); any replica accepts requests
//! and writes commands to the outbox, and the replica holding the agent
//! sends them. This module is the replica's side of that:
//!
//! - [`Lifecycle::follow_remote`] turns the store's feed of other replicas'
//!   writes into local effects: a command for an agent held here rings its
//!   bell, a session written elsewhere is published to this replica's
//!   watchers (and so to `WatchSessions` and the Session controller here).
//! - [`Lifecycle::keep_presence`], once a second: renews this replica's
//!   presence, closes streams another replica took over, refreshes the
//!   agents held elsewhere (placement considers them too) and rings agents
//!   whose command waited past a wake-up that may have been lost.
//!
//! On a store that only this process writes (SQLite) none of it runs.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info};

use super::lifecycle::{EventKind, Lifecycle, LifecycleError, SessionEvent};
use super::model::{AgentRecord, Desired, Phase, Session, now_ms};
use super::store::RemoteChange;

/// A replica whose presence is older than this is taken for dead: the
/// agents it held are not placement candidates until they attach elsewhere.
pub const REPLICA_TIMEOUT_MS: i64 = 5_000;
/// A pending command older than this is sent by the sweep, in case the
/// notification that should have woken its agent's stream was lost.
pub const LOST_WAKE_MS: i64 = 1_000;

impl Lifecycle {
    /// How many agents other live replicas hold (as of the last
    /// [`Lifecycle::keep_presence`]).
    pub fn agents_held_elsewhere(&self) -> usize {
        self.held_elsewhere
            .lock()
            .expect("held_elsewhere lock")
            .len()
    }

    /// Applies other replicas' writes here until `changes` ends. This
    /// replica's own session writes are published here too, each as the
    /// session reads now: a watcher sees every change in one order and ends
    /// on the latest state (published apart, a local write's event could
    /// overtake the re-read of a later write made elsewhere, and stay last).
    pub async fn follow_remote(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<RemoteChange>,
    ) {
        let (tx, mut own) = mpsc::unbounded_channel();
        *self.local_writes.lock().expect("local_writes lock") = Some(tx);
        loop {
            let c = tokio::select! {
                c = changes.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
                Some(ev) = own.recv() => {
                    self.publish_current(ev).await;
                    continue;
                }
            };
            match c {
                RemoteChange::Commands { agent } => self.roster().ring(&agent),
                // Nobody here watches: no need to read what changed.
                RemoteChange::Session { .. } if !self.has_watchers() => {}
                RemoteChange::Session { name, user } => {
                    let event = match self.store().get_session(&name).await {
                        Ok(Some(session)) => SessionEvent {
                            kind: EventKind::Modified,
                            session,
                        },
                        Ok(None) => SessionEvent {
                            kind: EventKind::Deleted,
                            session: Session {
                                user,
                                ..Session::named(&name, Desired::Terminated, Phase::Stopped)
                            },
                        },
                        Err(e) => {
                            debug!(error = %e, session = %name, "reading a session another replica wrote");
                            continue;
                        }
                    };
                    self.publish(event);
                }
                RemoteChange::Lost => {
                    // Whatever was missed: every agent held here looks again.
                    for a in self.roster().all() {
                        self.roster().ring(&a.hello.id);
                    }
                }
            }
        }
        *self.local_writes.lock().expect("local_writes lock") = None;
    }

    /// Publishes this replica's write `ev` as the session reads now (with
    /// `ev`'s kind while it exists; deleted, as `ev` knew it, once gone).
    async fn publish_current(&self, ev: SessionEvent) {
        if !self.has_watchers() {
            return;
        }
        let event = match self.store().get_session(&ev.session.name).await {
            Ok(Some(session)) if ev.kind != EventKind::Deleted => SessionEvent {
                kind: ev.kind,
                session,
            },
            Ok(Some(session)) => SessionEvent {
                kind: EventKind::Modified,
                session,
            },
            Ok(None) => SessionEvent {
                kind: EventKind::Deleted,
                session: ev.session,
            },
            // Unreadable now: what the write itself wrote.
            Err(_) => ev,
        };
        self.publish(event);
    }

    /// One pass of the shared-store upkeep (see the module doc); nothing on
    /// a store no other replica writes.
    pub async fn keep_presence(&self) -> Result<(), LifecycleError> {
        let store = self.store();
        if !store.shared() {
            return Ok(());
        }
        let now = now_ms();
        store.renew_replica(self.replica_id(), now).await?;
        let live = store.live_replicas(now - REPLICA_TIMEOUT_MS).await?;
        let agents = store.list_agents().await?;
        for a in &agents {
            if a.replica_id != self.replica_id() && self.roster().taken_over(&a.id, a.stream_epoch)
            {
                info!(agent = %a.id, replica = %a.replica_id, epoch = a.stream_epoch, "agent taken over by another replica; closing its stream here");
            }
        }
        let elsewhere: Vec<AgentRecord> = agents
            .into_iter()
            .filter(|a| {
                !a.replica_id.is_empty()
                    && a.replica_id != self.replica_id()
                    && live.contains(&a.replica_id)
            })
            .collect();
        *self.held_elsewhere.lock().expect("held_elsewhere lock") = elsewhere;
        for agent in store
            .agents_with_waiting_commands(now, now - LOST_WAKE_MS)
            .await?
        {
            self.roster().ring(&agent);
        }
        Ok(())
    }
}
