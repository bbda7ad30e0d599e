//! The Session controller, embedded in the control plane (DESIGN.md
//! "Kubernetes"; the fix for seed 000's P0): a `Session` object maps to a
//! session in the store keyed by the object's UID; `spec.state` is the desired
//! state; the status subresource mirrors the observed state; Events record
//! transitions; a finalizer stops the session and waits for the agent's
//! result before the object goes away.
//!
//! Reconciles are triggered by the objects (watch) and by the store (every
//! lifecycle event of a session re-reconciles its object), so status follows
//! the agent without polling. With metrics on, each reconcile is timed and
//! counted by outcome, and a gauge says the controller runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::convert;
use super::crd::{Condition, Session, SessionState, SessionStatus};
use crate::core::model::{Desired, Phase, Session as Stored};
use crate::core::policy;
use crate::core::{Caller, Lifecycle, LifecycleError};

pub const FINALIZER: &str = "stream.space/session-cleanup";
pub const FIELD_MANAGER: &str = "streamspace-control-plane";
/// Periodic re-reconcile of every Session object.
const RESYNC: Duration = Duration::from_secs(10);
/// How soon a Session refused by a quota is tried again.
const QUOTA_RETRY: Duration = Duration::from_secs(5);

pub struct Ctx {
    pub client: Client,
    pub lifecycle: Arc<Lifecycle>,
    pub recorder: Recorder,
    /// Reconciles are timed and counted here, when metrics are on.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Deletion waits for the agent; not a failure, retried shortly.
    #[error("waiting: {0}")]
    Waiting(String),
}

fn admin() -> Caller {
    Caller::admin("system:kubernetes-controller")
}

fn desired(s: SessionState) -> Desired {
    match s {
        SessionState::Running => Desired::Running,
        SessionState::Hibernated => Desired::Hibernated,
        SessionState::Terminated => Desired::Terminated,
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::Provisioning => "Provisioning",
        Phase::Running => "Running",
        Phase::Hibernated => "Hibernated",
        Phase::Stopped => "Stopped",
        Phase::Failed => "Failed",
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
    }
}

/// The object's status for a stored session.
fn status_of(obj: &Session, s: &Stored, extra: Option<Condition>) -> SessionStatus {
    let mut conditions: Vec<Condition> = s
        .conditions
        .iter()
        .map(|c| condition(&c.kind, c.status, &c.reason, &c.message))
        .collect();
    conditions.extend(extra);
    SessionStatus {
        phase: Some(phase_name(s.phase).into()),
        url: Some(s.url.clone()).filter(|u| !u.is_empty()),
        pod: Some(s.workload_name.clone()).filter(|w| !w.is_empty()),
        agent: s.agent_id.clone(),
        conditions,
        observed_generation: obj.metadata.generation,
        last_activity: Some(convert::rfc3339(if s.last_activity_ms > 0 {
            s.last_activity_ms
        } else {
            s.updated_ms
        })),
    }
}

fn invalid_status(obj: &Session, reason: &str, message: &str) -> SessionStatus {
    SessionStatus {
        phase: Some("Failed".into()),
        conditions: vec![condition("Ready", false, reason, message)],
        observed_generation: obj.metadata.generation,
        ..Default::default()
    }
}

impl Ctx {
    /// Writes the status (server-side apply on the status subresource) if it
    /// changed, and records an Event when the phase changed.
    async fn write_status(&self, obj: &Session, mut status: SessionStatus) -> Result<(), Error> {
        let old = obj.status.clone().unwrap_or_default();
        // Keep lastActivity stable unless something else changed: no write loops.
        let mut cmp = status.clone();
        cmp.last_activity = old.last_activity.clone();
        if cmp == old {
            return Ok(());
        }
        if status.phase == old.phase && status.url == old.url && status.pod == old.pod {
            status.last_activity = old.last_activity.clone().or(status.last_activity);
        }
        let api: Api<Session> =
            Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let patch = serde_json::json!({
            "apiVersion": "stream.space/v1alpha1",
            "kind": "Session",
            "status": status,
        });
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        if status.phase != old.phase {
            let failed = status.phase.as_deref() == Some("Failed");
            // The condition that explains the new phase: Terminating is the
            // controller's own phase, every other one is the Ready condition's.
            let explains = match status.phase.as_deref() {
                Some("Terminating") => "Terminating",
                _ => "Ready",
            };
            let note = status
                .conditions
                .iter()
                .find(|c| c.type_ == explains)
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty());
            let ev = KubeEvent {
                type_: if failed {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: status.phase.clone().unwrap_or_default(),
                note: note.or_else(|| {
                    Some(format!(
                        "session is {}",
                        status.phase.clone().unwrap_or_default()
                    ))
                }),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
                warn!(error = %e, "publishing event");
            }
        }
        // A session policy acted (or warns): an Event with the policy's reason.
        for kind in [policy::IDLE, policy::EXPIRING] {
            let now = status
                .conditions
                .iter()
                .find(|c| c.type_ == kind && c.status == "True");
            let before = old.conditions.iter().find(|c| c.type_ == kind);
            let Some(c) =
                now.filter(|c| before.is_none_or(|b| b.status != "True" || b.reason != c.reason))
            else {
                continue;
            };
            let ev = KubeEvent {
                type_: if c.reason == policy::MAX_DURATION_SOON {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(c.message.clone()),
                action: "EnforcePolicy".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
                warn!(error = %e, "publishing event");
            }
        }
        Ok(())
    }

    async fn apply(&self, obj: &Session) -> Result<Action, Error> {
        let name = obj.name_any();
        let uid = obj.uid().unwrap_or_default();
        let lc = &self.lifecycle;
        let stored = lc
            .store()
            .get_session(&name)
            .await
            .map_err(LifecycleError::from)?;
        let stored = match stored {
            None if obj.status.as_ref().and_then(|s| s.agent.as_ref()).is_some() => {
                // Linked before and gone from the store: deleted through the API.
                let api: Api<Session> =
                    Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
                info!(session = %name, "session deleted through the API; deleting its object");
                let _ = api.delete(&name, &Default::default()).await;
                return Ok(Action::await_change());
            }
            None => {
                let new = convert::new_session(obj);
                match lc.create_session(&admin(), new).await {
                    Ok(s) => s,
                    Err(LifecycleError::Invalid(i)) => {
                        self.write_status(
                            obj,
                            invalid_status(obj, "InvalidSpec", &format!("spec.{i}")),
                        )
                        .await?;
                        return Ok(Action::await_change());
                    }
                    Err(LifecycleError::ResourceExhausted(m)) => {
                        // Level-triggered: tried again until the user's
                        // quota has room (a session deleted, a quota raised).
                        let status = SessionStatus {
                            phase: Some("Pending".into()),
                            conditions: vec![condition("Ready", false, "QuotaExceeded", &m)],
                            observed_generation: obj.metadata.generation,
                            ..Default::default()
                        };
                        self.write_status(obj, status).await?;
                        return Ok(Action::requeue(QUOTA_RETRY));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Some(s) => s,
        };
        match stored.external_id.as_deref() {
            Some(id) if id == uid => {}
            None => {
                lc.link_external(&name, &uid).await?;
            }
            Some(other) => {
                let msg = format!(
                    "a session named {name:?} already exists (owned by object {other}); rename this object"
                );
                self.write_status(obj, invalid_status(obj, "NameConflict", &msg))
                    .await?;
                return Ok(Action::await_change());
            }
        }
        // Apply spec.state only when the spec changed since it was last
        // applied: otherwise the store is newer (an API call whose mirror
        // patch of spec.state is still on its way) and must not be reverted.
        let want = desired(obj.spec.state);
        let spec_is_new =
            obj.status.as_ref().and_then(|s| s.observed_generation) != obj.metadata.generation;
        let stored = if spec_is_new && stored.desired != want {
            match lc.set_desired(&admin(), &name, want, false).await {
                Ok(s) => s,
                Err(LifecycleError::FailedPrecondition(m)) => {
                    self.write_status(
                        obj,
                        status_of(
                            obj,
                            &stored,
                            Some(condition("Ready", false, "Terminating", &m)),
                        ),
                    )
                    .await?;
                    return Ok(Action::await_change());
                }
                Err(LifecycleError::ResourceExhausted(m)) => {
                    // The wake waits for room; observedGeneration stays
                    // behind so the next pass tries the wake again.
                    let mut status = status_of(
                        obj,
                        &stored,
                        Some(condition("Ready", false, "QuotaExceeded", &m)),
                    );
                    status.observed_generation =
                        obj.status.as_ref().and_then(|s| s.observed_generation);
                    self.write_status(obj, status).await?;
                    return Ok(Action::requeue(QUOTA_RETRY));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            stored
        };
        self.write_status(obj, status_of(obj, &stored, None))
            .await?;
        // Store changes trigger reconciles directly; this resync bounds how
        // long a missed trigger (e.g. while the watch cache fills after a
        // restart) can leave the status stale.
        Ok(Action::requeue(RESYNC))
    }

    async fn cleanup(&self, obj: &Session) -> Result<Action, Error> {
        let name = obj.name_any();
        let uid = obj.uid().unwrap_or_default();
        let lc = &self.lifecycle;
        let Some(stored) = lc
            .store()
            .get_session(&name)
            .await
            .map_err(LifecycleError::from)?
        else {
            info!(session = %name, "session gone; releasing the object");
            return Ok(Action::await_change());
        };
        if stored.external_id.as_deref().is_some_and(|id| id != uid) {
            return Ok(Action::await_change());
        }
        let stored = lc
            .set_desired(&admin(), &name, Desired::Terminated, false)
            .await?;
        if stored.desired == Desired::Terminated
            && lc
                .store()
                .get_session(&name)
                .await
                .map_err(LifecycleError::from)?
                .is_none()
        {
            return Ok(Action::await_change());
        }
        let agent = stored.agent_id.clone().unwrap_or_default();
        let online = lc.roster().get(&agent).is_some();
        let msg = if online {
            format!("waiting for agent {agent} to stop the session")
        } else {
            format!("agent {agent} is not connected; the session is removed when it returns")
        };
        let mut st = status_of(
            obj,
            &stored,
            Some(condition(
                "Terminating",
                true,
                if online {
                    "Stopping"
                } else {
                    "AgentUnavailable"
                },
                &msg,
            )),
        );
        st.phase = Some("Terminating".into());
        self.write_status(obj, st).await?;
        Err(Error::Waiting(msg))
    }
}

#[instrument(name = "controller.reconcile", skip(obj, ctx), fields(session = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
async fn reconcile(
    obj: Arc<Session>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let started = Instant::now();
    let api: Api<Session> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let r = finalizer(&api, FINALIZER, obj, |ev| async {
        match ev {
            Finalizer::Apply(o) => ctx.apply(&o).await,
            Finalizer::Cleanup(o) => ctx.cleanup(&o).await,
        }
    })
    .await;
    if let Some(m) = &ctx.metrics {
        m.reconciled(reconciled_ok(&r), started.elapsed().as_secs_f64());
    }
    r
}

/// Whether a reconcile counts as `ok` in the metrics: it succeeded, or it
/// is a deletion waiting for the agent (retried shortly, not a failure).
fn reconciled_ok(r: &Result<Action, kube::runtime::finalizer::Error<Error>>) -> bool {
    matches!(
        r,
        Ok(_)
            | Err(kube::runtime::finalizer::Error::CleanupFailed(
                Error::Waiting(_)
            ))
    )
}

fn error_policy(
    obj: Arc<Session>,
    err: &kube::runtime::finalizer::Error<Error>,
    _: Arc<Ctx>,
) -> Action {
    match err {
        kube::runtime::finalizer::Error::CleanupFailed(Error::Waiting(_)) => {
            Action::requeue(Duration::from_secs(1))
        }
        e => {
            warn!(session = %obj.name_any(), error = %e, "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

/// Runs the Session controller until `shutdown`.
pub async fn run(
    client: Client,
    lifecycle: Arc<Lifecycle>,
    namespace: Option<String>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let _running = metrics.as_ref().map(|m| m.controller_running());
    let api: Api<Session> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    // Every change of a stored session re-reconciles its object.
    let (tx, rx) = tokio::sync::mpsc::channel::<ObjectRef<Session>>(1024);
    let mut events = lifecycle.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => {
                    for o in store
                        .state()
                        .iter()
                        .filter(|o| o.name_any() == ev.session.name)
                    {
                        let _ = tx.try_send(ObjectRef::from_obj(o.as_ref()));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for o in store.state() {
                        let _ = tx.try_send(ObjectRef::from_obj(o.as_ref()));
                    }
                }
                Err(_) => return,
            }
        }
    });
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Ctx {
        client,
        lifecycle,
        recorder,
        metrics,
    });
    info!(namespace = ?namespace, "session controller started");
    controller
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(rx))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    #[test]
    fn a_deletion_waiting_for_its_agent_is_not_an_error() {
        assert!(reconciled_ok(&Ok(Action::await_change())));
        assert!(reconciled_ok(&Err(F::CleanupFailed(Error::Waiting(
            "agent a is not connected".into()
        )))));
        assert!(!reconciled_ok(&Err(F::ApplyFailed(Error::Waiting(
            "not a cleanup".into()
        )))));
        assert!(!reconciled_ok(&Err(F::CleanupFailed(Error::Lifecycle(
            LifecycleError::Unavailable("store".into())
        )))));
        assert!(!reconciled_ok(&Err(F::UnnamedObject)));
    }
}
