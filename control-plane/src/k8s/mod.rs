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
    /// Namespace where API-created sessions appear as objects.
    pub mirror_namespace: String,
}

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
        tokio::spawn(controller::run(
            c.clone(),
            lifecycle.clone(),
            o.namespace.clone(),
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
        tokio::spawn(mirror::run(
            c,
            lifecycle,
            o.mirror_namespace.clone(),
            shutdown,
        )),
    ])
}
