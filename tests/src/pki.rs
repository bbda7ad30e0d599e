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

    /// The settings of an in-process agent client `id` (real mTLS with a
    /// fresh certificate) attaching to `agent_addr`: fast reconnects, no HA.
    pub fn client_config(
        &self,
        id: &str,
        agent_addr: std::net::SocketAddr,
        platform: &str,
        max_sessions: u32,
    ) -> streamspace_agent::ClientConfig {
        let pem = self.agent_pem(id);
        streamspace_agent::ClientConfig {
            agent_id: id.into(),
            control_plane_url: format!("https://{agent_addr}"),
            platform: platform.into(),
            region: "test".into(),
            capacity: streamspace::v1::Capacity {
                max_sessions,
                ..Default::default()
            },
            tls: streamspace_agent::ClientTls {
                ca: self.ca.cert.clone(),
                cert: pem.cert,
                key: pem.key,
                server_name: Some("localhost".into()),
                files: None,
            },
            backoff_base: std::time::Duration::from_millis(50),
            backoff_cap: std::time::Duration::from_secs(1),
            fencing_token: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}
