//! The chart refuses bad values: a real `helm install` against the test cluster
//! (tests/k8s/cluster.sh) fails with a message naming the key to fix, and
//! leaves no release and no object labelled with it. The refusals come from
//! chart/values.schema.json (unknown keys, types, ranges, patterns) and from
//! the chart's rules across keys (templates/validate.yaml).

use streamspace_tests::helm::{Helm, describe, release_name};
use streamspace_tests::k8s::cluster;

/// Whether helm's message names `key` (dotted, e.g. "controlPlane.replicaCount"):
/// dotted, as a JSON pointer ("/controlPlane/replicaCount", as schema errors
/// say), or, for an unknown key, its name on a line naming its parent.
fn names_key(text: &str, key: &str) -> bool {
    let pointer = |k: &str| format!("/{}", k.replace('.', "/"));
    if text.contains(key) || text.contains(&pointer(key)) {
        return true;
    }
    let (parent, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let leaf = format!("'{leaf}'");
    text.lines().any(|l| {
        l.contains(&leaf)
            && (parent.is_empty() || l.contains(parent) || l.contains(&pointer(parent)))
    })
}

/// (what is wrong, helm arguments, the keys of which the message must name one).
const CASES: &[(&str, &[&str], &[&str])] = &[
    (
        "unknown top-level key",
        &["--set", "nosuchKey=1"],
        &["nosuchKey"],
    ),
    (
        "unknown nested key",
        &["--set", "controlPlane.nosuch=1"],
        &["controlPlane.nosuch"],
    ),
    (
        "unknown deeply nested key",
        &["--set", "k8sAgent.config.nosuch=1"],
        &["k8sAgent.config.nosuch"],
    ),
    (
        "negative replicas",
        &["--set", "controlPlane.replicaCount=-1"],
        &["controlPlane.replicaCount"],
    ),
    (
        "SQLite with 2 control-plane replicas",
        &["--set", "controlPlane.replicaCount=2"],
        &["controlPlane.database", "controlPlane.replicaCount"],
    ),
    (
        "3 agent replicas without HA",
        &["--set", "k8sAgent.replicaCount=3"],
        &["k8sAgent.ha.enabled"],
    ),
    (
        "control-plane URL not https://host[:port]",
        &["--set", "k8sAgent.config.controlPlaneUrl=ftp://x"],
        &["k8sAgent.config.controlPlaneUrl"],
    ),
    (
        "empty agent id",
        &["--set", "k8sAgent.config.agentId="],
        &["k8sAgent.config.agentId"],
    ),
    (
        "string for a boolean",
        &["--set-string", "k8sAgent.ha.enabled=yes"],
        &["k8sAgent.ha.enabled"],
    ),
    (
        "string for an integer",
        &["--set", "controlPlane.replicaCount=abc"],
        &["controlPlane.replicaCount"],
    ),
    (
        "misspelled quota limit",
        &["--set", "controlPlane.quotas.students.maxSesions=1"],
        &["controlPlane.quotas.students.maxSesions", "maxSesions"],
    ),
    (
        "bad resource quantity",
        &["--set", "controlPlane.resources.limits.memory=lots"],
        &["controlPlane.resources.limits.memory"],
    ),
];

#[tokio::test]
async fn bad_values_are_refused_and_install_nothing() {
    let Some(k) = cluster().await else { return };
    let Some(helm) = Helm::for_cluster(&k) else {
        return;
    };
    let ns = k.namespace("chart-values");

    // The same install with the defaults gets past every check (so the
    // refusals below are the values' doing, not a broken chart or cluster).
    let base = release_name("values-ok");
    let out = helm.install(&base, &ns, &["--dry-run=server"]);
    assert!(
        out.status.success(),
        "the chart's defaults are refused: {}",
        describe(&out)
    );

    let mut failures = vec![];
    let mut releases = vec![];
    for (i, (what, args, keys)) in CASES.iter().enumerate() {
        let release = release_name(&format!("bad-{i}"));
        let out = helm.install(&release, &ns, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!(
                "{what} ({args:?}) was INSTALLED: {}",
                describe(&out)
            ));
        } else if !keys.iter().any(|key| names_key(&stderr, key)) {
            failures.push(format!(
                "{what} ({args:?}) was refused without naming {keys:?}: {}",
                describe(&out)
            ));
        }
        releases.push(release);
    }

    let listed = helm.releases();
    for r in listed.iter().filter(|(name, ..)| releases.contains(name)) {
        failures.push(format!("`helm list -A -a` shows {r:?}"));
    }
    let objects = helm.release_objects(&releases);
    if !objects.is_empty() {
        failures.push(format!(
            "objects of the refused releases exist: {objects:?}"
        ));
    }
    k.delete_namespace(&ns);
    assert!(
        failures.is_empty(),
        "{} problem(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `controlPlane.quotas` becomes the `--quotas` file the control plane
/// reads: rendered, it parses into the same quotas (plain numbers too).
#[tokio::test]
async fn quota_values_render_a_quotas_file_the_control_plane_reads() {
    let Some(k) = cluster().await else { return };
    let Some(helm) = Helm::for_cluster(&k) else {
        return;
    };
    let out = helm.with_chart(
        "template",
        "quotas",
        "default",
        &[
            "--set-json",
            r#"controlPlane.quotas={"students":{"role":"students","maxRunningSessions":1,"cpu":2,"memory":"4Gi"}}"#,
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_yaml::Value> = text
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .collect();
    let cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"] == "quotas-streamspace-control-plane-quotas"
        })
        .expect("the quotas ConfigMap");
    let file = cm["data"]["quotas.yaml"].as_str().unwrap();
    let quotas = streamspace_control_plane::quotas::parse(file).unwrap();
    assert_eq!(quotas.len(), 1);
    assert_eq!(quotas[0].limits.running, Some(1));
    assert_eq!(quotas[0].limits.cpu_millis, Some(2000));
    assert!(text.contains("- --quotas=/etc/streamspace/quotas/quotas.yaml"));
    // Without quotas: no ConfigMap, no flag.
    let out = helm.with_chart("template", "quotas", "default", &[]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("--quotas"));
}
