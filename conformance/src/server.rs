//! The control plane's side of the agent stream, as the kit plays it: a real
//! mTLS listener on loopback serving `AgentService`. It decides nothing: each
//! accepted `Attach` is handed to the running case as an [`Attach`] (the
//! agent's frames and a sender for ours), or refused with the status the case
//! set. Every attempt is time-stamped, refused or not.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use streamspace::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::pki::Pki;

pub type Outbound = mpsc::Sender<Result<pb::ControlFrame, Status>>;

/// One accepted stream.
pub struct Attach {
    pub at: Instant,
    pub inbound: Streaming<pb::AgentFrame>,
    pub outbound: Outbound,
    /// Whether the peer presented exactly the certificate made for the agent.
    pub peer_cert_matches: bool,
}

#[derive(Default)]
struct Shared {
    /// Answer every Attach with this status instead of accepting it.
    refuse: Option<Status>,
    /// When each Attach arrived.
    attempts: Vec<Instant>,
}

#[derive(Clone)]
struct Hub {
    shared: Arc<Mutex<Shared>>,
    accepted: mpsc::Sender<Attach>,
    agent_der: Arc<Vec<u8>>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Hub {
    type AttachStream = ReceiverStream<Result<pb::ControlFrame, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let at = Instant::now();
        let peer_cert_matches = req
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.as_ref() == self.agent_der.as_slice()))
            .unwrap_or(false);
        let refuse = {
            let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            s.attempts.push(at);
            s.refuse.clone()
        };
        if let Some(status) = refuse {
            return Err(status);
        }
        let (outbound, rx) = mpsc::channel(256);
        let attach = Attach {
            at,
            inbound: req.into_inner(),
            outbound,
            peer_cert_matches,
        };
        self.accepted
            .send(attach)
            .await
            .map_err(|_| Status::unavailable("the conformance case is over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The running listener.
pub struct KitServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    pub accepted: mpsc::Receiver<Attach>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl KitServer {
    /// Serves on a fresh loopback port with the server certificate of `pki`,
    /// requiring client certificates signed by its CA.
    pub async fn start(pki: &Pki) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding", "127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("binding", "127.0.0.1:0", e))?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&pki.server.cert, &pki.server.key))
            .client_ca_root(Certificate::from_pem(&pki.ca.cert));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, accepted) = mpsc::channel(64);
        let hub = Hub {
            shared: shared.clone(),
            accepted: tx,
            agent_der: Arc::new(pki.agent_der()),
        };
        // Frames larger than Welcome.max_message_bytes must reach the kit so
        // that it can say so, hence the generous transport limit.
        let svc = pb::agent_service_server::AgentServiceServer::new(hub)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let router = Server::builder().tls_config(tls)?.add_service(svc);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            accepted,
            stop: Some(stop),
        })
    }

    /// Refuse (Some) or accept (None) the next attaches.
    pub fn refuse(&self, status: Option<Status>) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).refuse = status;
    }

    /// When each Attach arrived so far.
    pub fn attempts(&self) -> Vec<Instant> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempts
            .clone()
    }
}

impl Drop for KitServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
