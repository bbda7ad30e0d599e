//! A PKI made per test: CA, server certificate for localhost/127.0.0.1, and
//! agent certificates on demand, written to a temporary directory.

use std::path::PathBuf;

use streamspace_control_plane::pki::{self, Pem};

pub const TRUST_DOMAIN: &str = "test.streamspace";

pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca: Pem,
    pub server: Pem,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::new_ca("test CA").unwrap();
        let server =
            pki::new_server(&ca, &["localhost".into()], &["127.0.0.1".parse().unwrap()]).unwrap();
        ca.save(dir.path(), "ca").unwrap();
        server.save(dir.path(), "server").unwrap();
        Self { dir, ca, server }
    }

    /// An agent certificate for `id` signed by this CA; returns (cert, key)
    /// paths. Made once per id and then reused: re-writing the files while an
    /// agent started earlier (an HA replica with the same id) is still reading
    /// them could hand it a certificate and a key that do not match.
    pub fn agent(&self, id: &str) -> (PathBuf, PathBuf) {
        let name = format!("agent-{id}");
        let (cert, key) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        if cert.exists() && key.exists() {
            return (cert, key);
        }
        pki::new_agent(&self.ca, TRUST_DOMAIN, id)
            .unwrap()
            .save(self.dir.path(), &name)
            .unwrap()
    }

    pub fn agent_pem(&self, id: &str) -> Pem {
        pki::new_agent(&self.ca, TRUST_DOMAIN, id).unwrap()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}
