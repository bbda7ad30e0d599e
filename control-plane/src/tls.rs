//! The listeners' TLS material — server certificate and key, and the CA
//! bundle that signs agent client certificates — and its replacement while
//! the control plane runs.
//!
//! [`ServerTls`] holds the rustls settings of both listeners behind one lock;
//! the listeners read it once per accepted connection, so a replacement
//! applies to new handshakes only and established connections (and their
//! agent streams) carry on untouched. [`ServerTls::watch_files`] re-reads the
//! files every poll (through [`crate::watch`]): new material is applied only
//! when it parses, the key belongs to the certificate and every CA
//! certificate parses; otherwise the material in force stays and the error
//! names the file. The agent CA file may hold several CAs (old and new while
//! a CA is rotated); any of them signs a valid agent.
//!
//! Every load logs a warning when the server certificate expires within
//! [`EXPIRY_WARNING`], and [`ServerTls::expiry`] reports the expiry of the
//! server certificate and of each CA for whoever wants to export it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::warn;

use crate::watch::{self, FileWatch};

/// A server certificate closer than this to its end is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// PEM material for both listeners.
#[derive(Clone)]
pub struct TlsMaterial {
    pub server_cert: String,
    pub server_key: String,
    /// CA bundle that signs agent client certificates (one or more CAs).
    pub agent_ca: String,
}

/// Where [`TlsMaterial`] lives on disk.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub agent_ca: PathBuf,
}

/// Why TLS material cannot be used. `what` names the file (or the part).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: expected PEM with at least one certificate, found none")]
    NoCertificate { what: String },
    #[error("{what}: expected PEM certificates: {source}")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}: certificate {index} does not parse as X.509: {reason}")]
    Certificate {
        what: String,
        index: usize,
        reason: String,
    },
    #[error("{what}: expected a PEM private key: {source}")]
    Key {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{key}: the key does not belong to the certificate in {cert}: {source}")]
    KeyMismatch {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}: expected UTF-8 text")]
    NotText { what: String },
    #[error("{0}")]
    Unreadable(String),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One certificate's identity and end of validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// Hex, colon-separated, as `openssl x509 -serial` shows it (in lower case).
    pub serial: String,
    pub not_after: SystemTime,
}

/// When the material in force stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// The server certificate (the leaf of the chain).
    pub server: CertInfo,
    /// Each CA of the agent CA bundle, in file order.
    pub agent_cas: Vec<CertInfo>,
}

/// Names of the three parts in errors: file paths, or descriptions.
struct Names {
    cert: String,
    key: String,
    ca: String,
}

impl Names {
    fn parts() -> Self {
        Self {
            cert: "server certificate".into(),
            key: "server key".into(),
            ca: "agent CA".into(),
        }
    }

    fn files(f: &TlsFiles) -> Self {
        Self {
            cert: f.server_cert.display().to_string(),
            key: f.server_key.display().to_string(),
            ca: f.agent_ca.display().to_string(),
        }
    }
}

/// Built settings of both listeners.
struct Loaded {
    agent: Arc<ServerConfig>,
    api: Arc<ServerConfig>,
    expiry: CertExpiry,
}

/// The TLS settings both listeners use for new handshakes. Clones share one
/// state, so a replacement through any clone (or the file watcher) is seen
/// by all of them.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<RwLock<Arc<Loaded>>>,
    /// Replacements applied since start.
    reloads: Arc<AtomicU64>,
    /// Changed files refused since start (did not parse, key mismatch).
    refused: Arc<AtomicU64>,
}

impl ServerTls {
    /// Settings from PEM text; fixed unless [`ServerTls::replace`]d.
    pub fn new(m: &TlsMaterial) -> Result<Self, TlsError> {
        let loaded = load(m, &Names::parts())?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            reloads: Default::default(),
            refused: Default::default(),
        })
    }

    /// Loads the files and keeps watching them (every `every`) until the
    /// returned watcher is dropped. Must be called inside a Tokio runtime.
    pub fn watch_files(files: &TlsFiles, every: Duration) -> Result<(Self, FileWatch), TlsError> {
        let paths = vec![
            files.server_cert.clone(),
            files.server_key.clone(),
            files.agent_ca.clone(),
        ];
        let bytes = watch::read_all(&paths).map_err(TlsError::Unreadable)?;
        let names = Names::files(files);
        let tls = Self {
            current: Arc::new(RwLock::new(Arc::new(load(
                &material(&bytes, &names)?,
                &names,
            )?))),
            reloads: Default::default(),
            refused: Default::default(),
        };
        let t = tls.clone();
        let watcher = watch::spawn("TLS files", paths, every, bytes, move |now| {
            let expiry = material(now, &names)
                .and_then(|m| t.replace_named(&m, &names))
                .map_err(|e| {
                    t.refused.fetch_add(1, Ordering::Relaxed);
                    e.to_string()
                })?;
            Ok(format!(
                "server certificate serial {} until {}; {} agent CA(s)",
                expiry.server.serial,
                shown(expiry.server.not_after),
                expiry.agent_cas.len()
            ))
        });
        Ok((tls, watcher))
    }

    /// Replaces the material for new handshakes; on an error nothing changes.
    pub fn replace(&self, m: &TlsMaterial) -> Result<CertExpiry, TlsError> {
        self.replace_named(m, &Names::parts())
    }

    fn replace_named(&self, m: &TlsMaterial, names: &Names) -> Result<CertExpiry, TlsError> {
        let loaded = load(m, names)?;
        let expiry = loaded.expiry.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(expiry)
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Settings of the agent listener: client certificates required.
    pub fn agent(&self) -> Arc<ServerConfig> {
        self.current().agent.clone()
    }

    /// Settings of the API listener: no client certificates.
    pub fn api(&self) -> Arc<ServerConfig> {
        self.current().api.clone()
    }

    /// Expiry of the material in force.
    pub fn expiry(&self) -> CertExpiry {
        self.current().expiry.clone()
    }

    /// Replacements applied since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changed files that were not applied because they were not usable.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

fn material(bytes: &[Vec<u8>], names: &Names) -> Result<TlsMaterial, TlsError> {
    let text = |b: &Vec<u8>, what: &String| {
        String::from_utf8(b.clone()).map_err(|_| TlsError::NotText { what: what.clone() })
    };
    Ok(TlsMaterial {
        server_cert: text(&bytes[0], &names.cert)?,
        server_key: text(&bytes[1], &names.key)?,
        agent_ca: text(&bytes[2], &names.ca)?,
    })
}

fn certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

fn info(what: &str, index: usize, der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Certificate {
            what: what.into(),
            index,
            reason: e.to_string(),
        })?;
    let secs = cert.validity().not_after.timestamp();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        not_after: UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
    })
}

/// Checks and builds both listeners' settings.
fn load(m: &TlsMaterial, names: &Names) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&names.cert, &m.server_cert)?;
    let server = info(&names.cert, 0, &chain[0])?;
    let key =
        PrivateKeyDer::from_pem_slice(m.server_key.as_bytes()).map_err(|source| TlsError::Key {
            what: names.key.clone(),
            source,
        })?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |source| TlsError::KeyMismatch {
            cert: names.cert.clone(),
            key: names.key.clone(),
            source,
        },
    )?;
    let cas = certs(&names.ca, &m.agent_ca)?;
    let agent_cas = cas
        .iter()
        .enumerate()
        .map(|(i, der)| info(&names.ca, i, der))
        .collect::<Result<Vec<_>, _>>()?;
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|e| TlsError::Certificate {
            what: names.ca.clone(),
            index: i,
            reason: e.to_string(),
        })?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let h2 = |mut c: ServerConfig| {
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    };
    let agent = h2(ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?);
    let api = h2(ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?);
    warn_if_expiring(&names.cert, &server);
    Ok(Loaded {
        agent,
        api,
        expiry: CertExpiry { server, agent_cas },
    })
}

fn warn_if_expiring(what: &str, c: &CertInfo) {
    let left = c.not_after.duration_since(SystemTime::now());
    match left {
        Ok(left) if left >= EXPIRY_WARNING => {}
        Ok(left) => warn!(
            file = %what,
            serial = %c.serial,
            not_after = %shown(c.not_after),
            days_left = left.as_secs() / 86_400,
            "the server certificate expires soon; renew it (the new files are picked up without a restart)"
        ),
        Err(_) => warn!(
            file = %what,
            serial = %c.serial,
            not_after = %shown(c.not_after),
            "the server certificate has expired; clients refuse it until it is renewed"
        ),
    }
}

/// A time as `openssl x509 -enddate` shows it, for logs.
fn shown(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    match x509_parser::time::ASN1Time::from_timestamp(secs) {
        Ok(a) => a.to_string(),
        Err(_) => format!("{secs}s after the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    fn material(ca: &pki::Pem) -> TlsMaterial {
        let server = pki::new_server(ca, &["localhost".into()], &[]).unwrap();
        TlsMaterial {
            server_cert: server.cert,
            server_key: server.key,
            agent_ca: ca.cert.clone(),
        }
    }

    #[test]
    fn a_bundle_of_two_cas_loads_and_reports_both() {
        let (old, new) = (pki::new_ca("old").unwrap(), pki::new_ca("new").unwrap());
        let mut m = material(&new);
        m.agent_ca = format!("{}{}", old.cert, new.cert);
        let tls = ServerTls::new(&m).unwrap();
        let e = tls.expiry();
        assert_eq!(e.agent_cas.len(), 2);
        assert!(e.agent_cas[0].subject.contains("old"), "{e:?}");
        assert!(e.server.not_after > SystemTime::now() + EXPIRY_WARNING);
    }

    #[test]
    fn bad_material_is_refused_naming_the_part_and_nothing_changes() {
        let ca = pki::new_ca("ca").unwrap();
        let good = material(&ca);
        let tls = ServerTls::new(&good).unwrap();
        let before = tls.expiry();
        let other = material(&ca);

        let mut m = good.clone();
        m.server_key = other.server_key.clone();
        let e = tls.replace(&m).unwrap_err().to_string();
        assert!(
            e.contains("server key") && e.contains("does not belong"),
            "{e}"
        );

        let mut m = good.clone();
        m.server_cert = good.server_cert[..good.server_cert.len() / 2].to_string();
        let e = tls.replace(&m).unwrap_err().to_string();
        assert!(e.starts_with("server certificate:"), "{e}");

        let mut m = good.clone();
        m.agent_ca = "garbage".into();
        let e = tls.replace(&m).unwrap_err().to_string();
        assert!(e.starts_with("agent CA:"), "{e}");

        assert_eq!(tls.expiry(), before);
        assert_eq!(tls.reloads(), 0);
        tls.replace(&other).unwrap();
        assert_eq!(tls.reloads(), 1);
        assert_ne!(tls.expiry().server.serial, before.server.serial);
    }
}
