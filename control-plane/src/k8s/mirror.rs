//! One view of all sessions: sessions created through the gRPC API appear as
//! Session objects (in the mirror namespace), and desired-state changes made
//! through the API are written to their `spec.state`. No update loops: the
//! mirror writes only when the object differs from the store, and the
//! controller's `set_desired` is idempotent.

use std::sync::Arc;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::convert;
use super::crd::Session;
use crate::core::{EventKind, Lifecycle, SessionEvent};

pub async fn run(
    client: Client,
    lifecycle: Arc<Lifecycle>,
    namespace: String,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let api: Api<Session> = Api::namespaced(client, &namespace);
    let mut events = lifecycle.subscribe();
    info!(namespace, "mirroring API sessions as Session objects");
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(ev) => {
                if let Err(e) = mirror(&api, &ev).await {
                    warn!(session = %ev.session.name, error = %e, "mirroring session");
                }
            }
            Err(RecvError::Lagged(n)) => warn!(
                missed = n,
                "mirror fell behind; some objects update on the next change"
            ),
            Err(RecvError::Closed) => return,
        }
    }
}

async fn mirror(api: &Api<Session>, ev: &SessionEvent) -> Result<(), kube::Error> {
    let s = &ev.session;
    let existing = api.get_opt(&s.name).await?;
    match ev.kind {
        EventKind::Deleted => {
            if let Some(o) = existing
                && o.metadata.deletion_timestamp.is_none()
                && s.external_id
                    .as_deref()
                    .is_none_or(|id| o.uid().as_deref() == Some(id))
            {
                api.delete(&s.name, &Default::default()).await?;
            }
        }
        EventKind::Added | EventKind::Modified => match existing {
            None if s.external_id.is_none() => {
                let mut obj = Session::new(&s.name, convert::spec_of(s));
                obj.annotations_mut()
                    .insert("stream.space/origin".into(), "api".into());
                api.create(&PostParams::default(), &obj).await?;
            }
            Some(o)
                if o.metadata.deletion_timestamp.is_none()
                    && s.external_id.as_deref() == o.uid().as_deref() =>
            {
                let want = convert::state(s.desired);
                if o.spec.state != want && s.desired != crate::core::model::Desired::Terminated {
                    let patch = serde_json::json!({ "spec": { "state": want } });
                    api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
            }
            _ => {}
        },
    }
    Ok(())
}
