//! The TLS listener under both gRPC servers (agent and API). A peer that
//! completes TCP or TLS and then sends nothing would otherwise hold a socket,
//! a task and their buffers for as long as it likes, and enough of them
//! exhaust the process's file descriptors. So every accepted connection:
//!
//! 1. takes a permit from the listener's connection budget, held for the
//!    connection's whole life; when none is left the new connection is closed
//!    at once (existing ones are untouched), and the refusal is logged once per
//!    burst, not once per connection;
//! 2. must finish its TLS handshake and deliver the HTTP/2 client preface and
//!    the first complete frame after it within the first-request deadline,
//!    counted from accept; otherwise the server closes it. After that first
//!    frame, HTTP/2 keepalive pings take over.
//!
//! The TLS handshake is done here (rustls with ring, ALPN `h2`; settings from
//! [`crate::tls`], asked for at every accept) rather than by
//! tonic so that the deadline covers handshake and preface alike, and the
//! connection reaches the HTTP/2 server (whose per-connection buffers are the
//! bulk of a connection's memory) only once the client has started talking:
//! an idle connection costs its socket and TLS state, nothing more. The
//! stream handed to tonic replays the bytes read so far and still reports the
//! peer's certificates, which the agent listener uses to authenticate agents.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::{debug, info, warn};

/// Bounds applied to every connection of one listener.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// From accept to the end of the TLS handshake and the first HTTP/2
    /// frame after the client preface.
    pub first_request_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            first_request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Accepts on `listener` for as long as the returned stream is held (tonic
/// drops it on shutdown, which closes the listening socket). `name` labels
/// the listener in logs. `tls` is asked for the TLS settings at every
/// accept, so replaced settings apply to new handshakes only.
pub fn incoming<F>(
    name: &'static str,
    listener: TcpListener,
    tls: F,
    limits: EdgeLimits,
) -> ReceiverStream<io::Result<EdgeConn>>
where
    F: Fn() -> Arc<ServerConfig> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(name, listener, tls, limits, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop<F>(
    name: &'static str,
    listener: TcpListener,
    tls: F,
    limits: EdgeLimits,
    tx: mpsc::Sender<io::Result<EdgeConn>>,
) where
    F: Fn() -> Arc<ServerConfig>,
{
    let budget = Arc::new(Semaphore::new(limits.max_connections));
    // Connections closed since the budget ran out; reset when one is accepted.
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors or a peer that reset before accept: keep
                // serving, but do not spin while the condition lasts.
                warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            if refused == 0 {
                warn!(
                    listener = name,
                    max_connections = limits.max_connections,
                    "connection limit reached: closing new connections until open ones close"
                );
            }
            refused += 1;
            drop(tcp);
            continue;
        };
        if refused > 0 {
            info!(
                listener = name,
                refused, "accepting connections again after the limit was reached"
            );
            refused = 0;
        }
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + limits.first_request_timeout;
        let (acceptor, tx) = (TlsAcceptor::from(tls()), tx.clone());
        tokio::spawn(async move {
            let start = async {
                let mut tls = acceptor.accept(tcp).await?;
                let (first, head) = read_head(&mut tls).await?;
                io::Result::Ok(EdgeConn::new(tls, permit, first, head, deadline))
            };
            match tokio::time::timeout_at(deadline, start).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    debug!(listener = name, error = %e, "connection closed before its first request")
                }
                Err(_) => debug!(
                    listener = name,
                    "no request within the first-request deadline; closed"
                ),
            }
        });
    }
}

/// Bytes of the HTTP/2 client preface plus the header of the frame after it.
const PREFACE_AND_HEADER: usize = 24 + 9;
/// Most bytes read before the connection is handed to the HTTP/2 server.
const HEAD_MAX: usize = 1024;

/// Reads until the client preface and the header of the first frame are in
/// (or the first frame is complete, or [`HEAD_MAX`] bytes were read). Returns
/// the watcher, `None` if the first frame is already complete, and the bytes.
async fn read_head(tls: &mut TlsStream<TcpStream>) -> io::Result<(Option<FirstRequest>, Vec<u8>)> {
    let mut first = FirstRequest {
        head: [0; PREFACE_AND_HEADER],
        seen: 0,
    };
    let mut head = Vec::new();
    let mut chunk = [0u8; 256];
    while head.len() < HEAD_MAX {
        let room = (HEAD_MAX - head.len()).min(chunk.len());
        let n = tls.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by the client before its first request",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if first.observe(&chunk[..n]) {
            return Ok((None, head));
        }
        if first.seen >= PREFACE_AND_HEADER {
            break;
        }
    }
    Ok((Some(first), head))
}

/// Watches the first bytes a client sends until the first frame after the
/// preface is complete.
struct FirstRequest {
    head: [u8; PREFACE_AND_HEADER],
    seen: usize,
}

impl FirstRequest {
    /// Takes the next bytes read; true once the first frame is complete.
    fn observe(&mut self, bytes: &[u8]) -> bool {
        if self.seen < PREFACE_AND_HEADER {
            let n = bytes.len().min(PREFACE_AND_HEADER - self.seen);
            self.head[self.seen..self.seen + n].copy_from_slice(&bytes[..n]);
        }
        self.seen = self.seen.saturating_add(bytes.len());
        if self.seen < PREFACE_AND_HEADER {
            return false;
        }
        // A frame header starts with its 24-bit payload length.
        let len = u32::from_be_bytes([0, self.head[24], self.head[25], self.head[26]]) as usize;
        self.seen >= PREFACE_AND_HEADER + len
    }
}

/// One accepted TLS connection, as handed to tonic: the bytes already read
/// come first; reads fail with `TimedOut` if the first frame has not arrived
/// by the deadline; and the connection's share of the listener's budget is
/// returned when it is dropped.
pub struct EdgeConn {
    io: TlsStream<TcpStream>,
    /// Read before the hand-over, not yet passed on.
    head: Vec<u8>,
    /// `None` once the first frame has arrived.
    first: Option<(FirstRequest, Pin<Box<Sleep>>)>,
    _permit: OwnedSemaphorePermit,
}

impl EdgeConn {
    fn new(
        io: TlsStream<TcpStream>,
        permit: OwnedSemaphorePermit,
        first: Option<FirstRequest>,
        head: Vec<u8>,
        deadline: Instant,
    ) -> Self {
        Self {
            io,
            head,
            first: first.map(|f| (f, Box::pin(tokio::time::sleep_until(deadline)))),
            _permit: permit,
        }
    }
}

impl Connected for EdgeConn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for EdgeConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head[..n]);
            this.head.drain(..n);
            if this.head.is_empty() {
                this.head = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        if let Some((_, deadline)) = &mut this.first
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 request within the first-request deadline",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some((first, _)) = &mut this.first
            && first.observe(&buf.filled()[before..])
        {
            this.first = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EdgeConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Parses a duration flag: a number with a unit `ms`, `s`, `m` or `h`
/// (`500ms`, `2s`, `1m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    // Echo at most a bounded, quoted prefix of what was given.
    let shown = crate::core::validate::shown(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 10s or 500ms, got {shown}"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        u => {
            return Err(format!(
                "expected a duration unit ms, s, m, h or d, got {} in {shown}",
                crate::core::validate::shown(u)
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("expected a duration above zero, got {shown}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher() -> FirstRequest {
        FirstRequest {
            head: [0; PREFACE_AND_HEADER],
            seen: 0,
        }
    }

    #[test]
    fn first_frame_is_complete_only_after_its_payload() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS frame header with a 6-byte payload, then the payload.
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        let mut w = watcher();
        // One byte at a time: complete only with the last byte.
        for (i, b) in bytes.iter().enumerate() {
            let done = w.observe(std::slice::from_ref(b));
            assert_eq!(done, i == bytes.len() - 1, "byte {i}");
        }
        // All at once.
        assert!(watcher().observe(&bytes));
        // The preface alone is not enough.
        assert!(!watcher().observe(&bytes[..24]));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        assert!(parse_duration("2 weeks").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").unwrap_err().contains("10s"));
    }
}
