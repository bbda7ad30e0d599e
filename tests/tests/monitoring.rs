//! The monitoring the chart ships, against the real tools:
//! * the alert rules (chart/files/prometheus-rules.yaml) pass `promtool check
//!   rules`, as they are and as the chart's PrometheusRule renders them;
//! * `promtool test rules` runs tests/monitoring/alerts_test.yaml, in which
//!   every alert fires on the series it is for and not on healthy ones;
//! * a real Prometheus scraping a real control plane, loaded with the rules:
//!   a server certificate 10 days from expiry raises CertificateExpiringSoon,
//!   an agent that goes away raises AgentDisconnected and nothing else fires;
//!   every PromQL expression of the Grafana dashboard evaluates, names only
//!   documented metrics, and those the control plane exports show data;
//!   the dashboard is what Grafana loads (schema, variables, grid).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::helm::Helm;
use streamspace_tests::prom::{MetricsCp, Prometheus, http_get, promtool, require};
use streamspace_tests::*;

fn repo() -> PathBuf {
    repo_path("")
}

fn rules_file() -> PathBuf {
    repo().join("chart/files/prometheus-rules.yaml")
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rules of the file's groups.
fn rules(file: &Value) -> Vec<Value> {
    file["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alert_names(file: &Value) -> BTreeSet<String> {
    rules(file)
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// Metrics the rules and the dashboard may name although
/// docs/OBSERVABILITY.md does not list them (yet): the agent's own (served by
/// `streamspace-agent --metrics-addr`) and the control plane's store, Session
/// controller and API metrics. A name neither here nor there is a mistake.
const ELSEWHERE: &[&str] = &[
    "streamspace_agent_commands_applied_total",
    "streamspace_agent_runtime_seconds",
    "streamspace_agent_reconnects_total",
    "streamspace_agent_connected",
    "streamspace_agent_leader",
    "streamspace_store_transaction_seconds",
    "streamspace_store_group_commit_size",
    "streamspace_controller_running",
    "streamspace_controller_reconciles_total",
    "streamspace_controller_reconcile_seconds",
    "streamspace_api_requests_total",
    "streamspace_api_request_seconds",
];

/// The metric families an expression names (`_bucket`, `_count` and `_sum`
/// taken off histogram series).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("streamspace_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

/// Every rule has a `for`, a severity and both annotations.
#[test]
fn every_alert_has_a_severity_annotations_and_a_for() {
    let file = read_yaml(&rules_file());
    assert_eq!(file["groups"][0]["name"], "streamspace");
    let rules = rules(&file);
    assert!(rules.len() >= 6, "{rules:?}");
    for r in &rules {
        let name = r["alert"].as_str().expect("only alerting rules");
        assert!(r["for"].as_str().is_some(), "{name}: no `for`");
        assert!(
            ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: no {a}"
            );
        }
    }
}

/// The rule file, and the PrometheusRule the chart renders from it (with the
/// default thresholds and with others), pass `promtool check rules`; the
/// rendered rules are the file's, but for the two thresholds.
#[test]
fn the_rules_pass_promtool_as_written_and_as_rendered() {
    let Some(promtool_bin) = require("promtool") else {
        return;
    };
    let Some(helm) = Helm::offline() else { return };
    promtool(
        &promtool_bin,
        &["check", "rules", rules_file().to_str().unwrap()],
        "",
    );
    let source = read_yaml(&rules_file());
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.labels.release=kube-prometheus",
    ];
    for (i, thresholds) in [
        &[][..],
        &[
            "--set",
            "monitoring.prometheusRule.commandLatencySloSeconds=7.5",
            "--set",
            "monitoring.prometheusRule.certificateExpiryDays=30",
        ][..],
    ]
    .iter()
    .enumerate()
    {
        let args: Vec<&str> = base.iter().chain(thresholds.iter()).copied().collect();
        let objects = helm.render("mon", "monitoring", &args);
        let rule = objects
            .iter()
            .find(|o| o["kind"] == "PrometheusRule")
            .expect("a PrometheusRule");
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
        let spec = &rule["spec"];
        let path = tmp.path().join(format!("rendered-{i}.yaml"));
        std::fs::write(&path, serde_yaml::to_string(spec).unwrap()).unwrap();
        promtool(
            &promtool_bin,
            &["check", "rules", path.to_str().unwrap()],
            "",
        );

        // The same rules as the file; only the thresholds may differ.
        let (slo, days) = if thresholds.is_empty() {
            ("5", "14")
        } else {
            ("7.5", "30")
        };
        let mut expected = source.clone();
        for r in expected["groups"][0]["rules"].as_sequence_mut().unwrap() {
            let expr = r["expr"].as_str().unwrap().to_string();
            let expr = expr
                .replace(
                    "> 5 # commandLatencySloSeconds",
                    &format!("> {slo} # commandLatencySloSeconds"),
                )
                .replace(
                    "< 14 * 86400 # certificateExpiryDays",
                    &format!("< {days} * 86400 # certificateExpiryDays"),
                );
            r["expr"] = Value::String(expr);
        }
        let (got, want) = (rules(spec), rules(&expected));
        assert_eq!(got.len(), want.len(), "rendered rules {i}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "rendered rule {:?} ({i})", w["alert"]);
        }
        assert_eq!(spec["groups"][0]["name"], "streamspace");
        let expr_of = |alert: &str| {
            rules(spec)
                .into_iter()
                .find(|r| r["alert"] == alert)
                .unwrap_or_else(|| panic!("no {alert}"))["expr"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(expr_of("CommandLatencySLO").contains(&format!("> {slo} #")));
        assert!(expr_of("CertificateExpiringSoon").contains(&format!("< {days} * 86400")));
    }
}

/// `promtool test rules`: each alert fires exactly on its series, and a test
/// expects every alert of the file to fire somewhere.
#[test]
fn alerts_fire_on_their_series_and_not_on_healthy_ones() {
    let Some(promtool_bin) = require("promtool") else {
        return;
    };
    let tests = repo().join("tests/monitoring/alerts_test.yaml");
    promtool(
        &promtool_bin,
        &["test", "rules", tests.to_str().unwrap()],
        "",
    );
    let fired: BTreeSet<String> = read_yaml(&tests)["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap().clone())
        .filter(|a| a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()))
        .map(|a| a["alertname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fired, alert_names(&read_yaml(&rules_file())));
}

/// The dashboard's PromQL, Grafana's variables given values Prometheus reads.
fn dashboard_exprs() -> Vec<String> {
    let path = repo().join("chart/files/dashboards/streamspace.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dash["templating"]["list"][0]["name"], "datasource");
    let mut exprs = vec![];
    let mut panels: Vec<serde_json::Value> = dash["panels"].as_array().unwrap().clone();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            let expr = t["expr"].as_str().expect("a PromQL target");
            exprs.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$__interval", "15s")
                    .replace("$__range", "1h")
                    .replace("$namespace", ".*"),
            );
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

/// What Grafana needs of the dashboard beyond PromQL: schema 39, a stable
/// uid, the `datasource` variable every panel reads, unique panel ids, and
/// panels that fit the 24-column grid without overlapping.
#[test]
fn the_dashboard_is_well_formed() {
    let path = repo().join("chart/files/dashboards/streamspace.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dash["schemaVersion"], 39);
    assert_eq!(dash["uid"], "streamspace");
    let var = &dash["templating"]["list"][0];
    assert_eq!(
        (&var["name"], &var["type"], &var["query"]),
        (
            &serde_json::json!("datasource"),
            &serde_json::json!("datasource"),
            &serde_json::json!("prometheus")
        )
    );
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = vec![];
    for p in panels {
        let title = p["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate id: {title}"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{title}"
            );
        }
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap());
        assert!(x >= 0 && w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for (x2, y2, w2, h2, other) in &boxes {
            let apart = x + w <= *x2 || x2 + w2 <= x || y + h <= *y2 || y2 + h2 <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title));
    }
}

/// The alerts Prometheus holds: (name, state, labels).
fn alerts(prom: &Prometheus) -> Vec<(String, String, serde_json::Value)> {
    let body = http_get(prom.addr, "/api/v1/alerts");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
                a["labels"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_raises_the_alerts_and_evaluates_the_dashboard() {
    init();
    let Some(prometheus) = require("prometheus") else {
        return;
    };
    // The server certificate expires in 10 days: under the 14-day bound.
    let MetricsCp {
        pki,
        tmp,
        cp,
        metrics,
    } = MetricsCp::start(Duration::from_secs(10 * 86_400)).await;
    let _stays = NoopAgents::start(&pki, cp.agent_addr, &[("mon-stays", 0)]);
    let leaves = NoopAgents::start(&pki, cp.agent_addr, &[("mon-leaves", 0)]);
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.wait_agents(2, 30).await;
    // Traffic for the command panels; the sessions stay (sessions by phase).
    for i in 0..3 {
        let name = format!("mon-{i}");
        api.create(&name, "static-files").await.unwrap();
        api.wait_phase(&name, streamspace::v1::SessionPhase::Running, 30)
            .await;
    }

    // The rules as written, with every `for` at 0 s: the waits are
    // alerts_test.yaml's business, here the expressions meet real series.
    let mut rules_doc = read_yaml(&rules_file());
    for r in rules_doc["groups"][0]["rules"].as_sequence_mut().unwrap() {
        r["for"] = Value::String("0s".into());
    }
    let rules_path = tmp.path().join("rules.yaml");
    std::fs::write(&rules_path, serde_yaml::to_string(&rules_doc).unwrap()).unwrap();
    let prom = Prometheus::start(&prometheus, tmp.path(), &[metrics], &[rules_path]);
    wait_for("Prometheus to see both agents", 60, || async {
        (prom.query("streamspace_agents_connected")? == 2.0).then_some(())
    })
    .await;
    drop(leaves);
    wait_for("Prometheus to see mon-leaves go", 60, || async {
        (prom.query("streamspace_agents_connected")? == 1.0).then_some(())
    })
    .await;

    // Exactly these fire: the server certificate's and the agent that left.
    let active = wait_for(
        "CertificateExpiringSoon and AgentDisconnected",
        60,
        || async {
            let all = alerts(&prom);
            let firing = |name: &str, label: &str, value: &str| {
                all.iter()
                    .any(|(n, s, l)| n == name && s == "firing" && l[label] == value)
            };
            (firing("CertificateExpiringSoon", "certificate", "server")
                && firing("AgentDisconnected", "agent", "mon-leaves"))
            .then_some(all)
        },
    )
    .await;
    let mut got: Vec<String> = active
        .iter()
        .map(|(name, state, labels)| {
            let who = ["certificate", "agent"]
                .iter()
                .find_map(|k| labels[k].as_str())
                .unwrap_or("");
            format!("{name} {state} {who}")
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "AgentDisconnected firing mon-leaves",
            "CertificateExpiringSoon firing server"
        ],
        "alerts: {active:?}"
    );
    let expiry = prom
        .query(r#"ALERTS{alertname="CertificateExpiringSoon",alertstate="firing"}"#)
        .unwrap();
    assert_eq!(expiry, 1.0);

    // The dashboard: every expression evaluates (results() asserts status
    // success), names only metrics that exist, and those the control plane
    // exports show data (but failures and refusals, of which there are none).
    let exposed: BTreeSet<String> = http_get(metrics, "/metrics")
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    // docs/OBSERVABILITY.md lists every metric, those without samples yet
    // (which the exposition leaves out) included.
    let documented =
        metric_names(&std::fs::read_to_string(repo().join("docs/OBSERVABILITY.md")).unwrap());
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported, not in docs/OBSERVABILITY.md: {undocumented:?}"
    );
    let known = |name: &String| documented.contains(name) || ELSEWHERE.contains(&name.as_str());
    for r in rules(&rules_doc) {
        let expr = r["expr"].as_str().unwrap();
        let unknown: Vec<_> = metric_names(expr)
            .into_iter()
            .filter(|n| !known(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "rule {:?} names {unknown:?}",
            r["alert"]
        );
    }
    let exprs = dashboard_exprs();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        let unknown: Vec<_> = names.iter().filter(|&n| !known(n)).collect();
        assert!(
            unknown.is_empty(),
            "the dashboard's {expr} names {unknown:?}"
        );
        prom.results(expr).expect("Prometheus answers");
        let none_expected = expr.contains(r#"outcome="failed""#)
            || expr.contains("attach_rejections")
            || !names.iter().all(|n| exposed.contains(n));
        if !none_expected {
            wait_for(&format!("data for {expr}"), 30, || async {
                prom.results(expr).filter(|r| !r.is_empty())
            })
            .await;
        }
    }
    cp.shutdown().await;
}
