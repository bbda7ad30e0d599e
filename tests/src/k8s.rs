//! The Kubernetes test control plane (tests/k8s/cluster.sh) as tests see it:
//! an admin client, a namespace per test, and an agent kubeconfig that holds
//! only a ServiceAccount token bound by the agent's RBAC manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::config::Kubeconfig;

pub struct TestCluster {
    pub admin_kubeconfig: PathBuf,
    pub client: kube::Client,
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Runs kubectl with the admin kubeconfig; panics with its output on failure.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = crate::procs::output_with_stdin(
        Command::new(kubectl())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args),
        stdin.unwrap_or(""),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The running test cluster, or None (after a loud message) outside CI.
/// Under CI=true a missing cluster fails the test.
pub async fn cluster() -> Option<TestCluster> {
    let dir =
        std::env::var("STREAMSPACE_K8S_DIR").unwrap_or_else(|_| "/tmp/streamspace-k8s".into());
    let path = PathBuf::from(dir).join("kubeconfig");
    if !path.exists() {
        if crate::in_ci() {
            panic!(
                "the Kubernetes test control plane is required under CI=true: {} is missing (scripts/test.sh starts tests/k8s/cluster.sh)",
                path.display()
            );
        }
        eprintln!(
            "SKIPPING: no Kubernetes test control plane at {}; start it with tests/k8s/cluster.sh start",
            path.display()
        );
        return None;
    }
    let kc = Kubeconfig::read_from(&path).expect("admin kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    let client = kube::Client::try_from(cfg).expect("kube client");
    Some(TestCluster {
        admin_kubeconfig: path,
        client,
    })
}

impl TestCluster {
    /// A fresh namespace for one test.
    pub fn namespace(&self, prefix: &str) -> String {
        let ns = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        kubectl_ok(&self.admin_kubeconfig, &["create", "namespace", &ns], None);
        ns
    }

    /// Applies the chart's CRDs (as crdgen writes them) and waits until
    /// the API server serves every one of them.
    pub fn install_crds(&self) {
        let crds = crate::repo_path("chart/crds");
        self.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/sessions.stream.space",
            "crd/templates.stream.space",
            "crd/quotas.stream.space",
            "--timeout=60s",
        ]);
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        kubectl_ok(&self.admin_kubeconfig, args, None)
    }

    /// The flags of a Kubernetes-runtime agent confined to `ns` (its
    /// kubeconfig written under `dir` by [`Self::agent_kubeconfig`]).
    pub fn agent_args(&self, ns: &str, dir: &Path) -> Vec<String> {
        let kubeconfig = self.agent_kubeconfig(ns, dir);
        vec![
            "--platform=kubernetes".to_string(),
            format!("--namespace={ns}"),
            format!("--kubeconfig={}", kubeconfig.display()),
        ]
    }

    /// Applies agent/k8s/rbac.yaml in `ns` and writes a kubeconfig that
    /// authenticates as its ServiceAccount (a token, not the admin's).
    pub fn agent_kubeconfig(&self, ns: &str, dir: &Path) -> PathBuf {
        let rbac = std::fs::read_to_string(crate::repo_path("agent/k8s/rbac.yaml")).unwrap();
        let rbac = rbac.replace("namespace: streamspace", &format!("namespace: {ns}"));
        kubectl_ok(&self.admin_kubeconfig, &["apply", "-f", "-"], Some(&rbac));
        self.wait_allowed(
            ns,
            "streamspace-agent",
            &[
                ("list", "deployments"),
                ("watch", "pods"),
                ("create", "leases"),
            ],
        );
        self.token_kubeconfig(ns, "streamspace-agent", &dir.join("agent-kubeconfig"))
    }

    /// Waits until ServiceAccount `sa` of `ns` may do each (verb, resource):
    /// a new RoleBinding takes a moment to reach the authorizer.
    pub fn wait_allowed(&self, ns: &str, sa: &str, rules: &[(&str, &str)]) {
        let sa = format!("--as=system:serviceaccount:{ns}:{sa}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for (verb, resource) in rules {
            loop {
                let out = Command::new(kubectl())
                    .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
                    .args(["auth", "can-i", verb, resource, "-n", ns, &sa])
                    .output()
                    .expect("kubectl runs");
                if String::from_utf8_lossy(&out.stdout).trim() == "yes" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "RBAC for {verb} {resource} not in force after 60s"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// Writes to `path` a kubeconfig that authenticates with a token of
    /// ServiceAccount `sa` of `ns` (so it has only that account's rights).
    pub fn token_kubeconfig(&self, ns: &str, sa: &str, path: &Path) -> PathBuf {
        let token = kubectl_ok(
            &self.admin_kubeconfig,
            &["-n", ns, "create", "token", sa, "--duration=2h"],
            None,
        );
        let admin = Kubeconfig::read_from(&self.admin_kubeconfig).unwrap();
        let cluster = admin.clusters[0].cluster.clone().expect("cluster entry");
        let server = cluster.server.expect("server");
        let ca = match (
            cluster.certificate_authority_data,
            cluster.certificate_authority,
        ) {
            (Some(d), _) => format!("certificate-authority-data: {d}"),
            (None, Some(p)) => format!("certificate-authority: {p}"),
            _ => "insecure-skip-tls-verify: true".into(),
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    {ca}\nusers:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: {sa}\n  context:\n    cluster: test\n    user: {sa}\n    namespace: {ns}\ncurrent-context: {sa}\n",
            token.trim()
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, yaml).unwrap();
        path.to_path_buf()
    }

    pub fn delete_namespace(&self, ns: &str) {
        let _ = Command::new(kubectl())
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(["delete", "namespace", ns, "--wait=false"])
            .output();
    }
}
