//! Helm as chart tests run it: the binary scripts/tools.sh installs ($HELM,
//! else `helm` on PATH) against the test cluster's admin kubeconfig
//! (tests/k8s/cluster.sh), with the chart in this repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::k8s::{TestCluster, kubectl_ok};

pub struct Helm {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

/// The repository's chart directory.
pub fn chart_dir() -> PathBuf {
    crate::repo_path("chart")
}

/// `program` as the shell would find it: a path, or the first match on PATH.
fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A release name unique to this run ("<prefix>-<8 hex>"; helm allows 53 chars).
pub fn release_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Exit status, stdout and stderr of a command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The helm binary ($HELM, else `helm` on PATH), or None (after a loud
/// message) when it is missing outside CI; under CI=true a missing helm fails
/// the test.
fn find_helm() -> Option<PathBuf> {
    let name = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let found = which(&name);
    if found.is_none() {
        if crate::in_ci() {
            panic!(
                "helm ({name}) is required under CI=true: scripts/test.sh installs it with scripts/tools.sh"
            );
        }
        eprintln!(
            "SKIPPING: helm ({name}) not found; run `eval \"$(scripts/tools.sh env)\"` first"
        );
    }
    found
}

impl Helm {
    /// Helm for the test cluster (see [`find_helm`] for a missing binary).
    pub fn for_cluster(k: &TestCluster) -> Option<Helm> {
        Some(Helm {
            bin: find_helm()?,
            kubeconfig: k.admin_kubeconfig.clone(),
        })
    }

    /// Helm without a cluster, for `helm template` (see [`find_helm`] for a
    /// missing binary).
    pub fn offline() -> Option<Helm> {
        Some(Helm {
            bin: find_helm()?,
            kubeconfig: PathBuf::new(),
        })
    }

    /// `helm --kubeconfig <admin> ARGS...` (no kubeconfig when offline), run
    /// from the repository root so `./chart` works as an operator types it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        if !self.kubeconfig.as_os_str().is_empty() {
            c.arg("--kubeconfig").arg(&self.kubeconfig);
        }
        c.args(args).current_dir(chart_dir().join(".."));
        c
    }

    /// The objects `helm template RELEASE <chart> --namespace NS ARGS...`
    /// renders; panics with helm's output when it fails.
    pub fn render(&self, release: &str, ns: &str, args: &[&str]) -> Vec<serde_yaml::Value> {
        use serde::Deserialize;
        let out = self.with_chart("template", release, ns, args);
        assert!(
            out.status.success(),
            "helm template {args:?}: {}",
            describe(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm renders YAML"))
            .filter(|v| !v.is_null())
            .collect()
    }

    /// [`Helm::command`]'s output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// `helm VERB RELEASE <chart> --namespace NS ARGS...` (install, upgrade, template).
    pub fn with_chart(&self, verb: &str, release: &str, ns: &str, args: &[&str]) -> Output {
        let chart = chart_dir();
        let mut all = vec![verb, release, chart.to_str().unwrap(), "--namespace", ns];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `helm install RELEASE <chart> --namespace NS ARGS...` (the namespace must exist).
    pub fn install(&self, release: &str, ns: &str, args: &[&str]) -> Output {
        self.with_chart("install", release, ns, args)
    }

    /// `helm upgrade RELEASE <chart> --namespace NS ARGS...`.
    pub fn upgrade(&self, release: &str, ns: &str, args: &[&str]) -> Output {
        self.with_chart("upgrade", release, ns, args)
    }

    /// `helm uninstall RELEASE --namespace NS --wait`.
    pub fn uninstall(&self, release: &str, ns: &str) -> Output {
        self.run(&["uninstall", release, "--namespace", ns, "--wait"])
    }

    /// Every release in any namespace and any state (`helm list -A -a`) as
    /// (name, namespace, status).
    pub fn releases(&self) -> Vec<(String, String, String)> {
        let out = self.run(&["list", "--all-namespaces", "--all", "--output", "json"]);
        assert!(out.status.success(), "helm list failed: {}", describe(&out));
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("name"), s("namespace"), s("status"))
            })
            .collect()
    }

    /// Objects of every listable kind, in any namespace, that carry the
    /// chart's instance label of one of `releases` or are helm's record of
    /// one (release Secrets labelled owner=helm,name=RELEASE), as `kind/name`.
    pub fn release_objects<S: AsRef<str>>(&self, releases: &[S]) -> Vec<String> {
        if releases.is_empty() {
            return vec![];
        }
        let names = releases
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",");
        let kinds = kubectl_ok(
            &self.kubeconfig,
            &["api-resources", "--verbs=list", "-o", "name"],
            None,
        );
        let kinds = kinds.split_whitespace().collect::<Vec<_>>().join(",");
        let mut found = vec![];
        for selector in [
            format!("app.kubernetes.io/instance in ({names})"),
            format!("owner=helm,name in ({names})"),
        ] {
            let out = kubectl_ok(
                &self.kubeconfig,
                &[
                    "get",
                    &kinds,
                    "--all-namespaces",
                    "-l",
                    &selector,
                    "-o",
                    "name",
                ],
                None,
            );
            found.extend(out.lines().map(str::to_string));
        }
        found
    }
}
