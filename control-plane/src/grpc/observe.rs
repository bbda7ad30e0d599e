//! One span and one count per API call, as a tower layer over the API
//! router (outside [`super::edge_status`], so what it records is the status
//! the caller gets).
//!
//! The span (`grpc.request`, named after the method for trace backends)
//! continues the caller's W3C `traceparent` when the request carries one;
//! everything the handler does runs inside it, so a command the call writes
//! joins the caller's trace. With metrics on, the call is counted by method
//! and status code and timed until its response headers: the whole call for
//! a unary method, the time to open it for a stream.
//!
//! The status is the `grpc-status` response header when there is one (every
//! refusal is a trailers-only response) and OK otherwise.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use streamspace_runtime_util::telemetry;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument, info_span};

use crate::metrics::Metrics;

/// The method as a label: the gRPC path without its slash for the services
/// this server knows, `other` for anything else (bounded cardinality).
pub fn method_label(path: &str) -> String {
    let p = path.strip_prefix('/').unwrap_or(path);
    let known = ["streamspace.", "grpc.health.", "grpc.reflection."];
    let well_formed = p.split('/').count() == 2
        && p.len() <= 128
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/".contains(&b));
    if well_formed && known.iter().any(|k| p.starts_with(k)) {
        p.to_string()
    } else {
        "other".to_string()
    }
}

/// A status code as a label: `Ok`, `InvalidArgument`, `Unauthenticated`…
pub fn code_label(code: Code) -> String {
    format!("{code:?}")
}

/// The layer; add it with `Server::builder().layer(..)` before the others.
#[derive(Clone, Default)]
pub struct ApiObserveLayer {
    metrics: Option<Arc<Metrics>>,
}

impl ApiObserveLayer {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ApiObserveLayer {
    type Service = ApiObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiObserve {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiObserve<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ApiObserve<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<ResBody>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        let span = info_span!(
            "grpc.request",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::set_parent(
            &span,
            req.headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        let started = Instant::now();
        let fut = span.in_scope(|| self.inner.call(req));
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let r = fut.instrument(span.clone()).await;
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .map(Code::from_i32)
                    .unwrap_or(Code::Ok),
                Err(_) => Code::Unknown,
            };
            span.record("rpc.grpc.status_code", code as i32);
            if let Some(m) = metrics {
                m.api_request(&method, &code_label(code), started.elapsed());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_our_services_share_one_label() {
        assert_eq!(
            method_label("/streamspace.v1.SessionService/CreateSession"),
            "streamspace.v1.SessionService/CreateSession"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        for junk in [
            "/",
            "",
            "/evil.Service/Method",
            "/streamspace.v1.SessionService/Create\"Session",
            "/streamspace.v1.SessionService/a/b",
            &format!("/streamspace.{}/M", "x".repeat(200)),
        ] {
            assert_eq!(method_label(junk), "other", "{junk:?}");
        }
    }

    proptest::proptest! {
        /// Whatever path a caller sends, the label is a known service's
        /// method of bounded length or `other`: a client cannot mint label
        /// values.
        #[test]
        fn any_path_gives_a_bounded_known_label(path in ".{0,300}") {
            let l = method_label(&path);
            proptest::prop_assert!(
                l == "other"
                    || (l.len() <= 128
                        && ["streamspace.", "grpc.health.", "grpc.reflection."]
                            .iter()
                            .any(|k| l.starts_with(k))
                        && l.matches('/').count() == 1),
                "{l:?}"
            );
        }
    }

    #[test]
    fn codes_read_as_their_names() {
        assert_eq!(code_label(Code::Ok), "Ok");
        assert_eq!(code_label(Code::ResourceExhausted), "ResourceExhausted");
    }
}
