//! The `kubernetes` runtime: per session a Deployment and a Service (and a
//! PersistentVolumeClaim for a persistent home), all by server-side apply
//! under one field manager. Hibernate scales to 0, wake to 1, stop deletes
//! (the home stays unless asked).
//!
//! Commands only apply objects and return; readiness is *watched*: reflectors
//! on the Deployments and Pods the agent owns recompute a session's phase on
//! every event and report each transition (Provisioning, Running, Hibernated,
//! Stopped, Failed with a reason a user understands). A Deployment deleted
//! behind the agent's back is reported Stopped, so the control plane re-issues
//! its start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use streamspace::v1 as pb;
use tracing::{Instrument, info, warn};

use super::kube_objects::{self as objects, OWNED, ObjectConfig, SESSION};
use super::names::{check_session, check_user, truncate};
use super::{Runtime, RuntimeError, StatusSink, status};

use pb::FailureReason as R;
use pb::SessionPhase as P;

/// Field manager of every object the agent applies.
pub const FIELD_MANAGER: &str = "streamspace-agent";
/// Field manager of replica changes (hibernate, wake).
const SCALE_MANAGER: &str = "streamspace-agent-scale";
/// Annotation with the session URL, written at start.
const URL_ANNOTATION: &str = "stream.space/url";

/// What was last reported per session, so only transitions are sent.
type Reported = Arc<Mutex<HashMap<String, (i32, String, i32, String)>>>;

pub struct KubernetesRuntime {
    cfg: ObjectConfig,
    deployments: Api<Deployment>,
    services: Api<Service>,
    claims: Api<PersistentVolumeClaim>,
    deploy_store: Store<Deployment>,
    pod_store: Store<Pod>,
    reported: Reported,
    status: StatusSink,
    /// The `kubernetes.wait_ready` span of each session this process started
    /// and has not seen ready yet; closed (dropped) when the session runs,
    /// fails or stops.
    waiting: std::sync::Mutex<HashMap<String, tracing::Span>>,
}

/// An API error as a runtime error. The API server's message may echo
/// input (names, values), so only a bounded prefix of it is kept.
fn api_err(what: &str, e: kube::Error) -> RuntimeError {
    let bounded = |m: &str| truncate(m, 256);
    match &e {
        kube::Error::Api(ae) if ae.code == 403 => RuntimeError::new(
            R::Platform,
            format!("{what}: forbidden by RBAC: {}", bounded(&ae.message)),
            false,
        ),
        kube::Error::Api(ae) if ae.code == 422 || ae.code == 400 => RuntimeError::new(
            R::Invalid,
            format!(
                "{what}: rejected by the API server: {}",
                bounded(&ae.message)
            ),
            false,
        ),
        _ => RuntimeError::new(
            R::Platform,
            format!("{what}: {}", bounded(&e.to_string())),
            true,
        ),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(ae) if ae.code == 404)
}

/// A session's observed state from its Deployment and Pods.
pub fn observe(dep: Option<&Deployment>, pods: &[Arc<Pod>]) -> (P, String, R, String, String) {
    let Some(dep) = dep else {
        return (
            P::Stopped,
            String::new(),
            R::Unspecified,
            "the session's Deployment does not exist".into(),
            String::new(),
        );
    };
    let url = dep
        .annotations()
        .get(URL_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if dep.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
        return (
            P::Hibernated,
            String::new(),
            R::Unspecified,
            "scaled to 0".into(),
            String::new(),
        );
    }
    let live: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let Some(pod) = live.first() else {
        return (
            P::Provisioning,
            String::new(),
            R::Unspecified,
            "waiting for the pod to be created".into(),
            String::new(),
        );
    };
    let name = pod.name_any();
    let st = pod.status.clone().unwrap_or_default();
    let conditions = st.conditions.unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        let why = c.message.clone().unwrap_or_default();
        return (
            P::Failed,
            String::new(),
            R::Unschedulable,
            format!("no node can run the session: {why}"),
            name,
        );
    }
    for cs in st.container_statuses.unwrap_or_default() {
        let Some(w) = cs.state.and_then(|s| s.waiting) else {
            continue;
        };
        let reason = w.reason.unwrap_or_default();
        let msg = w.message.unwrap_or_default();
        match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                return (
                    P::Failed,
                    String::new(),
                    R::Image,
                    format!("the image {} cannot be pulled ({reason}): {msg}", cs.image),
                    name,
                );
            }
            "CrashLoopBackOff" => {
                return (
                    P::Failed,
                    String::new(),
                    R::CrashLoop,
                    format!(
                        "the session keeps crashing (restarted {} times): {msg}",
                        cs.restart_count
                    ),
                    name,
                );
            }
            "CreateContainerConfigError" | "CreateContainerError" => {
                return (
                    P::Failed,
                    String::new(),
                    R::Platform,
                    format!("the container cannot be created ({reason}): {msg}"),
                    name,
                );
            }
            _ => {}
        }
    }
    if conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
    {
        return (P::Running, url, R::Unspecified, String::new(), name);
    }
    let phase = st.phase.unwrap_or_else(|| "Pending".into());
    let message = if phase == "Running" {
        format!("pod {name} is running but not ready")
    } else {
        format!("pod {name} is {phase}")
    };
    (
        P::Provisioning,
        String::new(),
        R::Unspecified,
        message,
        name,
    )
}

impl KubernetesRuntime {
    /// Starts reflectors on the objects the agent owns and the task that
    /// reports transitions. Waits until both caches are filled.
    pub async fn start(
        client: Client,
        cfg: ObjectConfig,
        status: StatusSink,
    ) -> Result<Arc<Self>, RuntimeError> {
        let ns = cfg.namespace.clone();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let (deploy_store, dw) = reflector::store();
        let (pod_store, pw) = reflector::store();
        let wc = || watcher::Config::default().labels(OWNED);
        let dstream = reflector::reflector(dw, watcher(deployments.clone(), wc()))
            .default_backoff()
            .map(|e| e.map(touched));
        let pstream = reflector::reflector(pw, watcher(pods, wc()))
            .default_backoff()
            .map(|e| e.map(touched));
        let rt = Arc::new(Self {
            services: Api::namespaced(client.clone(), &ns),
            claims: Api::namespaced(client, &ns),
            cfg,
            deployments,
            deploy_store,
            pod_store,
            reported: Default::default(),
            status,
            waiting: Default::default(),
        });
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            let mut events = futures::stream::select(dstream.boxed(), pstream.boxed());
            while let Some(ev) = events.next().await {
                let Some(rt) = weak.upgrade() else { return };
                match ev {
                    Ok(Touched::Session(s)) => rt.refresh(&s),
                    Ok(Touched::All) => {
                        for s in rt.known_sessions() {
                            rt.refresh(&s);
                        }
                    }
                    Ok(Touched::Nothing) => {}
                    Err(e) => warn!(error = %e, "watching session objects"),
                }
            }
        });
        let ready = async {
            rt.deploy_store.wait_until_ready().await.ok();
            rt.pod_store.wait_until_ready().await.ok();
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), ready)
            .await
            .map_err(|_| {
                RuntimeError::new(
                    R::Platform,
                    "the Deployment/Pod caches did not fill within 120s (RBAC? API server?)",
                    true,
                )
            })?;
        Ok(rt)
    }

    fn deployment(&self, session: &str) -> Option<Arc<Deployment>> {
        self.deploy_store
            .get(&ObjectRef::new(session).within(&self.cfg.namespace))
    }

    fn pods(&self, session: &str) -> Vec<Arc<Pod>> {
        self.pod_store
            .state()
            .into_iter()
            .filter(|p| p.labels().get(SESSION).is_some_and(|s| s == session))
            .collect()
    }

    fn known_sessions(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .deploy_store
            .state()
            .iter()
            .map(|d| d.name_any())
            .collect();
        s.extend(self.reported.lock().expect("reported").keys().cloned());
        s.sort();
        s.dedup();
        s
    }

    fn current(&self, session: &str) -> pb::SessionStatus {
        let (phase, url, reason, message, workload) =
            observe(self.deployment(session).as_deref(), &self.pods(session));
        status(session, phase, &url, reason, &message, &workload)
    }

    /// Closes the session's wait-for-ready span once `phase` ends the wait
    /// (a stop closes it too). Not on `Stopped`: right after the apply the
    /// cache may not hold the new Deployment yet, which reads as stopped.
    fn settle(&self, session: &str, phase: i32) {
        if phase != P::Running as i32 && phase != P::Failed as i32 {
            return;
        }
        if let Some(span) = self.waiting.lock().expect("waiting").remove(session) {
            let phase = P::try_from(phase).unwrap_or(P::Unspecified);
            span.record("phase", phase.as_str_name());
        }
    }

    /// Reports the session's state if it changed since the last report.
    fn refresh(&self, session: &str) {
        let st = self.current(session);
        self.settle(session, st.phase);
        let key = (st.phase, st.url.clone(), st.reason, st.message.clone());
        let mut reported = self.reported.lock().expect("reported");
        let known = reported.contains_key(session);
        if reported.get(session) == Some(&key) || (!known && st.phase == P::Stopped as i32) {
            return;
        }
        if st.phase == P::Stopped as i32 {
            reported.remove(session);
        } else {
            reported.insert(session.to_string(), key);
        }
        drop(reported);
        info!(session, phase = ?P::try_from(st.phase).unwrap_or(P::Unspecified), message = %st.message, "session transition");
        self.status.report(
            session,
            P::try_from(st.phase).unwrap_or(P::Unspecified),
            &st.url,
            R::try_from(st.reason).unwrap_or(R::Unspecified),
            &st.message,
            &st.workload,
        );
    }

    async fn scale(&self, session: &str, replicas: i32) -> Result<(), RuntimeError> {
        if self.deployment(session).is_none()
            && self
                .deployments
                .get_opt(session)
                .await
                .map_err(|e| api_err("reading the Deployment", e))?
                .is_none()
        {
            return Err(RuntimeError::not_found(session));
        }
        let pp = PatchParams {
            field_manager: Some(SCALE_MANAGER.into()),
            ..Default::default()
        };
        self.deployments
            .patch(
                session,
                &pp,
                &Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } })),
            )
            .await
            .map_err(|e| api_err("scaling the Deployment", e))?;
        Ok(())
    }
}

enum Touched {
    Session(String),
    All,
    Nothing,
}

fn touched<K: kube::Resource>(ev: watcher::Event<K>) -> Touched {
    let session = |o: &K| {
        o.meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(SESSION))
            .cloned()
    };
    match ev {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => session(&o)
            .map(Touched::Session)
            .unwrap_or(Touched::Nothing),
        watcher::Event::InitDone => Touched::All,
        watcher::Event::Init | watcher::Event::InitApply(_) => Touched::Nothing,
    }
}

#[async_trait]
impl Runtime for KubernetesRuntime {
    async fn inventory(&self) -> Result<Vec<pb::SessionStatus>, RuntimeError> {
        Ok(self
            .deploy_store
            .state()
            .iter()
            .map(|d| self.current(&d.name_any()))
            .collect())
    }

    async fn start(&self, session: &str, start: &pb::StartSession) -> Result<(), RuntimeError> {
        check_session(session)?;
        check_user(&start.user)?;
        let w = start.workload.clone().unwrap_or_default();
        if w.image.is_empty() {
            return Err(RuntimeError::new(
                R::Invalid,
                format!(
                    "template {:?} has no image; the kubernetes runtime runs images",
                    start.template
                ),
                false,
            ));
        }
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        if w.persistent_home {
            let claim = objects::home_claim(start, &self.cfg);
            self.claims
                .patch(&claim.name_any(), &pp, &Patch::Apply(&claim))
                .instrument(tracing::info_span!(
                    "kubernetes.apply",
                    kind = "PersistentVolumeClaim",
                    session
                ))
                .await
                .map_err(|e| api_err("applying the home PersistentVolumeClaim", e))?;
        }
        let svc = objects::service(session, start, &self.cfg);
        self.services
            .patch(session, &pp, &Patch::Apply(&svc))
            .instrument(tracing::info_span!(
                "kubernetes.apply",
                kind = "Service",
                session
            ))
            .await
            .map_err(|e| api_err("applying the Service", e))?;
        let mut dep = objects::deployment(session, start, 1, &self.cfg);
        dep.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                URL_ANNOTATION.into(),
                objects::session_url(session, &w, &self.cfg),
            );
        self.deployments
            .patch(session, &pp, &Patch::Apply(&dep))
            .instrument(tracing::info_span!(
                "kubernetes.apply",
                kind = "Deployment",
                session
            ))
            .await
            .map_err(|e| api_err("applying the Deployment", e))?;
        info!(session, "session objects applied");
        // Under the command's span: from here until the pod is ready.
        let wait = tracing::info_span!(
            "kubernetes.wait_ready",
            session,
            phase = tracing::field::Empty
        );
        self.waiting
            .lock()
            .expect("waiting")
            .insert(session.to_string(), wait);
        self.settle(session, self.current(session).phase);
        Ok(())
    }

    async fn stop(&self, session: &str, delete_home: bool) -> Result<(), RuntimeError> {
        self.waiting.lock().expect("waiting").remove(session);
        check_session(session)?;
        let user = match self.deployment(session) {
            Some(d) => d.annotations().get(objects::USER).cloned(),
            None => self
                .services
                .get_opt(session)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.annotations().get(objects::USER).cloned()),
        };
        let dp = DeleteParams::background();
        for r in [
            self.deployments.delete(session, &dp).await.map(|_| ()),
            self.services.delete(session, &dp).await.map(|_| ()),
        ] {
            match r {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err("deleting the session objects", e)),
            }
        }
        if delete_home && let Some(user) = user.filter(|u| check_user(u).is_ok()) {
            match self
                .claims
                .delete(&objects::home_claim_name(&user), &dp)
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err("deleting the home PersistentVolumeClaim", e)),
            }
        }
        self.reported.lock().expect("reported").remove(session);
        self.status
            .report(session, P::Stopped, "", R::Unspecified, "deleted", "");
        info!(session, delete_home, "session objects deleted");
        Ok(())
    }

    async fn hibernate(&self, session: &str) -> Result<(), RuntimeError> {
        check_session(session)?;
        self.scale(session, 0).await
    }

    async fn wake(&self, session: &str) -> Result<(), RuntimeError> {
        check_session(session)?;
        self.scale(session, 1).await
    }

    /// Running sessions (Deployments scaled above 0) and what their
    /// containers request.
    fn in_use(&self) -> pb::Capacity {
        let mut used = pb::Capacity::default();
        for d in self.deploy_store.state() {
            let Some(spec) = d.spec.as_ref().filter(|s| s.replicas.unwrap_or(1) > 0) else {
                continue;
            };
            used.max_sessions += 1;
            let containers = spec.template.spec.iter().flat_map(|p| &p.containers);
            for r in containers.filter_map(|c| c.resources.as_ref()?.requests.as_ref()) {
                let amount = |k: &str, f: fn(&str) -> Result<u64, String>| {
                    r.get(k).and_then(|q| f(&q.0).ok()).unwrap_or(0)
                };
                used.cpu_millis += amount("cpu", streamspace::quantity::cpu_millis);
                used.memory_bytes += amount("memory", streamspace::quantity::memory_bytes);
            }
        }
        used
    }
}
