//! `certs kubernetes`: the CA, server and agent certificates as Kubernetes
//! Secrets, for a Helm pre-install hook Job in an image without a shell.
//!
//! Each Secret has type `kubernetes.io/tls` and the keys `tls.crt`, `tls.key`
//! and `ca.crt` — the layout cert-manager writes, so a chart mounts either
//! the same way. The CA Secret holds the CA itself (`ca.crt` = `tls.crt`).
//!
//! Running it again changes nothing: a Secret that exists is kept as it is
//! (its certificate is not renewed, its labels are not touched), and an
//! existing CA Secret signs whatever is still missing. Two runs racing are
//! fine too: a create answered 409 means the other run made that Secret, so
//! it is read back and used. Only `get` and `create` on Secrets are needed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::pki::{self, Pem, PkiError};

/// The Secret type whose keys are `tls.crt` and `tls.key`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Namespace of the Secrets.
    #[arg(long)]
    pub namespace: String,
    /// Secret of the CA (created first; signs the others).
    #[arg(long)]
    pub ca_secret: String,
    /// Secret of the control plane's server certificate.
    #[arg(long)]
    pub server_secret: String,
    /// Secret of an agent's client certificate (needs --agent-id).
    #[arg(long, requires = "agent_id")]
    pub agent_secret: Option<String>,
    /// The agent id named by the agent certificate's SAN URI.
    #[arg(long, requires = "agent_secret")]
    pub agent_id: Option<String>,
    /// DNS names of the server certificate (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// IP addresses of the server certificate (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<IpAddr>,
    /// Trust domain of the agent's SAN URI spiffe://<trust-domain>/agent/<id>.
    #[arg(long, default_value = "streamspace.local")]
    pub trust_domain: String,
    /// A label `key=value` for every Secret created (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Kubeconfig; empty = in-cluster.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, found {s:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("secret {0}: expected {1}")]
    Unusable(String, String),
}

/// What happened to one Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// It existed (or another run created it first): left as it was.
    Kept,
}

struct Secrets {
    api: Api<Secret>,
    namespace: String,
    labels: BTreeMap<String, String>,
}

impl Secrets {
    /// The Secret `name`, created from `make()` unless it exists.
    async fn ensure(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Pem, PkiError>,
        ca_cert: Option<&str>,
    ) -> Result<(Secret, Outcome), CertsError> {
        if let Some(s) = self.api.get_opt(name).await? {
            return Ok((s, Outcome::Kept));
        }
        let pem = make()?;
        let ca = ca_cert.unwrap_or(&pem.cert);
        let data = [
            ("tls.crt", pem.cert.as_str()),
            ("tls.key", pem.key.as_str()),
            ("ca.crt", ca),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels.clone()).filter(|l| !l.is_empty()),
                ..Default::default()
            },
            type_: Some(TLS_SECRET_TYPE.into()),
            data: Some(data),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(s) => Ok((s, Outcome::Created)),
            Err(kube::Error::Api(st)) if st.is_already_exists() => {
                Ok((self.api.get(name).await?, Outcome::Kept))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn key_of(&self, s: &Secret, key: &str) -> Result<String, CertsError> {
        let name = format!(
            "{}/{}",
            self.namespace,
            s.metadata.name.clone().unwrap_or_default()
        );
        let bytes = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .filter(|b| !b.0.is_empty())
            .ok_or_else(|| CertsError::Unusable(name.clone(), format!("a {key} entry")))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| CertsError::Unusable(name, format!("{key} to be PEM text")))
    }
}

/// One printed line per Secret, e.g. `secret ns/name (CA): created`.
fn say(ns: &str, name: &str, what: &str, outcome: Outcome) {
    let outcome = match outcome {
        Outcome::Created => "created",
        Outcome::Kept => "kept (it exists)",
    };
    println!("secret {ns}/{name} ({what}): {outcome}");
}

/// Creates whichever of the Secrets are missing; see the module docs.
pub async fn run(a: KubernetesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.dns.is_empty() || !a.ips.is_empty(),
        "the server certificate needs at least one --dns or --ip"
    );
    let client = crate::k8s::client_for(a.kubeconfig.as_deref()).await?;
    let s = Secrets {
        api: Api::namespaced(client, &a.namespace),
        namespace: a.namespace.clone(),
        labels: a.labels.iter().cloned().collect(),
    };
    let ns = &a.namespace;
    let (ca_secret, outcome) = s
        .ensure(&a.ca_secret, || pki::new_ca("StreamSpace CA"), None)
        .await?;
    say(ns, &a.ca_secret, "CA", outcome);
    let ca = Pem {
        cert: s.key_of(&ca_secret, "tls.crt")?,
        key: s.key_of(&ca_secret, "tls.key")?,
    };
    let mut issued = vec![];
    let (server, outcome) = s
        .ensure(
            &a.server_secret,
            || pki::new_server(&ca, &a.dns, &a.ips),
            Some(&ca.cert),
        )
        .await?;
    say(ns, &a.server_secret, "server", outcome);
    issued.push(server);
    if let (Some(name), Some(id)) = (&a.agent_secret, &a.agent_id) {
        let what = format!("agent {}", pki::agent_uri(&a.trust_domain, id));
        let (agent, outcome) = s
            .ensure(
                name,
                || pki::new_agent(&ca, &a.trust_domain, id),
                Some(&ca.cert),
            )
            .await?;
        say(ns, name, &what, outcome);
        issued.push(agent);
    }
    for secret in &issued {
        if s.key_of(secret, "ca.crt").ok().as_deref() != Some(ca.cert.as_str()) {
            eprintln!(
                "warning: secret {ns}/{} was not issued by the CA in {ns}/{}: it is kept as it is",
                secret.metadata.name.clone().unwrap_or_default(),
                a.ca_secret
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_label;

    #[test]
    fn a_label_is_key_equals_value() {
        let kv = |k: &str, v: &str| Ok((k.to_string(), v.to_string()));
        assert_eq!(
            parse_label("app.kubernetes.io/name=x"),
            kv("app.kubernetes.io/name", "x")
        );
        assert_eq!(parse_label("a=b=c"), kv("a", "b=c"));
        assert_eq!(parse_label("empty="), kv("empty", ""));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
    }
}
