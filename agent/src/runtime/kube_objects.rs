//! The Kubernetes objects of one session: a Deployment, a Service and, for a
//! persistent home, a PersistentVolumeClaim. Built as complete objects for
//! server-side apply under one field manager, labelled so the agent can find
//! (and only touch) what it owns.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use streamspace::v1 as pb;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "streamspace";
pub const SESSION: &str = "stream.space/session";
pub const USER: &str = "stream.space/user";
pub const TEMPLATE: &str = "stream.space/template";
/// The label selector of everything the agent owns.
pub const OWNED: &str = "app.kubernetes.io/managed-by=streamspace";
/// Where a persistent home is mounted.
pub const HOME_PATH: &str = "/home/streamspace";

/// Settings that are the cluster's, not the template's.
#[derive(Debug, Clone)]
pub struct ObjectConfig {
    pub namespace: String,
    /// Storage class of home volumes; None = the cluster default.
    pub storage_class: Option<String>,
    /// Home volume size when the template names none.
    pub home_size: String,
    /// Cluster DNS suffix for session URLs.
    pub cluster_domain: String,
}

/// A label value from free text: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

pub fn labels(session: &str, user: &str, template: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (SESSION.to_string(), session.to_string()),
        (USER.to_string(), label_value(user)),
        (TEMPLATE.to_string(), label_value(template)),
    ])
}

/// The home volume of `user` (per user, so it outlives sessions). A user
/// name that is already a lowercase DNS label names its claim as it is;
/// any other is mapped to a label plus a hash of the exact name, so two
/// users whose names differ only in case or punctuation ("Alice", "alice",
/// "a.b", "a-b") never share a home. The '.' before the hash cannot occur in
/// the first form, so no user name maps onto another's hashed claim.
pub fn home_claim_name(user: &str) -> String {
    use sha2::Digest;
    let plain = label_value(&user.to_ascii_lowercase()).replace(['_', '.'], "-");
    let plain = plain.trim_matches('-');
    if plain == user {
        return format!("home-{plain}");
    }
    let digest = sha2::Sha256::digest(user.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let head: String = plain.chars().take(40).collect();
    let head = head.trim_matches('-');
    if head.is_empty() {
        format!("home-{hash}")
    } else {
        format!("home-{head}.{hash}")
    }
}

fn meta(
    name: &str,
    cfg: &ObjectConfig,
    labels: &BTreeMap<String, String>,
    user: &str,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(cfg.namespace.clone()),
        labels: Some(labels.clone()),
        annotations: Some(BTreeMap::from([(USER.to_string(), user.to_string())])),
        ..Default::default()
    }
}

fn quantities(l: &Option<pb::ResourceList>) -> Option<BTreeMap<String, Quantity>> {
    let l = l.as_ref()?;
    let mut m = BTreeMap::new();
    if !l.cpu.is_empty() {
        m.insert("cpu".to_string(), Quantity(l.cpu.clone()));
    }
    if !l.memory.is_empty() {
        m.insert("memory".to_string(), Quantity(l.memory.clone()));
    }
    (!m.is_empty()).then_some(m)
}

/// The port users stream from: the named streaming port, else the first.
pub fn streaming_port(w: &pb::WorkloadSpec) -> Option<&pb::PortSpec> {
    w.ports
        .iter()
        .find(|p| p.name == w.streaming_port)
        .or_else(|| w.ports.first())
}

pub fn session_url(session: &str, w: &pb::WorkloadSpec, cfg: &ObjectConfig) -> String {
    let port = streaming_port(w).map(|p| p.container_port).unwrap_or(80);
    format!(
        "http://{session}.{}.svc.{}:{port}/",
        cfg.namespace, cfg.cluster_domain
    )
}

pub fn deployment(
    session: &str,
    start: &pb::StartSession,
    replicas: i32,
    cfg: &ObjectConfig,
) -> Deployment {
    let w = start.workload.clone().unwrap_or_default();
    let labels = labels(session, &start.user, &start.template);
    let mut env: Vec<EnvVar> = w
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    env.sort_by(|a, b| a.name.cmp(&b.name));
    for (k, v) in [("SESSION_ID", session), ("USER", start.user.as_str())] {
        env.push(EnvVar {
            name: k.into(),
            value: Some(v.into()),
            ..Default::default()
        });
    }
    let (mut volumes, mut mounts) = (vec![], vec![]);
    if w.persistent_home {
        volumes.push(Volume {
            name: "home".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: home_claim_name(&start.user),
                read_only: None,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "home".into(),
            mount_path: HOME_PATH.into(),
            ..Default::default()
        });
        env.push(EnvVar {
            name: "HOME".into(),
            value: Some(HOME_PATH.into()),
            ..Default::default()
        });
    }
    let non_root = !w.run_as_root;
    let container = Container {
        name: "session".into(),
        image: Some(w.image.clone()),
        command: (!w.command.is_empty()).then(|| w.command.clone()),
        ports: Some(
            w.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: p.container_port as i32,
                    ..Default::default()
                })
                .collect(),
        ),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: quantities(&w.resources.as_ref().and_then(|r| r.requests.clone())),
            limits: quantities(&w.resources.as_ref().and_then(|r| r.limits.clone())),
            ..Default::default()
        }),
        security_context: non_root.then(|| SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    Deployment {
        metadata: meta(session, cfg, &labels, &start.user),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(SESSION.to_string(), session.to_string())])),
                ..Default::default()
            },
            // One pod per session: never two at once (a home volume is RWO).
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    security_context: non_root.then(|| PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(1000),
                        fs_group: Some(1000),
                        ..Default::default()
                    }),
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service(session: &str, start: &pb::StartSession, cfg: &ObjectConfig) -> Service {
    let w = start.workload.clone().unwrap_or_default();
    let labels = labels(session, &start.user, &start.template);
    let mut ports: Vec<ServicePort> = w
        .ports
        .iter()
        .map(|p| ServicePort {
            name: Some(p.name.clone()),
            port: p.container_port as i32,
            target_port: Some(IntOrString::String(p.name.clone())),
            ..Default::default()
        })
        .collect();
    if ports.is_empty() {
        ports.push(ServicePort {
            name: Some("http".into()),
            port: 80,
            ..Default::default()
        });
    }
    Service {
        metadata: meta(session, cfg, &labels, &start.user),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(SESSION.to_string(), session.to_string())])),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn home_claim(start: &pb::StartSession, cfg: &ObjectConfig) -> PersistentVolumeClaim {
    let w = start.workload.clone().unwrap_or_default();
    let mut labels = labels("", &start.user, &start.template);
    labels.remove(SESSION);
    labels.remove(TEMPLATE);
    let size = if w.home_size.is_empty() {
        cfg.home_size.clone()
    } else {
        w.home_size.clone()
    };
    PersistentVolumeClaim {
        metadata: meta(&home_claim_name(&start.user), cfg, &labels, &start.user),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: cfg.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> pb::StartSession {
        pb::StartSession {
            user: "Alice@example.com".into(),
            template: "firefox-browser".into(),
            workload: Some(pb::WorkloadSpec {
                image: "firefox:1".into(),
                ports: vec![pb::PortSpec {
                    name: "http".into(),
                    container_port: 5800,
                }],
                streaming_port: "http".into(),
                persistent_home: true,
                resources: Some(pb::Resources {
                    requests: Some(pb::ResourceList {
                        cpu: "500m".into(),
                        memory: "1Gi".into(),
                    }),
                    limits: None,
                }),
                ..Default::default()
            }),
        }
    }

    fn cfg() -> ObjectConfig {
        ObjectConfig {
            namespace: "ns".into(),
            storage_class: Some("fast".into()),
            home_size: "5Gi".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn deployment_shape() {
        let d = deployment("s1", &start(), 1, &cfg());
        let labels = d.metadata.labels.clone().unwrap();
        assert_eq!(labels[MANAGED_BY], "streamspace");
        assert_eq!(labels[SESSION], "s1");
        assert_eq!(labels[USER], "Alice-example.com");
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let c = &pod.containers[0];
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"],
            Quantity("500m".into())
        );
        assert_eq!(
            pod.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            home_claim_name("Alice@example.com")
        );
    }

    #[test]
    fn distinct_users_get_distinct_valid_claims() {
        assert_eq!(home_claim_name("alice"), "home-alice");
        let names: Vec<String> = ["alice", "Alice", "a.b", "a-b", "a_b", "a@b", "a-b.x", "a"]
            .iter()
            .map(|u| home_claim_name(u))
            .collect();
        let distinct: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        for n in &names {
            assert!(n.len() <= 253, "{n}");
            assert!(
                n.split('.').all(|l| !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')),
                "{n} is a DNS subdomain"
            );
        }
    }

    #[test]
    fn claim_and_url() {
        let c = home_claim(&start(), &cfg());
        assert_eq!(c.spec.unwrap().storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            session_url("s1", start().workload.as_ref().unwrap(), &cfg()),
            "http://s1.ns.svc.cluster.local:5800/"
        );
    }
}
