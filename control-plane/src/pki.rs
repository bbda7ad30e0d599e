//! Certificates: a CA, the server certificate, and agent certificates whose
//! SAN URI `spiffe://<trust-domain>/agent/<id>` is the agent's identity.
//! Used by `streamspace-control-plane certs ...`, by `dev`, and by tests.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// The SAN URI that names agent `id` in `trust_domain`.
pub fn agent_uri(trust_domain: &str, id: &str) -> String {
    format!("spiffe://{trust_domain}/agent/{id}")
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str) -> Result<Pem, PkiError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn sign(ca: &Pem, mut p: CertificateParams) -> Result<Pem, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn server_params(dns: &[String], ips: &[IpAddr]) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(dns.to_vec())?;
    p.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.distinguished_name
        .push(DnType::CommonName, "streamspace-control-plane");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(p)
}

/// A server certificate for the given DNS names and IP addresses.
pub fn new_server(ca: &Pem, dns: &[String], ips: &[IpAddr]) -> Result<Pem, PkiError> {
    sign(ca, server_params(dns, ips)?)
}

/// [`new_server`] valid for `valid` from now (instead of rcgen's default
/// far future): for short-lived certificates and expiry tests.
pub fn new_server_valid_for(
    ca: &Pem,
    dns: &[String],
    ips: &[IpAddr],
    valid: std::time::Duration,
) -> Result<Pem, PkiError> {
    let mut p = server_params(dns, ips)?;
    let valid = time::Duration::try_from(valid)
        .map_err(|_| PkiError::Invalid("validity out of range".into()))?;
    p.not_after = time::OffsetDateTime::now_utc() + valid;
    sign(ca, p)
}

/// A client certificate naming agent `id`.
pub fn new_agent(ca: &Pem, trust_domain: &str, id: &str) -> Result<Pem, PkiError> {
    if id.is_empty()
        || id.len() > 63
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(PkiError::Invalid(format!(
            "agent id {id:?}: must be 1-63 letters, digits, '-', '.' or '_'"
        )));
    }
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let uri = agent_uri(trust_domain, id);
    p.subject_alt_names = vec![SanType::URI(
        uri.try_into()
            .map_err(|_| PkiError::Invalid("agent uri".into()))?,
    )];
    p.distinguished_name
        .push(DnType::CommonName, format!("agent {id}"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca, p)
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    fs::write(path, contents).map_err(io)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl Pem {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`; returns both paths.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        write(&c, &self.cert)?;
        write(&k, &self.key)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&k, fs::Permissions::from_mode(0o600));
        }
        Ok((c, k))
    }

    pub fn load(dir: &Path, name: &str) -> Result<Pem, PkiError> {
        Ok(Pem {
            cert: read(&dir.join(format!("{name}.crt")))?,
            key: read(&dir.join(format!("{name}.key")))?,
        })
    }

    pub fn exists(dir: &Path, name: &str) -> bool {
        dir.join(format!("{name}.crt")).exists() && dir.join(format!("{name}.key")).exists()
    }
}

/// Reads the agent id from a client certificate (DER), expecting a SAN URI
/// `spiffe://<trust_domain>/agent/<id>`.
pub fn agent_id_from_cert(der: &[u8], trust_domain: &str) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let prefix = format!("spiffe://{trust_domain}/agent/");
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("client certificate SAN: {e}"))?
        .ok_or("client certificate has no subject alternative name")?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(&prefix)
            && !id.is_empty()
        {
            return Ok(id.to_string());
        }
    }
    Err(format!("client certificate has no SAN URI {prefix}<id>"))
}

/// The serial number of a certificate (DER) as lowercase hex without
/// leading zeros, the form revocations are stored in.
pub fn cert_serial(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hex = hex.trim_start_matches('0');
    Ok(if hex.is_empty() {
        "0".into()
    } else {
        hex.into()
    })
}

/// The notAfter of a certificate (DER), in milliseconds since the epoch.
pub fn cert_not_after_ms(der: &[u8]) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    Ok(cert.validity().not_after.timestamp().saturating_mul(1000))
}

/// [`cert_serial`] of the first certificate in a PEM text.
pub fn pem_serial(pem: &str) -> Result<String, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("certificate PEM does not parse: {e}"))?;
    cert_serial(&p.contents)
}
