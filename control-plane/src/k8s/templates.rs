//! Template objects join the template catalog.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::convert;
use super::crd::Template;
use crate::core::{Caller, Lifecycle};

pub async fn run(
    client: Client,
    lifecycle: Arc<Lifecycle>,
    namespace: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let api: Api<Template> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let admin = Caller::admin("system:kubernetes-controller");
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { return };
        match ev {
            Ok(watcher::Event::Apply(t) | watcher::Event::InitApply(t)) => {
                let tpl = convert::template(&t.name_any(), &t.spec);
                match lifecycle.put_template(&admin, tpl).await {
                    Ok(_) => info!(template = %t.name_any(), "template object joined the catalog"),
                    Err(e) => {
                        warn!(template = %t.name_any(), error = %e, "invalid template object")
                    }
                }
            }
            Ok(watcher::Event::Delete(t)) => {
                let _ = lifecycle.delete_template(&admin, &t.name_any()).await;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "watching templates"),
        }
    }
}
