//! Every pod the chart makes (control plane, agent, certificate hook Job)
//! passes the `restricted` Pod Security Standard: the chart's objects are
//! applied (server-side dry run) in a namespace that enforces and warns at
//! `restricted`, and the API server's PodSecurity admission has nothing to
//! say. A deliberately privileged Deployment in the same namespace shows
//! that it would.

use std::process::Command;

use streamspace_tests::helm::{Helm, describe};
use streamspace_tests::init;
use streamspace_tests::k8s::cluster;

/// `kubectl apply --dry-run=server -f -` in `ns`; (succeeded, stderr).
fn dry_run(kubeconfig: &std::path::Path, ns: &str, manifest: &str) -> (bool, String) {
    let out = streamspace_tests::procs::output_with_stdin(
        Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["apply", "--dry-run=server", "-n", ns, "-f", "-"]),
        manifest,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PRIVILEGED: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: not-restricted
spec:
  selector:
    matchLabels: {app: not-restricted}
  template:
    metadata:
      labels: {app: not-restricted}
    spec:
      containers:
        - name: c
          image: busybox
          securityContext:
            privileged: true
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_pods_pass_the_restricted_pod_security_standard() {
    init();
    let Some(k) = cluster().await else { return };
    let Some(helm) = Helm::for_cluster(&k) else {
        return;
    };
    let crds = streamspace_tests::repo_path("chart/crds");
    k.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    let ns = k.namespace("chart-pss");
    k.kubectl(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);

    // The control: PodSecurity admission speaks up for a privileged pod here.
    let (_, said) = dry_run(&k.admin_kubeconfig, &ns, PRIVILEGED);
    assert!(
        said.contains("would violate PodSecurity \"restricted"),
        "PodSecurity admission is not warning in this namespace: {said}"
    );

    // Every configuration the chart is linted with, rendered for this namespace.
    let mut files = vec![None];
    let ci = streamspace_tests::helm::chart_dir().join("ci");
    for f in std::fs::read_dir(&ci).unwrap().flatten() {
        files.push(Some(f.path()));
    }
    for values in files {
        let mut args = vec!["template", "pss", "./chart", "--namespace", &ns];
        let shown = values
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the defaults".into());
        let path;
        if let Some(p) = &values {
            path = p.display().to_string();
            args.extend(["-f", path.as_str()]);
        }
        let out = helm.run(&args);
        assert!(
            out.status.success(),
            "helm template ({shown}): {}",
            describe(&out)
        );
        let manifest = String::from_utf8_lossy(&out.stdout);
        // cert-manager's and the Prometheus Operator's kinds are not
        // installed in the test cluster; pods are what matter.
        let docs: Vec<&str> = manifest
            .split("\n---")
            .filter(|d| {
                !d.contains("apiVersion: cert-manager.io/")
                    && !d.contains("apiVersion: monitoring.coreos.com/")
            })
            .collect();
        let (ok, said) = dry_run(&k.admin_kubeconfig, &ns, &docs.join("\n---"));
        assert!(ok, "kubectl apply --dry-run=server ({shown}): {said}");
        assert!(
            !said.contains("PodSecurity"),
            "{shown}: a pod of the chart breaks the restricted standard: {said}"
        );
    }
    k.delete_namespace(&ns);
}
