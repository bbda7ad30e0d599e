//! `streamspace-control-plane certs kubernetes`, as a Helm hook Job runs it:
//! the real binary against the real API server, with a ServiceAccount token
//! that may only get and create Secrets.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use streamspace_tests::k8s::{TestCluster, cluster};
use streamspace_tests::*;

const TRUST_DOMAIN: &str = "certs.test";
const AGENT_ID: &str = "k8s-certs-a";

/// The ServiceAccount of the hook Job: get and create on Secrets, nothing else.
fn hook_rbac(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: certs-hook
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: certs-hook
  namespace: {ns}
rules:
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: certs-hook
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: certs-hook
subjects:
- kind: ServiceAccount
  name: certs-hook
  namespace: {ns}
"#
    )
}

/// `certs kubernetes` into `ns` with `kubeconfig` (in $KUBECONFIG).
fn certs_command(ns: &str, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(binary("streamspace-control-plane"));
    cmd.args(["certs", "kubernetes", "--namespace", ns])
        .args(["--ca-secret", "ss-ca", "--server-secret", "ss-server"])
        .args(["--agent-secret", "ss-agent", "--agent-id", AGENT_ID])
        .args(["--dns", "cp.example.test", "--ip", "10.0.0.7"])
        .args(["--trust-domain", TRUST_DOMAIN])
        .args(["--label", "app.kubernetes.io/part-of=streamspace"])
        .args(["--label", "test=certs"])
        .env("KUBECONFIG", kubeconfig);
    cmd
}

/// Runs `certs kubernetes`; returns its output lines.
fn certs_kubernetes(ns: &str, kubeconfig: &Path) -> Vec<String> {
    let out = certs_command(ns, kubeconfig)
        .output()
        .expect("the control-plane binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "certs kubernetes failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// A test namespace, deleted when the test ends (passed or failed).
struct Namespace<'a>(&'a TestCluster, String);

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        self.0.delete_namespace(&self.1);
    }
}

fn data(s: &Secret) -> BTreeMap<String, ByteString> {
    s.data.clone().unwrap_or_default()
}

fn der(s: &Secret, key: &str) -> CertificateDer<'static> {
    let pem = &data(s)[key].0;
    CertificateDer::from_pem_slice(pem).unwrap_or_else(|e| panic!("{key} is PEM: {e}"))
}

/// Verifies the server certificate of `server` for `name` against its
/// ca.crt, as an agent would.
fn verify_server(server: &Secret, name: ServerName<'static>) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(server, "ca.crt")).unwrap();
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    v.verify_server_cert(&der(server, "tls.crt"), &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_become_tls_secrets_once() {
    init();
    let Some(k) = cluster().await else { return };
    let ns = Namespace(&k, k.namespace("ss-certs"));
    let ns = &ns.1;
    let tmp = tempfile::tempdir().unwrap();
    streamspace_tests::k8s::kubectl_ok(
        &k.admin_kubeconfig,
        &["apply", "-f", "-"],
        Some(&hook_rbac(ns)),
    );
    k.wait_allowed(
        ns,
        "certs-hook",
        &[("get", "secrets"), ("create", "secrets")],
    );
    let kubeconfig = k.token_kubeconfig(ns, "certs-hook", &tmp.path().join("hook-kubeconfig"));
    let secrets: kube::Api<Secret> = kube::Api::namespaced(k.client.clone(), ns);
    let read = |name: &'static str| {
        let secrets = secrets.clone();
        async move { secrets.get(name).await.unwrap() }
    };

    let lines = certs_kubernetes(ns, &kubeconfig);
    let expect = |outcome: &str| {
        vec![
            format!("secret {ns}/ss-ca (CA): {outcome}"),
            format!("secret {ns}/ss-server (server): {outcome}"),
            format!(
                "secret {ns}/ss-agent (agent spiffe://{TRUST_DOMAIN}/agent/{AGENT_ID}): {outcome}"
            ),
        ]
    };
    assert_eq!(lines, expect("created"));
    let (ca, server, agent) = (
        read("ss-ca").await,
        read("ss-server").await,
        read("ss-agent").await,
    );
    for s in [&ca, &server, &agent] {
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&str> = s
            .data
            .as_ref()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        let labels = s.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/part-of"], "streamspace");
        assert_eq!(labels["test"], "certs");
        assert_eq!(data(s)["ca.crt"], data(&ca)["tls.crt"], "one CA for all");
    }

    // The server certificate verifies against ca.crt for its names only.
    verify_server(&server, ServerName::try_from("cp.example.test").unwrap()).unwrap();
    verify_server(&server, ServerName::try_from("10.0.0.7").unwrap()).unwrap();
    assert!(verify_server(&server, ServerName::try_from("other.example.test").unwrap()).is_err());

    // The agent certificate is a client certificate of the same CA that
    // names the agent as the control plane reads it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&agent, "ca.crt")).unwrap();
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
    .verify_client_cert(&der(&agent, "tls.crt"), &[], UnixTime::now())
    .expect("the agent certificate verifies against ca.crt");
    assert_eq!(
        streamspace_control_plane::pki::agent_id_from_cert(&der(&agent, "tls.crt"), TRUST_DOMAIN)
            .unwrap(),
        AGENT_ID
    );

    // A second run keeps everything as it is.
    assert_eq!(
        certs_kubernetes(ns, &kubeconfig),
        expect("kept (it exists)")
    );
    for before in [&ca, &server, &agent] {
        let name = before.metadata.name.clone().unwrap();
        let after = secrets.get(&name).await.unwrap();
        assert_eq!(data(&after), data(before), "{name} unchanged");
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "{name} not written"
        );
    }

    // A missing server Secret is issued again by the CA that exists.
    secrets
        .delete("ss-server", &Default::default())
        .await
        .unwrap();
    wait_for("ss-server to be gone", 30, || async {
        secrets
            .get_opt("ss-server")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let lines = certs_kubernetes(ns, &kubeconfig);
    assert_eq!(
        lines[0],
        format!("secret {ns}/ss-ca (CA): kept (it exists)")
    );
    assert_eq!(lines[1], format!("secret {ns}/ss-server (server): created"));
    let renewed = read("ss-server").await;
    assert_ne!(data(&renewed)["tls.crt"], data(&server)["tls.crt"]);
    assert_eq!(data(&renewed)["ca.crt"], data(&ca)["tls.crt"]);
    verify_server(&renewed, ServerName::try_from("cp.example.test").unwrap()).unwrap();
    assert_eq!(data(&read("ss-ca").await), data(&ca));
}

/// Runs started together (two hook Jobs, a retried one) all succeed and
/// agree on one CA: a create that loses the race reads the winner's Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_runs_agree_on_one_ca() {
    init();
    let Some(k) = cluster().await else { return };
    let ns = Namespace(&k, k.namespace("ss-certs-race"));
    let ns = &ns.1;
    let kubeconfig = k.admin_kubeconfig.clone();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            certs_command(ns, &kubeconfig)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut created = BTreeMap::<String, usize>::new();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in stdout.lines().filter(|l| l.ends_with(": created")) {
            *created.entry(line.to_string()).or_default() += 1;
        }
    }
    assert!(created.values().all(|n| *n == 1), "{created:?}");
    assert_eq!(created.len(), 3, "{created:?}");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(k.client.clone(), ns);
    let ca = data(&secrets.get("ss-ca").await.unwrap())["tls.crt"].clone();
    for name in ["ss-server", "ss-agent"] {
        assert_eq!(
            data(&secrets.get(name).await.unwrap())["ca.crt"],
            ca,
            "{name}"
        );
    }
    verify_server(
        &secrets.get("ss-server").await.unwrap(),
        ServerName::try_from("cp.example.test").unwrap(),
    )
    .unwrap();
}
