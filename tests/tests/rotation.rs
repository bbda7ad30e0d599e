//! Certificates rotate without a restart, on real listeners: the control
//! plane's server certificate, key and agent CA bundle sit in a directory laid
//! out as Kubernetes mounts a Secret (files behind a `..data` symlink that is
//! swapped atomically), and one agent reads its certificate from files.
//!
//! 100 agents stay attached across a rotation to a new CA (same connections,
//! heartbeats go on); new handshakes see the new server certificate; an agent
//! with a certificate from the new CA attaches; a half-written file is not
//! applied; and an agent whose certificate files were rotated presents the
//! new certificate when it reconnects — proven by attaching to a control
//! plane that by then trusts only the new CA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_agent::Client;
use streamspace_agent::identity::{self, TlsFiles as AgentFiles};
use streamspace_agent::runtime::StatusSink;
use streamspace_agent::runtime::noop::NoopRuntime;
use streamspace_control_plane::pki::{self, Pem};
use streamspace_control_plane::server::{ControlPlane, ServerTls};
use streamspace_control_plane::tls::TlsFiles;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::pki::TRUST_DOMAIN;
use streamspace_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A directory as the kubelet writes a Secret volume: each version in its
/// own directory, `..data` pointing at the current one, and every key a
/// symlink through `..data`.
struct SecretDir {
    dir: PathBuf,
    version: u32,
}

impl SecretDir {
    fn new(dir: &Path, keys: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = Self {
            dir: dir.to_path_buf(),
            version: 0,
        };
        s.publish(keys);
        for (k, _) in keys {
            std::os::unix::fs::symlink(format!("..data/{k}"), dir.join(k)).unwrap();
        }
        s
    }

    /// Writes a new version and swaps `..data` to it in one rename.
    fn publish(&mut self, keys: &[(&str, &str)]) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&v)).unwrap();
        for (k, text) in keys {
            std::fs::write(self.dir.join(&v).join(k), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }
}

/// A TLS channel to the API port trusting only `ca`.
async fn api_channel(ca: &str, addr: std::net::SocketAddr) -> Result<Channel, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Whether an agent with `identity`, trusting `ca`, gets through Hello.
async fn attaches(ca: &str, cp: &ControlPlane, id: &str, identity: &Pem) -> Result<(), String> {
    let mut c = raw::connect(ca, cp.agent_addr, Some(identity)).await?;
    raw::attach(&mut c, vec![raw::hello(id)])
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

/// Waits until the watcher has refused `n` changes in all.
async fn refused(tls: &ServerTls, n: u64) {
    wait_for(&format!("{n} refused changes"), 20, || {
        let tls = tls.clone();
        async move { (tls.refused() >= n).then_some(()) }
    })
    .await;
    assert_eq!(tls.refused(), n);
}

fn both(a: &str, b: &str) -> String {
    format!("{a}{b}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_dropping_streams() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let old_ca = pki.ca.clone();
    let new_ca = pki::new_ca("new test CA").unwrap();
    let localhost = (["localhost".to_string()], ["127.0.0.1".parse().unwrap()]);
    let new_server = pki::new_server(&new_ca, &localhost.0, &localhost.1).unwrap();

    // Control plane: its TLS files in a Secret-like directory, watched.
    let mut secret = SecretDir::new(
        &tmp.path().join("server-tls"),
        &[
            ("tls.crt", &pki.server.cert),
            ("tls.key", &pki.server.key),
            ("ca.crt", &old_ca.cert),
        ],
    );
    let files = TlsFiles {
        server_cert: secret.path("tls.crt"),
        server_key: secret.path("tls.key"),
        agent_ca: secret.path("ca.crt"),
    };
    let (tls, _watch) = ServerTls::watch_files(&files, Duration::from_millis(200)).unwrap();
    let mut cfg = server_config(&pki, &db, &CpOptions::default());
    cfg.tls = tls.clone();
    let cp = ControlPlane::start(cfg).await.unwrap();
    let old_serial = tls.expiry().server.serial;
    let roster = cp.lifecycle.roster().clone();

    // 99 agents with certificates held in memory, and "rotor", whose
    // certificate and CA are files (as the agent binary reads them).
    let ids: Vec<String> = (0..99).map(|i| format!("steady-{i:02}")).collect();
    let specs: Vec<(&str, u32)> = ids.iter().map(|i| (i.as_str(), 0)).collect();
    let _steady = NoopAgents::start(&pki, cp.agent_addr, &specs);
    let rotor_pem = pki.agent_pem("rotor");
    let mut rotor_dir = SecretDir::new(
        &tmp.path().join("rotor-tls"),
        &[
            ("tls.crt", &rotor_pem.cert),
            ("tls.key", &rotor_pem.key),
            ("ca.crt", &old_ca.cert),
        ],
    );
    let rotor_files = AgentFiles {
        cert: rotor_dir.path("tls.crt"),
        key: rotor_dir.path("tls.key"),
        ca: rotor_dir.path("ca.crt"),
    };
    let mut rotor_cfg = pki.client_config("rotor", cp.agent_addr, "noop", 0);
    rotor_cfg.tls = identity::load(&rotor_files, Some("localhost".into())).unwrap();
    let (sink, statuses) = StatusSink::channel(64);
    let rotor = Arc::new(Client::new(
        rotor_cfg,
        Arc::new(NoopRuntime::new(sink)),
        statuses,
    ));
    let stop = CancellationToken::new();
    let rotor_task = {
        let (c, s) = (rotor.clone(), stop.clone());
        tokio::spawn(async move { c.run(s).await })
    };

    let r = roster.clone();
    let before: HashMap<String, (u64, u64)> = wait_for("100 agents attached", 60, || {
        let r = r.clone();
        async move {
            let all = r.all();
            (all.len() == 100).then(|| {
                all.into_iter()
                    .map(|a| (a.hello.id.clone(), (a.conn_id, a.heartbeat_seq)))
                    .collect()
            })
        }
    })
    .await;
    // An API connection made before the rotation, kept across it.
    let early_api = api_channel(&old_ca.cert, cp.api_addr).await.unwrap();

    // Rotation: the agents first learn to trust the new CA, then the
    // control plane gets a server certificate from the new CA and trusts
    // agent certificates from both.
    rotor_dir.publish(&[
        ("tls.crt", &rotor_pem.cert),
        ("tls.key", &rotor_pem.key),
        ("ca.crt", &both(&old_ca.cert, &new_ca.cert)),
    ]);
    secret.publish(&[
        ("tls.crt", &new_server.cert),
        ("tls.key", &new_server.key),
        ("ca.crt", &both(&old_ca.cert, &new_ca.cert)),
    ]);
    let new_serial = wait_for("the new server certificate to apply", 20, || {
        let (tls, old) = (tls.clone(), old_serial.clone());
        async move {
            let e = tls.expiry();
            (e.server.serial != old && e.agent_cas.len() == 2).then_some(e.server.serial)
        }
    })
    .await;
    assert_eq!(tls.reloads(), 1, "one change, applied once");

    // New handshakes see the new certificate.
    api_channel(&new_ca.cert, cp.api_addr)
        .await
        .expect("a client trusting only the new CA connects");
    let e = api_channel(&old_ca.cert, cp.api_addr)
        .await
        .expect_err("a client trusting only the old CA is refused");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let fresh = pki::new_agent(&new_ca, TRUST_DOMAIN, "fresh").unwrap();
    attaches(&new_ca.cert, &cp, "fresh", &fresh)
        .await
        .expect("an agent with a certificate from the new CA attaches");
    attaches(&new_ca.cert, &cp, "late-old", &pki.agent_pem("late-old"))
        .await
        .expect("an agent with a certificate from the old CA still attaches");
    // The connection made before the rotation still answers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(early_api);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the API connection from before the rotation answers");

    // Zero dropped: the same connections, and heartbeats keep coming on them.
    let r = roster.clone();
    let b = before.clone();
    wait_for("every agent to heartbeat after the rotation", 20, || {
        let (r, b) = (r.clone(), b.clone());
        async move {
            b.iter()
                .all(|(id, (conn, seq))| {
                    r.get(id)
                        .is_some_and(|a| a.conn_id == *conn && a.heartbeat_seq > *seq + 1)
                })
                .then_some(())
        }
    })
    .await;

    // A half-written certificate is not applied: the new one stays in force.
    secret.publish(&[
        ("tls.crt", &new_server.cert[..new_server.cert.len() / 2]),
        ("tls.key", &new_server.key),
        ("ca.crt", &both(&old_ca.cert, &new_ca.cert)),
    ]);
    refused(&tls, 1).await;
    // Garbage in the CA bundle, the same.
    secret.publish(&[
        ("tls.crt", &new_server.cert),
        ("tls.key", &new_server.key),
        ("ca.crt", "-----BEGIN CERTIFICATE-----\nnot base64\n"),
    ]);
    refused(&tls, 2).await;
    assert_eq!(tls.expiry().server.serial, new_serial);
    assert_eq!(tls.expiry().agent_cas.len(), 2);
    assert_eq!(tls.reloads(), 1, "neither bad version was applied");
    api_channel(&new_ca.cert, cp.api_addr)
        .await
        .expect("still serving the new certificate");
    attaches(&new_ca.cert, &cp, "fresh", &fresh)
        .await
        .expect("still trusting the new CA");

    // The agent's own certificate rotates: new files from the new CA, and
    // the control plane stops trusting the old CA, so only the new
    // certificate can attach.
    let rotor_new = pki::new_agent(&new_ca, TRUST_DOMAIN, "rotor").unwrap();
    rotor_dir.publish(&[
        ("tls.crt", &rotor_new.cert),
        ("tls.key", &rotor_new.key),
        ("ca.crt", &new_ca.cert),
    ]);
    secret.publish(&[
        ("tls.crt", &new_server.cert),
        ("tls.key", &new_server.key),
        ("ca.crt", &new_ca.cert),
    ]);
    wait_for("the bundle without the old CA to apply", 20, || {
        let tls = tls.clone();
        async move { (tls.expiry().agent_cas.len() == 1).then_some(()) }
    })
    .await;
    attaches(&new_ca.cert, &cp, "late-old", &pki.agent_pem("late-old"))
        .await
        .expect_err("the old CA is no longer trusted for new connections");
    let rotor_conn = roster.get("rotor").expect("rotor attached").conn_id;
    let mut admin = pb::agent_admin_service_client::AgentAdminServiceClient::with_interceptor(
        api_channel(&new_ca.cert, cp.api_addr).await.unwrap(),
        bearer(ADMIN_TOKEN),
    );
    admin
        .drain_agent(pb::DrainAgentRequest { id: "rotor".into() })
        .await
        .unwrap();
    let r = roster.clone();
    wait_for("rotor to re-attach with its new certificate", 30, || {
        let r = r.clone();
        async move {
            r.get("rotor")
                .filter(|a| a.conn_id != rotor_conn)
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(rotor.stats.attaches.load(Ordering::SeqCst), 2);

    // The 99 that never reconnected are still on their first connections.
    for (id, (conn, _)) in before.iter().filter(|(id, _)| *id != "rotor") {
        let a = roster.get(id).unwrap_or_else(|| panic!("{id} dropped"));
        assert_eq!(a.conn_id, *conn, "{id} reconnected");
    }
    stop.cancel();
    rotor_task.await.unwrap();
    cp.shutdown().await;
}
