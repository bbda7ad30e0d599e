//! The identity provider's discovery document and key set, fetched over
//! HTTPS with hyper and rustls (ring) — the same HTTP stack the Kubernetes
//! client already brings, so no second one. Only `https://` is spoken;
//! answers are bounded in size and time.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::OidcError;
use super::jwt::KeySet;

/// Largest discovery or JWKS document read.
const MAX_DOCUMENT: usize = 1 << 20;
/// Deadline for one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS client for one issuer.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    issuer: String,
}

/// Trust for the issuer's certificate: the PEM bundle if given, else the
/// system's roots.
fn roots(ca_pem: Option<&str>) -> Result<rustls::RootCertStore, OidcError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert =
                    cert.map_err(|e| OidcError::Config(format!("--oidc-ca: not PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| OidcError::Config(format!("--oidc-ca: {e}")))?;
            }
            if roots.is_empty() {
                return Err(OidcError::Config(
                    "--oidc-ca: expected at least one PEM CERTIFICATE block".into(),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(OidcError::Config(
                    "no system CA certificates found; give the issuer's CA with --oidc-ca".into(),
                ));
            }
        }
    }
    Ok(roots)
}

impl Fetcher {
    pub fn new(issuer: &str, ca_pem: Option<&str>) -> Result<Self, OidcError> {
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            issuer: issuer.trim_end_matches('/').to_string(),
        })
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let req = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let fetch = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // The source chain carries the TLS or connect error.
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            if !resp.status().is_success() {
                return Err(format!("answered HTTP {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fetch).await {
            Ok(r) => r.map_err(|e| format!("GET {url}: {e}")),
            Err(_) => Err(format!(
                "GET {url}: no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            )),
        }
    }

    /// Discovery, then the key set it points to.
    pub async fn keys(&self) -> Result<KeySet, String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc = self.get_json(&url).await?;
        // The discovery document must name the issuer we were configured
        // with (OpenID Connect Discovery 1.0, section 4.3).
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if issuer.trim_end_matches('/') != self.issuer {
            return Err(format!(
                "{url}: issuer is {}, expected {}",
                crate::core::validate::shown(issuer),
                crate::core::validate::shown(&self.issuer)
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url}: no jwks_uri"))?;
        if !jwks_uri.starts_with("https://") {
            return Err(format!(
                "{url}: jwks_uri must be https://, got {}",
                crate::core::validate::shown(jwks_uri)
            ));
        }
        let jwks = self.get_json(jwks_uri).await?;
        KeySet::parse(&jwks).map_err(|e| format!("{jwks_uri}: {e}"))
    }
}
