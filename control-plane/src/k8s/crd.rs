//! The `stream.space/v1alpha1` custom resources, defined in Rust: `Session`
//! (seed 000's manifests work verbatim) and `Template`. The `crdgen` binary
//! writes their YAML into `chart/crds/`; a test fails if it drifted.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Kubernetes quantity such as "500m", "2", "512Mi" or "1Gi".
const QUANTITY: &str = r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$";
/// A duration such as "30m", "1h30m", "45s".
const DURATION: &str = r"^([0-9]+(h|m|s))+$";
/// A DNS-1123 label.
const LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A user name: a letter or digit, then letters, digits, '.', '_', '@', '-'
/// (never "." or "..": it names a directory on the agent).
const USER: &str = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    #[default]
    Running,
    Hibernated,
    Terminated,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ResourceQuantities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY))]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY))]
    pub memory: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SessionResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceQuantities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceQuantities>,
}

/// A user's session: what should run, for whom, in which state.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "Session",
    namespaced,
    status = "SessionStatus",
    shortname = "sess",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Template","type":"string","jsonPath":".spec.template"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// The owner.
    #[schemars(length(min = 1, max = 63), regex(pattern = USER))]
    pub user: String,
    /// Name of a Template (API catalog or a Template object).
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL))]
    pub template: String,
    /// Desired state.
    #[serde(default)]
    pub state: SessionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SessionResources>,
    /// Keep the user's home on a volume that survives the session.
    #[serde(default)]
    pub persistent_home: bool,
    /// Hibernate after this much inactivity, e.g. "30m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub idle_timeout: Option<String>,
    /// Terminate after this much total run time, e.g. "8h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub max_session_duration: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(
        rename = "lastTransitionTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_transition_time: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// Pending, Provisioning, Running, Hibernated, Stopped, Failed or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The session's pod (or process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The agent running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplatePort {
    #[schemars(regex(pattern = LABEL))]
    pub name: String,
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A kind of session users can create; joins the control plane's catalog.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "Template",
    namespaced,
    shortname = "sstpl",
    printcolumn = r#"{"name":"Display","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub image: String,
    /// Argument vector for the process runtime (or the container command).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default)]
    pub ports: Vec<TemplatePort>,
    /// Name of the port users stream from.
    #[serde(default)]
    pub streaming_port: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_resources: Option<SessionResources>,
    #[serde(default)]
    pub persistent_home: bool,
    #[serde(default)]
    pub run_as_root: bool,
}

/// Limits on what one user holds, for one user or for each user with a
/// role: sessions, running sessions, and the CPU and memory their running
/// sessions request. Creates and wakes over a quota are refused with
/// RESOURCE_EXHAUSTED naming it. Exactly one of `user` and `role`, and at
/// least one limit.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "Quota",
    namespaced,
    shortname = "squota",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Sessions","type":"integer","jsonPath":".spec.maxSessions"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".spec.maxRunningSessions"}"#,
    printcolumn = r#"{"name":"CPU","type":"string","jsonPath":".spec.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = USER), length(max = 63))]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_sessions: Option<u64>,
    /// Total CPU the user's running sessions may request, e.g. "4".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY))]
    pub cpu: Option<String>,
    /// Total memory the user's running sessions may request, e.g. "8Gi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY))]
    pub memory: Option<String>,
}

impl QuotaSpec {
    /// The same spec in the core's terms (checked there).
    pub fn core(&self) -> crate::core::quota::QuotaSpec {
        crate::core::quota::QuotaSpec {
            user: self.user.clone(),
            role: self.role.clone(),
            max_sessions: self.max_sessions,
            max_running_sessions: self.max_running_sessions,
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
        }
    }
}

/// A CRD as the apiserver takes it without warnings: the derived schema
/// minus the formats it does not recognize (see [`super::formats`]).
fn crd<K: kube::CustomResourceExt>() -> CustomResourceDefinition {
    let mut crd = K::crd();
    super::formats::strip_unrecognized(&mut crd);
    crd
}

/// The CRD files of `chart/crds/`: (file name, YAML with a do-not-edit header).
pub fn crd_files() -> Vec<(&'static str, String)> {
    let header = "# Generated by `cargo run -p streamspace-control-plane --bin crdgen -- chart/crds`; do not edit.\n";
    let yaml = |crd| {
        format!(
            "{header}{}",
            serde_yaml::to_string(&crd).expect("CRDs serialize")
        )
    };
    vec![
        ("sessions.stream.space.yaml", yaml(crd::<Session>())),
        ("templates.stream.space.yaml", yaml(crd::<Template>())),
        ("quotas.stream.space.yaml", yaml(crd::<Quota>())),
    ]
}

#[cfg(test)]
mod tests {
    /// CI fails if the committed CRDs differ from what the code generates.
    #[test]
    fn committed_crds_match_the_code() {
        // The checkout running the test (a path compiled in may be another's).
        let here = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let dir = std::path::Path::new(&here).join("../chart/crds");
        for (name, yaml) in super::crd_files() {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == yaml,
                "chart/crds/{name} is out of date: run `cargo run -p streamspace-control-plane --bin crdgen -- chart/crds`"
            );
        }
    }

    /// Runbooks read the session's pod at `.status.pod`.
    #[test]
    fn the_pod_is_at_status_pod() {
        let status = super::SessionStatus {
            pod: Some("s1-5d8f7c-abcde".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v, serde_json::json!({"pod": "s1-5d8f7c-abcde"}));
        let crd: serde_yaml::Value = serde_yaml::from_str(&super::crd_files()[0].1).unwrap();
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"];
        assert!(status.get("pod").is_some() && status.get("podName").is_none());
    }

    /// Every `format` left in the generated CRDs is one the apiserver
    /// recognizes, so `kubectl apply` prints no "unrecognized format" warning.
    #[test]
    fn generated_crds_have_only_recognized_formats() {
        fn walk(v: &serde_yaml::Value, path: &str, bad: &mut Vec<String>) {
            match v {
                serde_yaml::Value::Mapping(m) => {
                    if let Some(f) = m.get("format").and_then(|f| f.as_str()) {
                        let type_ = m.get("type").and_then(|t| t.as_str());
                        if !crate::k8s::formats::recognized(type_, f) {
                            bad.push(format!("{path}: {type_:?} format {f:?}"));
                        }
                    }
                    for (k, v) in m {
                        walk(v, &format!("{path}.{}", k.as_str().unwrap_or("?")), bad);
                    }
                }
                serde_yaml::Value::Sequence(s) => {
                    for (i, v) in s.iter().enumerate() {
                        walk(v, &format!("{path}[{i}]"), bad);
                    }
                }
                _ => {}
            }
        }
        let mut bad = vec![];
        for (name, yaml) in super::crd_files() {
            let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
            walk(&v, name, &mut bad);
        }
        assert!(bad.is_empty(), "unrecognized formats: {bad:#?}");
    }
}
