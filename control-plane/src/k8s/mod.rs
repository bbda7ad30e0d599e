//! Kubernetes adapter of the control plane: the Session/Template/Quota
//! custom resources, the embedded Session controller, the template and quota
//! watchers and the mirror that shows API-created sessions as objects.

pub mod controller;
pub mod convert;
pub mod crd;
pub mod formats;
pub mod mirror;
pub mod quotas;
pub mod templates;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::Lifecycle;

/// Where and how the controller runs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Kubeconfig path; None = in-cluster / default chain.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Watch only this namespace; None = all namespaces.
    pub namespace: Option<String>,
    /// Namespace where API-created sessions appear as objects, and where
    /// the controller's Lease lives.
    pub mirror_namespace: String,
    /// This replica's identity in the controller's Lease.
    pub identity: String,
    /// How long the Lease holds without renewal: a dead leader's controller
    /// moves to another replica after about this long.
    pub lease_seconds: u64,
}

/// The Lease that decides which replica runs the Session controller.
pub const CONTROLLER_LEASE: &str = "streamspace-controller";

pub async fn client(o: &KubeOptions) -> anyhow::Result<kube::Client> {
    client_for(o.kubeconfig.as_deref()).await
}

/// A client from `kubeconfig`, or from the in-cluster configuration (then
/// the default chain) when there is none.
pub async fn client_for(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Starts the controller (timing its reconciles into `metrics`, if any),
/// the template and quota watchers and the mirror.
pub async fn start(
    o: &KubeOptions,
    lifecycle: Arc<Lifecycle>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let c = client(o).await?;
    Ok(vec![
        tokio::spawn(elected(
            c.clone(),
            o.clone(),
            lifecycle.clone(),
            metrics,
            shutdown.clone(),
        )),
        tokio::spawn(templates::run(
            c.clone(),
            lifecycle.clone(),
            o.namespace.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(quotas::run(
            c.clone(),
            lifecycle.clone(),
            o.namespace.clone(),
            shutdown.clone(),
        )),
    ])
}

/// Runs the Session controller and the mirror of API sessions only while
/// this replica holds the controller's Lease (one replica at a time; the
/// others stand by and take over when the Lease expires or is released).
/// The catalog and quota watchers run on every replica: each needs them.
///
/// The holder makes its own pod (`POD_NAME`/`POD_UID`, from the downward
/// API) the Lease's owner, so the Lease goes with the release. A Lease that
/// disappears (its owner pod was deleted) or an API error starts the
/// election over with a new Lease, and stops the controller here meanwhile:
/// a replica that cannot renew must not keep reconciling.
async fn elected(
    client: kube::Client,
    o: KubeOptions,
    lifecycle: Arc<Lifecycle>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    shutdown: CancellationToken,
) {
    use kube_lease_manager::LeaseManagerBuilder;
    let grace = (o.lease_seconds / 3).max(1);
    let mut running: Option<Running> = None;
    loop {
        let manager = LeaseManagerBuilder::new(client.clone(), CONTROLLER_LEASE)
            .with_namespace(&o.mirror_namespace)
            .with_identity(&o.identity)
            .with_duration(o.lease_seconds)
            .with_grace(grace)
            .build()
            .await;
        let manager = match manager {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, lease = CONTROLLER_LEASE, "controller lease; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let changed = tokio::select! {
                _ = shutdown.cancelled() => {
                    if let Some(r) = running.take() {
                        r.stop().await;
                    }
                    // Released, the next replica takes over at once instead
                    // of when the Lease expires.
                    let _ = manager.release().await;
                    return;
                }
                c = manager.changed() => c,
            };
            match changed {
                Ok(true) => {
                    tracing::info!(identity = %o.identity, lease = CONTROLLER_LEASE, "holding the controller lease: running the Session controller");
                    own_lease(&client, &o.mirror_namespace).await;
                    let term = shutdown.child_token();
                    running = Some(Running {
                        tasks: vec![
                            tokio::spawn(controller::run(
                                client.clone(),
                                lifecycle.clone(),
                                o.namespace.clone(),
                                metrics.clone(),
                                term.clone(),
                            )),
                            tokio::spawn(mirror::run(
                                client.clone(),
                                lifecycle.clone(),
                                o.mirror_namespace.clone(),
                                term.clone(),
                            )),
                        ],
                        term,
                    });
                }
                Ok(false) => {
                    if let Some(r) = running.take() {
                        tracing::warn!(identity = %o.identity, "lost the controller lease: the Session controller stopped here");
                        r.stop().await;
                    }
                }
                Err(e) => {
                    if let Some(r) = running.take() {
                        r.stop().await;
                    }
                    tracing::warn!(error = %e, lease = CONTROLLER_LEASE, "controller lease lost or unreadable; electing again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => break,
                    }
                }
            }
        }
    }
}

/// The Session controller's tasks while this replica leads.
struct Running {
    term: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        self.term.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Makes this replica's pod the owner of the controller's Lease, when it
/// runs in a pod (POD_NAME and POD_UID set).
async fn own_lease(client: &kube::Client, namespace: &str) {
    let (Ok(name), Ok(uid)) = (std::env::var("POD_NAME"), std::env::var("POD_UID")) else {
        return;
    };
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "metadata": {"ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid,
        }]}
    });
    if let Err(e) = api
        .patch(
            CONTROLLER_LEASE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(error = %e, "making this pod the controller lease's owner");
    }
}
