//! Helpers for tests of the listeners' edge: raw TLS connections that send
//! nothing (as a careless or hostile client would), a process's file
//! descriptors and resident memory read from /proc, and gRPC calls that send
//! arbitrary bytes as the request body (garbage, or more than the limit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::{Buf, BufMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use streamspace_control_plane::pki::Pem;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Status, Streaming};

use crate::TestPki;

/// Raises this process's open-files soft limit to `want` (or the hard limit,
/// if lower); child processes started afterwards inherit it.
pub fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = want.min(hard);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).expect("setrlimit");
    }
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of process `pid`, in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn connector(pki: &TestPki) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.cert.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to `addr` (ALPN h2) that completes the handshake and
/// then sends nothing. Err if the server closes it during the handshake.
pub async fn idle_tls(pki: &TestPki, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(Duration::from_secs(30), connector(pki).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake hung"))?
}

/// Reads until the server closes the connection (EOF or an error); returns
/// false if it is still open after `secs`.
pub async fn closed_by_server(mut c: TlsStream<TcpStream>, secs: u64) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// A codec whose messages are raw bytes, so a test can send anything as a
/// request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytes
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Calls unary `method` (e.g. `/streamspace.v1.SessionService/CreateSession`)
/// with `body` as the request message; the status the server answers.
pub async fn raw_unary(ch: Channel, method: &'static str, token: &str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("channel ready");
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let path = PathAndQuery::from_static(method);
    match grpc.unary(req, path, RawBytes).await {
        Ok(r) => Status::ok(format!("answered with {} bytes", r.into_inner().len())),
        Err(s) => s,
    }
}

/// Opens the agent port's Attach stream with `agent`'s certificate and sends
/// `frame` as the first message; the status the stream ends with.
pub async fn raw_attach(pki: &TestPki, addr: SocketAddr, agent: &str, frame: Vec<u8>) -> Status {
    let id = pki.agent_pem(agent);
    let ch = try_channel(pki, addr, Some(&id))
        .await
        .expect("agent connects");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("channel ready");
    let outbound = tokio_stream::iter(vec![frame]).chain(tokio_stream::pending());
    let path = PathAndQuery::from_static("/streamspace.v1.AgentService/Attach");
    let resp: Result<tonic::Response<Streaming<Vec<u8>>>, Status> = grpc
        .streaming(tonic::Request::new(outbound), path, RawBytes)
        .await;
    match resp {
        Err(s) => s,
        Ok(r) => {
            let mut rx = r.into_inner();
            loop {
                match tokio::time::timeout(Duration::from_secs(15), rx.message()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) => return Status::ok("stream ended"),
                    Ok(Err(s)) => return s,
                    Err(_) => return Status::deadline_exceeded("the stream did not end"),
                }
            }
        }
    }
}

/// A TLS channel to `addr` trusting the test CA, presenting `identity` if
/// any; or the connect error (the harness's `channel` panics instead).
pub async fn try_channel(
    pki: &TestPki,
    addr: SocketAddr,
    identity: Option<&Pem>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.cert))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}
