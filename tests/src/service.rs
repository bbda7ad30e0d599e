//! A stand-in for a Kubernetes Service in front of several control-plane
//! replicas: a TCP proxy on loopback that sends each new connection to the
//! next backend that accepts it (round robin), as kube-proxy does. It can
//! also cut every open connection without a FIN or RST ([`Service::blackhole`]):
//! the proxy stops forwarding but keeps the sockets open, so the peers see
//! only silence, as when a node or a network path dies.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Sockets of blackholed connections, kept open until the service drops.
type Held = Arc<Mutex<Vec<Box<dyn Any + Send>>>>;

pub struct Service {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Set on every connection open when [`Service::blackhole`] is called.
    cuts: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    held: Held,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Service {
    /// Listens on 127.0.0.1 and forwards to `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let cuts: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let held = Held::default();
        let next = Arc::new(AtomicUsize::new(0));
        let (b, c, h) = (backends.clone(), cuts.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (b, c, h, next) = (b.clone(), c.clone(), h.clone(), next.clone());
                tokio::spawn(async move {
                    let list = b.lock().unwrap().clone();
                    for i in 0..list.len() {
                        let to = list[(next.fetch_add(1, Ordering::Relaxed) + i) % list.len()];
                        if let Ok(server) = TcpStream::connect(to).await {
                            let cut = Arc::new(AtomicBool::new(false));
                            c.lock().unwrap().push(cut.clone());
                            forward(client, server, cut, h).await;
                            return;
                        }
                    }
                    // No backend accepts: the client sees its connection close.
                });
            }
        });
        Self {
            addr,
            backends,
            cuts,
            held,
            task,
        }
    }

    /// Sends new connections to `backends` from now on.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }

    /// Every connection open now stops forwarding, with no FIN or RST.
    /// New connections are forwarded as before.
    pub fn blackhole(&self) {
        for c in self.cuts.lock().unwrap().drain(..) {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// Connections cut so far whose sockets are still held open.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// Copies both ways until either side closes or `cut` is set; once cut,
/// both sockets are kept open (and unread) in `held`.
async fn forward(client: TcpStream, server: TcpStream, cut: Arc<AtomicBool>, held: Held) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, cut.clone()));
    let down = tokio::spawn(pump(sr, cw, cut));
    for halves in [up.await, down.await].into_iter().flatten().flatten() {
        held.lock().unwrap().push(halves);
    }
}

/// Copies `r` to `w` until EOF (then shuts `w` down) or `cut`; when cut,
/// returns both halves so the caller keeps them open.
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) -> Option<Box<dyn Any + Send>> {
    let mut buf = vec![0u8; 16 * 1024];
    let cut_set = || {
        let cut = cut.clone();
        async move {
            while !cut.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = cut_set() => return Some(Box::new((r, w))),
        };
        match n {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return None;
            }
            Ok(n) => {
                if cut.load(Ordering::SeqCst) {
                    return Some(Box::new((r, w)));
                }
                if w.write_all(&buf[..n]).await.is_err() {
                    return None;
                }
            }
        }
    }
}
