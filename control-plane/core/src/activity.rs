//! The lifecycle's side of the session policies (see [`crate::policy`]):
//! activity reported by users ([`Lifecycle::touch`]) and agents
//! ([`Lifecycle::agent_activity`]), and the sweep that enforces the idle
//! timeout and the maximum duration ([`Lifecycle::enforce_policies`]). Each
//! enforcement re-checks the policy inside the session's transition, on the
//! stored state, so a sweep racing a touch or a wake never acts on stale
//! data, and the sweep is level-triggered: one that is missed (a restart, a
//! slow store) acts on the next pass.

use tracing::{info, warn};

use crate::lifecycle::{Caller, Lifecycle, LifecycleError};
use crate::model::{Desired, Millis, Phase, Session, now_ms};
use crate::policy::{self, Due};
use crate::steps;
use crate::store::{Change, SessionFilter, SessionWrite};

/// Sessions one sweep reads at most (the RUNNING ones, newest first).
const SWEEP_LIMIT: u32 = 100_000;

impl Lifecycle {
    /// A user (or a portal on their behalf) is active on session `name`.
    pub async fn touch(&self, caller: &Caller, name: &str) -> Result<Session, LifecycleError> {
        let s = self.get_session(caller, name).await?;
        self.store()
            .touch_sessions("", &[name.to_string()], now_ms())
            .await?;
        Ok(self.store().get_session(name).await?.unwrap_or(s))
    }

    /// Agent `agent` sees users on `sessions` (a heartbeat's list); names
    /// not placed on it are ignored.
    pub async fn agent_activity(
        &self,
        agent: &str,
        sessions: &[String],
    ) -> Result<(), LifecycleError> {
        if sessions.is_empty() {
            return Ok(());
        }
        self.store()
            .touch_sessions(agent, sessions, now_ms())
            .await?;
        Ok(())
    }

    /// Enforces every policy that is due now; returns the earliest time one
    /// will be due next (None: none will without a change).
    pub async fn enforce_policies(&self) -> Result<Option<Millis>, LifecycleError> {
        let warning = self.config().max_duration_warning.as_millis() as Millis;
        let running = self
            .store()
            .list_sessions(&SessionFilter {
                phase: Some(Phase::Running),
                limit: SWEEP_LIMIT,
                ..SessionFilter::default()
            })
            .await?;
        let mut next: Option<Millis> = None;
        for s in running {
            let now = now_ms();
            if let Some(due) = policy::due(&s, now, warning) {
                match self.enforce(&s.name, warning).await {
                    Ok(true) => {
                        info!(session = %s.name, user = %s.user, policy = ?due, "session policy enforced")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(session = %s.name, error = %e, "session policy not enforced; retrying on the next pass")
                    }
                }
                continue;
            }
            if let Some(at) = policy::next_due(&s, now, warning) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    /// Enforces what is due on session `name`, decided on its stored state;
    /// whether anything was.
    async fn enforce(&self, name: &str, warning: Millis) -> Result<bool, LifecycleError> {
        let cfg = self.step_cfg();
        let change = self
            .transition(name, move |s, active| {
                let Some(mut s) = s else {
                    return Ok(Change::default());
                };
                let Some(due) = policy::due(&s, cfg.now, warning) else {
                    return Ok(Change::default());
                };
                Ok(match due {
                    Due::Idle { idle_ms } => {
                        let idle = s.workload.timeouts.idle_secs;
                        s.set_condition(
                            policy::IDLE,
                            true,
                            policy::IDLE_TIMEOUT,
                            &format!(
                                "no activity for {} (idle timeout {}s): hibernated by the control plane; wake it to resume",
                                policy::shown(idle_ms),
                                idle
                            ),
                        );
                        steps::set_desired(s, active, Desired::Hibernated, false, cfg)
                    }
                    Due::Warn { left_ms } => {
                        s.set_condition(
                            policy::EXPIRING,
                            true,
                            policy::MAX_DURATION_SOON,
                            &format!(
                                "the session reaches its maximum duration ({}s of running time) in {} and is then terminated",
                                s.workload.timeouts.max_secs,
                                policy::shown(left_ms)
                            ),
                        );
                        s.updated_ms = cfg.now;
                        Change {
                            session: SessionWrite::Upsert(s),
                            ..Change::default()
                        }
                    }
                    Due::MaxDuration { ran_ms } => {
                        s.set_condition(
                            policy::EXPIRING,
                            true,
                            policy::MAX_DURATION_REACHED,
                            &format!(
                                "ran for {} (maximum duration {}s): terminated by the control plane",
                                policy::shown(ran_ms),
                                s.workload.timeouts.max_secs
                            ),
                        );
                        let delete_home = s.delete_home;
                        steps::set_desired(s, active, Desired::Terminated, delete_home, cfg)
                    }
                })
            })
            .await?;
        Ok(!change.is_empty())
    }
}
