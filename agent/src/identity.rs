//! The agent's TLS material, re-read from its files at every (re)connect so
//! a rotated client certificate or CA is used on the next connection without
//! a restart (cert-manager renewals, Kubernetes Secret updates). A pair that
//! does not belong together, or a file caught half-written, is not used: the
//! last good material stays and the error, naming the file, is logged.

use std::path::PathBuf;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tracing::{error, info};

use crate::client::ClientTls;

/// Where the agent's TLS material lives on disk.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA bundle that signs the control plane's server certificate (PEM).
    pub ca: PathBuf,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads and checks the files: the key belongs to the certificate and the
/// CA file holds at least one certificate.
pub fn load(files: &TlsFiles, server_name: Option<String>) -> anyhow::Result<ClientTls> {
    let (cert, key, ca) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
    crate::config::check_identity(&cert, &key)
        .with_context(|| format!("{} / {}", files.cert.display(), files.key.display()))?;
    let cas = CertificateDer::pem_slice_iter(ca.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: expected PEM certificates", files.ca.display()))?;
    anyhow::ensure!(
        !cas.is_empty(),
        "{}: expected at least one PEM certificate, found none",
        files.ca.display()
    );
    Ok(ClientTls {
        ca,
        cert,
        key,
        server_name,
        files: Some(files.clone()),
    })
}

/// The material for the next connection: `last` itself when it has no files,
/// else the files' current content when usable (it then becomes `*last`),
/// else `last` unchanged.
pub fn refresh(last: &mut ClientTls) -> ClientTls {
    let Some(files) = &last.files else {
        return last.clone();
    };
    match load(files, last.server_name.clone()) {
        Ok(now) => {
            if now.cert != last.cert || now.key != last.key || now.ca != last.ca {
                info!(
                    cert = %files.cert.display(),
                    ca = %files.ca.display(),
                    "TLS files changed; the next connection uses the new material"
                );
                *last = now;
            }
        }
        Err(e) => error!(
            error = %format!("{e:#}"),
            "TLS files not usable; connecting with the last good certificate"
        ),
    }
    last.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_good_pair_replaces_the_last_and_a_bad_one_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            ca: dir.path().join("ca.crt"),
        };
        let write = |(c, k): &(String, String)| {
            std::fs::write(&files.cert, c).unwrap();
            std::fs::write(&files.key, k).unwrap();
        };
        let (one, two) = (pair("one"), pair("two"));
        write(&one);
        std::fs::write(&files.ca, &one.0).unwrap();
        let mut last = load(&files, None).unwrap();

        write(&two);
        assert_eq!(refresh(&mut last).cert, two.0, "rotated pair used");

        // The certificate rotated but not yet its key: keep the last good pair.
        std::fs::write(&files.cert, &one.0).unwrap();
        assert_eq!(refresh(&mut last).cert, two.0);
        let e = format!("{:#}", load(&files, None).err().unwrap());
        assert!(
            e.contains("tls.crt") && e.contains("does not belong"),
            "{e}"
        );

        // Half-written CA bundle.
        write(&two);
        std::fs::write(&files.ca, &one.0[..one.0.len() / 2]).unwrap();
        assert_eq!(refresh(&mut last).ca, one.0);
        let e = format!("{:#}", load(&files, None).err().unwrap());
        assert!(e.contains("ca.crt"), "{e}");
    }
}
