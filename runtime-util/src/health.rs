//! A plaintext gRPC health endpoint for kubelet probes. Kubernetes' native
//! gRPC probes (`grpc: {port: N}`) speak HTTP/2 without TLS only, while every
//! StreamSpace listener is TLS; so a binary that wants a probe opens this
//! second, plaintext listener. It serves `grpc.health.v1.Health` and nothing
//! else, so it gives away no more than "serving or not".
//!
//! The overall service (the empty name, which probes ask by default) starts in
//! the state the caller chooses and follows [`HealthEndpoint::set_serving`].

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Parses the health listener flag: an address, or empty for none.
pub fn parse_health_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|e| format!("expected HOST:PORT (e.g. 0.0.0.0:8081) or empty, found {s:?}: {e}"))
}

/// A running health endpoint.
pub struct HealthEndpoint {
    addr: SocketAddr,
    reporter: HealthReporter,
}

impl HealthEndpoint {
    /// Binds `addr` and serves the health service in plaintext until
    /// `shutdown` resolves; the overall status starts as `serving`.
    pub async fn start(
        addr: SocketAddr,
        serving: bool,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        let endpoint = Self { addr, reporter };
        endpoint.set_serving(serving).await;
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "health listener stopped");
            }
        });
        tracing::info!(%addr, serving, "health listener (plaintext, grpc.health.v1 only)");
        Ok((endpoint, task))
    }

    /// The bound address (the port is known even when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the overall status probes see.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;

    #[test]
    fn empty_means_no_listener() {
        assert_eq!(parse_health_addr(""), Ok(None));
        assert_eq!(
            parse_health_addr("0.0.0.0:8081"),
            Ok(Some("0.0.0.0:8081".parse().unwrap()))
        );
        assert!(parse_health_addr("8081").is_err());
    }

    /// A probe over plaintext HTTP/2 sees the status the owner sets, and
    /// the listener closes on shutdown.
    #[tokio::test]
    async fn probes_see_the_status_in_plaintext() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (h, task) = HealthEndpoint::start("127.0.0.1:0".parse().unwrap(), false, stopped)
            .await
            .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let mut check = async || {
            let req = HealthCheckRequest {
                service: String::new(),
            };
            client.check(req).await.unwrap().into_inner().status()
        };
        assert_eq!(check().await, Wire::NotServing);
        h.set_serving(true).await;
        assert_eq!(check().await, Wire::Serving);
        drop(client);
        let _ = stop.send(());
        task.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(h.local_addr())
                .await
                .is_err()
        );
    }
}
