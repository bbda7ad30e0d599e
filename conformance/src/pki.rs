//! A throwaway PKI for one case: a CA, a server certificate for
//! `localhost`/`127.0.0.1`, and a client certificate for the agent under
//! test whose SAN URI is `spiffe://<trust-domain>/agent/<id>`, written as PEM
//! files into the case's directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::{Error, Result};

pub const TRUST_DOMAIN: &str = "conformance.streamspace";

/// A PEM certificate and its PEM key.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct Pki {
    pub ca: Pem,
    pub server: Pem,
    pub agent: Pem,
    pub ca_path: PathBuf,
    pub agent_cert_path: PathBuf,
    pub agent_key_path: PathBuf,
}

fn leaf(ca: &Pem, mut p: CertificateParams) -> Result<Pem> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key)?)?;
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

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io("writing", path, e))
}

impl Pki {
    /// Makes the PKI for agent `agent_id` and writes it under `dir`.
    pub fn new(dir: &Path, agent_id: &str) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "conformance CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = Pem {
            cert: p.self_signed(&ca_key)?.pem(),
            key: ca_key.serialize_pem(),
        };

        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = leaf(&ca, p)?;

        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let uri = format!("spiffe://{TRUST_DOMAIN}/agent/{agent_id}");
        p.subject_alt_names = vec![SanType::URI(uri.clone().try_into().map_err(|_| {
            Error::Usage(format!("agent id {agent_id:?}: not usable in a URI"))
        })?)];
        p.distinguished_name
            .push(DnType::CommonName, format!("agent {agent_id}"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let agent = leaf(&ca, p)?;

        let (ca_path, agent_cert_path, agent_key_path) = (
            dir.join("ca.crt"),
            dir.join("agent.crt"),
            dir.join("agent.key"),
        );
        write(&ca_path, &ca.cert)?;
        write(&agent_cert_path, &agent.cert)?;
        write(&agent_key_path, &agent.key)?;
        Ok(Self {
            ca,
            server,
            agent,
            ca_path,
            agent_cert_path,
            agent_key_path,
        })
    }

    /// The DER bytes of the agent's certificate, to compare with the peer's.
    pub fn agent_der(&self) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.agent.cert.as_bytes())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }
}
