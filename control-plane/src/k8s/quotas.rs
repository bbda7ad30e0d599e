//! Quota objects join the quotas in force (source "kubernetes"). The watch's
//! full lists (at start and after every re-list) replace the set, single
//! changes edit it; an object whose spec breaks a rule is left out and
//! logged with the field and the rule. A quota is named `namespace/name`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::crd::Quota as QuotaObject;
use crate::core::Lifecycle;
use crate::core::quota::Quota;

/// The book's source name for quotas from Quota objects.
pub const SOURCE: &str = "kubernetes";

/// An object's quota name: `namespace/name`.
fn key(o: &QuotaObject) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// The core quota of one object, or why it is left out.
pub fn quota_of(o: &QuotaObject) -> Result<Quota, String> {
    o.spec
        .core()
        .to_quota(&key(o), "spec")
        .map_err(|e| e.to_string())
}

pub async fn run(
    client: Client,
    lifecycle: Arc<Lifecycle>,
    namespace: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let api: Api<QuotaObject> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: BTreeMap<String, Quota> = BTreeMap::new();
    let mut listing: BTreeMap<String, Quota> = BTreeMap::new();
    let publish = |known: &BTreeMap<String, Quota>| {
        lifecycle
            .quotas()
            .set(SOURCE, known.values().cloned().collect());
    };
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { return };
        match ev {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(q) = accepted(&o) {
                    listing.insert(q.name.clone(), q);
                }
            }
            Ok(watcher::Event::InitDone) => {
                known = std::mem::take(&mut listing);
                publish(&known);
                info!(quotas = known.len(), "quota objects in force");
            }
            Ok(watcher::Event::Apply(o)) => {
                let key = key(&o);
                match accepted(&o) {
                    Some(q) => {
                        info!(quota = %key, "quota object in force");
                        known.insert(key, q);
                    }
                    None => {
                        known.remove(&key);
                    }
                }
                publish(&known);
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = key(&o);
                known.remove(&key);
                publish(&known);
                info!(quota = %key, "quota object deleted");
            }
            Err(e) => warn!(error = %e, "watching quotas"),
        }
    }
}

fn accepted(o: &QuotaObject) -> Option<Quota> {
    match quota_of(o) {
        Ok(q) => Some(q),
        Err(e) => {
            warn!(quota = %o.name_any(), error = %e, "invalid quota object left out");
            None
        }
    }
}
