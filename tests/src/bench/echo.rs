//! The baseline: a bare tonic bidirectional echo (`proto/bench/v1/echo.proto`)
//! served with the agent listener's exact settings (mTLS with client
//! certificates required, HTTP/2 keepalive at the heartbeat interval,
//! TCP_NODELAY, 64 streams per connection) and dialled with the agent
//! client's endpoint settings. What the control plane costs beyond this is
//! what the control plane adds.
//!
//! `streamspace-bench echo-server` runs the server in its own process; the
//! client side (`EchoConn`) runs in the benchmark process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use streamspace_control_plane::pki::Pem;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("streamspace.bench.v1");
}

use pb::EchoFrame;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

/// The agent listener's keepalive: the default heartbeat interval.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Args)]
pub struct EchoServerArgs {
    #[arg(long, env = "BENCH_ECHO_ADDR")]
    pub addr: SocketAddr,
    /// Directory with ca.crt, server.crt and server.key.
    #[arg(long, env = "BENCH_ECHO_PKI_DIR")]
    pub pki_dir: PathBuf,
}

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    type ChatStream = ReceiverStream<Result<EchoFrame, Status>>;

    async fn chat(
        &self,
        req: Request<Streaming<EchoFrame>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        // The same shape as the agent hub: a task reads the inbound stream
        // and writes into a bounded channel that is the outbound stream.
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            while let Ok(Some(f)) = inbound.message().await {
                if tx.send(Ok(f)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub async fn serve(a: EchoServerArgs) -> anyhow::Result<()> {
    super::measure::raise_nofile_limit()?;
    let server = Pem::load(&a.pki_dir, "server").context("--pki-dir: server.crt/key")?;
    let ca = std::fs::read_to_string(a.pki_dir.join("ca.crt")).context("--pki-dir: ca.crt")?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert, &server.key))
        .client_ca_root(Certificate::from_pem(&ca))
        .timeout(Duration::from_secs(10));
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(64))
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(incoming, streamspace_runtime_util::shutdown_signal())
        .await?;
    Ok(())
}

/// Client TLS and HTTP/2 settings of the agent (`streamspace_agent::Client`).
pub fn endpoint(addr: SocketAddr, ca: &str, id: &Pem) -> anyhow::Result<Endpoint> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&id.cert, &id.key))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// One connection with one open Chat stream.
pub struct EchoConn {
    /// Keeps the connection's tasks alive with the stream.
    _channel: Channel,
    pub tx: mpsc::Sender<EchoFrame>,
    pub rx: Streaming<EchoFrame>,
    seq: u64,
}

/// A heartbeat-sized payload (a Heartbeat frame with capacity is ~20 bytes).
pub fn frame(sequence: u64) -> EchoFrame {
    EchoFrame {
        sequence,
        payload: vec![7u8; 16],
    }
}

impl EchoConn {
    /// Connects (TCP + mutual TLS + HTTP/2), opens Chat and completes one round trip.
    pub async fn open(ep: &Endpoint) -> anyhow::Result<Self> {
        let channel = ep.connect().await.context("echo connect")?;
        let (tx, rx) = mpsc::channel(1024);
        let mut client = EchoClient::new(channel.clone());
        tx.send(frame(0)).await?;
        let mut rx = client.chat(ReceiverStream::new(rx)).await?.into_inner();
        rx.message().await?.context("echo stream ended")?;
        Ok(Self {
            _channel: channel,
            tx,
            rx,
            seq: 0,
        })
    }

    /// Sends one frame and waits for its echo.
    pub async fn round_trip(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        self.tx.send(frame(self.seq)).await?;
        let f = self.rx.message().await?.context("echo stream ended")?;
        anyhow::ensure!(f.sequence == self.seq, "echo out of order");
        Ok(())
    }
}
