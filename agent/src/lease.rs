//! Leader election for agent replicas on a coordination.k8s.io Lease. Only
//! the holder attaches; its fencing token grows with every change of holder,
//! so the control plane can refuse a stale leader (see [`fencing_token`]).
//! Losing the Lease (or failing to renew it within the renew deadline)
//! withdraws leadership at once; shutdown releases the Lease so a standby
//! takes over without waiting for it to expire.
//!
//! The holder makes its own Pod the Lease's owner (when it runs in a pod of
//! the Lease's namespace), so the Lease goes with the last pod that held it:
//! `helm uninstall` or deleting the Deployment leaves no Lease behind, and a
//! deleted leader pod frees the Lease at once. A Lease deleted or re-created
//! this way never lowers the fencing token, because the token starts from the
//! Lease's creation time, which the API server sets.
//!
//! Expiry is judged from `renewTime + leaseDurationSeconds` against the local
//! clock, so replicas are assumed to have roughly synchronised clocks.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    /// This replica (the pod name).
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys retry.
    pub retry_period: Duration,
    /// This replica's Pod, made the Lease's owner while this replica holds it.
    pub owner: Option<OwnerReference>,
}

/// Bits of the fencing token that count holder changes within one Lease object.
const TRANSITION_BITS: u32 = 24;

/// The fencing token of a holder: the Lease object's creation time (seconds,
/// set by the API server) in the high bits, its transition count in the low
/// 24. A Lease deleted and made again starts above every token of the one
/// before, so the control plane (which remembers the highest token it has
/// seen) accepts the new leader and still refuses one of the old Lease.
pub fn fencing_token(lease: &Lease, transitions: i32) -> u64 {
    let created = lease
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second().max(0) as u64)
        .unwrap_or(0);
    let low = (transitions.max(1) as u64).min((1 << TRANSITION_BITS) - 1);
    (created << TRANSITION_BITS) | low
}

/// An owner reference to the pod `name` in `namespace`, if it exists there.
pub async fn pod_owner(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Option<OwnerReference> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    match pods.get_opt(name).await {
        Ok(Some(pod)) => Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.into(),
            uid: pod.metadata.uid?,
            ..Default::default()
        }),
        Ok(None) => None,
        Err(e) => {
            warn!(pod = name, error = %e, "reading this replica's pod; the Lease will have no owner");
            None
        }
    }
}

/// Leadership as seen by this replica: `Some(fencing token)` while it leads.
pub type Leadership = watch::Receiver<Option<u64>>;

enum Try {
    Leading(u64),
    Standby,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn expired(spec: &LeaseSpec) -> bool {
    let Some(renew) = &spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let Ok(until) = renew
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
    else {
        return true;
    };
    until < Timestamp::now()
}

async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Try, kube::Error> {
    let duration = cfg.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                owner_references: cfg.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(1),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(made) => Ok(Try::Leading(fencing_token(&made, 1))),
            Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(Try::Standby),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let token = if holder == cfg.identity {
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(duration);
        transitions
    } else if holder.is_empty() || expired(spec) {
        if let Some(owner) = &cfg.owner {
            // The Lease now goes with this replica's pod (the old holder's may be gone).
            lease.metadata.owner_references = Some(vec![owner.clone()]);
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(cfg.identity.clone());
        spec.lease_transitions = Some(transitions + 1);
        spec.acquire_time = Some(now());
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(duration);
        transitions + 1
    } else {
        return Ok(Try::Standby);
    };
    // `replace` carries the resourceVersion we read: a concurrent writer wins.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Try::Leading(fencing_token(&lease, token))),
        Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(Try::Standby),
        Err(e) => Err(e),
    }
}

/// Gives up the Lease if we hold it: holder cleared, so a standby acquires at once.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => info!(lease = %cfg.name, "lease released"),
        Err(e) => warn!(lease = %cfg.name, error = %e, "releasing the lease"),
    }
}

/// Runs the election until `shutdown`; publishes leadership changes.
/// Returns after releasing the Lease.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) {
    let mut last_renew: Option<Instant> = None;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(cfg.renew_deadline, try_acquire_or_renew(&api, &cfg)) => r,
        };
        let leading = tx.borrow().is_some();
        match result {
            Ok(Ok(Try::Leading(token))) => {
                last_renew = Some(Instant::now());
                if tx.borrow().as_ref() != Some(&token) {
                    info!(lease = %cfg.name, identity = %cfg.identity, token, "became leader");
                    let _ = tx.send(Some(token));
                }
            }
            Ok(Ok(Try::Standby)) => {
                if leading {
                    warn!(lease = %cfg.name, "lost the lease to another replica");
                    let _ = tx.send(None);
                }
            }
            Ok(Err(e)) => warn!(lease = %cfg.name, error = %e, "lease request failed"),
            Err(_) => warn!(lease = %cfg.name, "lease request timed out"),
        }
        if tx.borrow().is_some() && last_renew.is_none_or(|t| t.elapsed() > cfg.renew_deadline) {
            warn!(lease = %cfg.name, "could not renew the lease within the renew deadline; stepping down");
            let _ = tx.send(None);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    let _ = tx.send(None);
    release(&api, &cfg).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn lease_created_at(secs: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(Timestamp::from_second(secs).unwrap())),
                ..Default::default()
            },
            spec: None,
        }
    }

    #[test]
    fn a_remade_lease_starts_above_every_token_of_the_old_one() {
        let old = lease_created_at(1_790_000_000);
        let new = lease_created_at(1_790_000_001);
        assert!(fencing_token(&old, 2) > fencing_token(&old, 1));
        assert!(fencing_token(&new, 1) > fencing_token(&old, i32::MAX));
        // Counts beyond the low bits saturate instead of spilling into the time.
        assert_eq!(
            fencing_token(&old, i32::MAX),
            fencing_token(&old, (1 << TRANSITION_BITS) - 1)
        );
        // A Lease without a creation time (never from the API server) still counts up.
        assert_eq!(fencing_token(&Lease::default(), 3), 3);
    }
}
