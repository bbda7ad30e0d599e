//! The chart refuses bad values: a real `helm install` against the test cluster
//! (tests/k8s/cluster.sh) fails with a message naming the key to fix, and
//! leaves no release and no object labelled with it. The refusals come from
//! chart/values.schema.json (unknown keys, types, ranges, patterns) and from
//! the chart's rules across keys (templates/validate.yaml).

use serde_yaml::Value;
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
        "a TLS trace collector (only plain http:// is supported)",
        &[
            "--set",
            "monitoring.tracing.otlpEndpoint=https://collector:4317",
        ],
        &["monitoring.tracing.otlpEndpoint"],
    ),
    (
        "a retention with no unit",
        &["--set-string", "controlPlane.policies.retention=7"],
        &[
            "controlPlane/policies/retention",
            "controlPlane.policies.retention",
        ],
    ),
    (
        "a zero retry backoff",
        &["--set", "controlPlane.policies.retryBackoff=0s"],
        &[
            "controlPlane/policies/retryBackoff",
            "controlPlane.policies.retryBackoff",
        ],
    ),
    (
        "negative command retries",
        &["--set", "controlPlane.policies.commandRetries=-1"],
        &[
            "controlPlane/policies/commandRetries",
            "controlPlane.policies.commandRetries",
        ],
    ),
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
    (
        "ServiceMonitor without the control plane's metrics",
        &["--set", "monitoring.serviceMonitor.enabled=true"],
        &["controlPlane.metrics.enabled"],
    ),
    (
        "PodMonitor without the agent's metrics",
        &["--set", "monitoring.podMonitor.enabled=true"],
        &["k8sAgent.metrics.enabled"],
    ),
    (
        "agent metrics on the health port",
        &[
            "--set",
            "k8sAgent.metrics.enabled=true",
            "--set",
            "k8sAgent.metrics.port=8081",
        ],
        &["k8sAgent.metrics.port"],
    ),
    (
        "scrape interval not a duration",
        &["--set", "monitoring.serviceMonitor.interval=30"],
        &["monitoring.serviceMonitor.interval"],
    ),
    (
        "latency SLO of 0 seconds",
        &[
            "--set",
            "monitoring.prometheusRule.commandLatencySloSeconds=0",
        ],
        &["monitoring.prometheusRule.commandLatencySloSeconds"],
    ),
    (
        "certificate expiry bound of 0 days",
        &["--set", "monitoring.prometheusRule.certificateExpiryDays=0"],
        &["monitoring.prometheusRule.certificateExpiryDays"],
    ),
    (
        "unknown monitoring key",
        &["--set", "monitoring.grafanaDashboard.folder=x"],
        &["monitoring.grafanaDashboard.folder"],
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

/// `controlPlane.policies` become the control plane's policy flags: the
/// rendered container's whole argument list parses with the control plane's
/// own CLI into the values given.
#[test]
fn policy_values_render_flags_the_control_plane_accepts() {
    let Some(helm) = Helm::offline() else { return };
    let objects = helm.render(
        "policies",
        "default",
        &[
            "--set-json",
            r#"controlPlane.policies={"retention":"36h","commandRetries":5,"retryBackoff":"250ms","maxDurationWarning":"10m"}"#,
        ],
    );
    let d = object(&objects, "Deployment", "policies-streamspace-control-plane")
        .expect("the control-plane Deployment");
    let args: Vec<String> = d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("a string argument").to_string())
        .collect();
    use clap::Parser;
    let argv = std::iter::once("streamspace-control-plane".to_string()).chain(args);
    let cli =
        streamspace_control_plane::cli::Cli::try_parse_from(argv.clone()).unwrap_or_else(|e| {
            panic!(
                "the rendered arguments {:?} are refused: {e}",
                argv.collect::<Vec<_>>()
            )
        });
    let streamspace_control_plane::cli::Command::Serve(serve) = cli.command else {
        panic!("the control plane does not serve");
    };
    let t = &serve.tuning;
    use std::time::Duration;
    assert_eq!(
        (
            t.retention,
            t.command_retries,
            t.retry_backoff,
            t.max_duration_warning
        ),
        (
            Duration::from_secs(36 * 3600),
            5,
            Duration::from_millis(250),
            Duration::from_secs(600)
        )
    );
}

/// The object of `kind` named `name` among `objects`.
fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("matchLabels");
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels[k.as_str().unwrap()] == *v)
}

/// The agent container of the rendered agent Deployment.
fn agent_container(objects: &[Value], release: &str) -> Value {
    let d = object(
        objects,
        "Deployment",
        &format!("{release}-streamspace-k8s-agent"),
    )
    .expect("the agent Deployment");
    d["spec"]["template"]["spec"]["containers"][0].clone()
}

fn has_metrics_port(container: &Value, port: u64) -> bool {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["containerPort"].as_u64() == Some(port))
}

/// The monitoring values render nothing by default; turned on, a
/// ServiceMonitor selecting the control plane's metrics Service, a
/// PodMonitor selecting the agent pods (which then serve metrics on a named
/// port), the PrometheusRule and the dashboard ConfigMap for Grafana's
/// sidecar, each with its extra labels.
#[test]
fn monitoring_values_render_the_monitoring_objects() {
    let Some(helm) = Helm::offline() else { return };
    const MONITORING_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

    let off = helm.render("mon", "monitoring", &[]);
    for o in &off {
        let kind = o["kind"].as_str().unwrap_or_default();
        assert!(
            !MONITORING_KINDS.contains(&kind),
            "rendered by default: {kind}"
        );
        assert!(
            o["metadata"]["labels"]["grafana_dashboard"].is_null(),
            "a dashboard ConfigMap by default"
        );
    }
    let agent = agent_container(&off, "mon");
    assert!(!format!("{:?}", agent["args"]).contains("--metrics-addr"));
    assert!(!has_metrics_port(&agent, 9091));

    let on = helm.render(
        "mon",
        "monitoring",
        &[
            "--set",
            "controlPlane.metrics.enabled=true",
            "--set",
            "k8sAgent.metrics.enabled=true",
            "--set",
            "k8sAgent.extraArgs={--stop-grace-seconds=5}",
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set",
            "monitoring.serviceMonitor.interval=15s",
            "--set",
            "monitoring.serviceMonitor.labels.release=prom",
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            "monitoring.podMonitor.labels.release=prom",
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
            "--set",
            "monitoring.grafanaDashboard.annotations.grafana_folder=StreamSpace",
        ],
    );

    // ServiceMonitor -> the headless metrics Service, its `metrics` port.
    let sm =
        object(&on, "ServiceMonitor", "mon-streamspace-control-plane").expect("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"][0],
        "monitoring"
    );
    let services: Vec<&Value> = on
        .iter()
        .filter(|o| o["kind"] == "Service")
        .filter(|s| {
            selects(
                &sm["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    assert_eq!(services.len(), 1, "the ServiceMonitor selects {services:?}");
    assert_eq!(services[0]["metadata"]["name"], "mon-streamspace-metrics");
    assert_eq!(services[0]["spec"]["ports"][0]["name"], "metrics");

    // PodMonitor -> the agent pods, which serve metrics on port `metrics`.
    let pm = object(&on, "PodMonitor", "mon-streamspace-k8s-agent").expect("PodMonitor");
    assert_eq!(pm["metadata"]["labels"]["release"], "prom");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let deployment = object(&on, "Deployment", "mon-streamspace-k8s-agent").unwrap();
    assert!(selects(
        &pm["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let cp = object(&on, "Deployment", "mon-streamspace-control-plane").unwrap();
    assert!(!selects(
        &pm["spec"]["selector"]["matchLabels"],
        &cp["spec"]["template"]["metadata"]["labels"]
    ));
    let agent = agent_container(&on, "mon");
    let args: Vec<&str> = agent["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["--metrics-addr=0.0.0.0:9091", "--stop-grace-seconds=5"]
    );
    assert!(has_metrics_port(&agent, 9091));

    // The PrometheusRule, controller alert included (the controller is on).
    let rule = object(&on, "PrometheusRule", "mon-streamspace").expect("PrometheusRule");
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for a in [
        "AgentDisconnected",
        "OutboxGrowing",
        "CommandLatencySLO",
        "CertificateExpiringSoon",
        "ControllerNotReconciling",
    ] {
        assert!(alerts.contains(&a), "{a} missing from {alerts:?}");
    }

    // The dashboard ConfigMap holds the dashboard file as it is.
    let cm = object(&on, "ConfigMap", "mon-streamspace-dashboard").expect("dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        cm["metadata"]["annotations"]["grafana_folder"],
        "StreamSpace"
    );
    let json: serde_json::Value =
        serde_json::from_str(cm["data"]["streamspace.json"].as_str().unwrap()).unwrap();
    let file = std::fs::read_to_string(
        streamspace_tests::helm::chart_dir().join("files/dashboards/streamspace.json"),
    )
    .unwrap();
    assert_eq!(
        json,
        serde_json::from_str::<serde_json::Value>(&file).unwrap()
    );

    // Another agent metrics port; no controller, no controller alert.
    let other = helm.render(
        "mon",
        "monitoring",
        &[
            "--set",
            "k8sAgent.metrics.enabled=true",
            "--set",
            "k8sAgent.metrics.port=9300",
            "--set",
            "controller.enabled=false",
            "--set",
            "monitoring.prometheusRule.enabled=true",
        ],
    );
    let agent = agent_container(&other, "mon");
    assert_eq!(agent["args"][0], "--metrics-addr=0.0.0.0:9300");
    assert!(has_metrics_port(&agent, 9300));
    let rule = object(&other, "PrometheusRule", "mon-streamspace").unwrap();
    let text = serde_yaml::to_string(&rule["spec"]).unwrap();
    assert!(text.contains("AgentDisconnected"));
    assert!(!text.contains("ControllerNotReconciling"), "{text}");
}

/// `monitoring.tracing` gives both the control plane and the agent the
/// standard OpenTelemetry variables; unset, neither gets any.
#[test]
fn tracing_values_set_the_otel_variables_of_both() {
    let Some(helm) = Helm::offline() else { return };
    let env_of = |objects: &[Value], name: &str| -> Vec<(String, String)> {
        let d = object(objects, "Deployment", name).expect("the Deployment");
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|e| e["name"].as_str().unwrap_or("").starts_with("OTEL_"))
            .map(|e| {
                let v = match &e["value"] {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                (e["name"].as_str().unwrap().to_string(), v)
            })
            .collect()
    };
    let deployments = ["tr-streamspace-control-plane", "tr-streamspace-k8s-agent"];
    let off = helm.render("tr", "tracing", &[]);
    for d in deployments {
        assert_eq!(env_of(&off, d), vec![], "{d}");
    }
    let on = helm.render(
        "tr",
        "tracing",
        &[
            "--set",
            "monitoring.tracing.otlpEndpoint=http://jaeger.observability:4317",
            "--set",
            "monitoring.tracing.sampler=parentbased_traceidratio",
            "--set",
            "monitoring.tracing.samplerArg=0.25",
        ],
    );
    let want: Vec<(String, String)> = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://jaeger.observability:4317",
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for d in deployments {
        assert_eq!(env_of(&on, d), want, "{d}");
    }
}
