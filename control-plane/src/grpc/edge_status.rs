//! Corrects two status codes tonic gives for requests it cannot read, on
//! both listeners and for unary and streaming methods alike:
//!
//! - a request body that is not valid protobuf comes back from tonic's codec
//!   as INTERNAL ("failed to decode Protobuf message: ..."), which tells the
//!   caller the server is at fault; it is the caller's input, so it becomes
//!   INVALID_ARGUMENT;
//! - a message over the server's size limit comes back as OUT_OF_RANGE
//!   ("Error, decoded message length too large: ..."); gRPC clients expect
//!   RESOURCE_EXHAUSTED for that.
//!
//! tonic produces both below the service handlers, so this is a tower layer
//! over the whole router that rewrites exactly those two statuses — matched
//! on the code and on tonic's own message prefix, so that an INTERNAL raised
//! by our own code is never relabelled — wherever they appear: in response
//! headers (a call that failed before answering) or in trailers (a stream
//! that ended with the error). The message says which part was at fault and
//! is bounded in length.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

const DECODE_PREFIX: &str = "failed to decode Protobuf message";
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";
/// Longest message this layer writes (tonic's own texts are short, but a
/// decode error names a path of fields).
const MAX_MESSAGE: usize = 256;

/// The corrected status for a status tonic wrote, if it is one of the two.
pub fn corrected(code: Code, message: &str) -> Option<Status> {
    let (code, text) = match code {
        Code::Internal if message.starts_with(DECODE_PREFIX) => (
            Code::InvalidArgument,
            format!("request: not a valid protobuf message for this method ({message})"),
        ),
        Code::OutOfRange if message.starts_with(TOO_LARGE_PREFIX) => (
            Code::ResourceExhausted,
            format!(
                "request: message too large ({})",
                message.trim_start_matches("Error, ")
            ),
        ),
        _ => return None,
    };
    let mut text = text;
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    Some(Status::new(code, text))
}

/// Rewrites `grpc-status` / `grpc-message` in place when they carry one of
/// the two statuses.
fn rewrite(headers: &mut HeaderMap) {
    let Some(code) = headers.get(Status::GRPC_STATUS) else {
        return;
    };
    // Cheap filter before decoding the message: INTERNAL is 13, OUT_OF_RANGE 11.
    if code != "13" && code != "11" {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let Some(fixed) = corrected(status.code(), status.message()) else {
        return;
    };
    let mut fresh = HeaderMap::new();
    if fixed.add_header(&mut fresh).is_err() {
        return;
    }
    for name in [Status::GRPC_STATUS, Status::GRPC_MESSAGE] {
        if let Some(v) = fresh.remove(&name) {
            headers.insert(name, v);
        }
    }
}

/// The layer; add it with `Server::builder().layer(EdgeStatusLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeStatusLayer;

impl<S> Layer<S> for EdgeStatusLayer {
    type Service = EdgeStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeStatus { inner }
    }
}

#[derive(Debug, Clone)]
pub struct EdgeStatus<S> {
    inner: S,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for EdgeStatus<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite(resp.headers_mut());
            Ok(resp.map(|b| Body::new(TrailerFix(b))))
        })
    }
}

/// A response body whose trailers pass through [`rewrite`].
struct TrailerFix(Body);

impl HttpBody for TrailerFix {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.0).poll_frame(cx);
        if let Poll::Ready(Some(Ok(mut frame))) = polled {
            if let Some(t) = frame.trailers_mut() {
                rewrite(t);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_two_statuses_are_corrected() {
        let s = corrected(
            Code::Internal,
            "failed to decode Protobuf message: invalid varint",
        )
        .unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("request: not a valid protobuf"));
        let s = corrected(
            Code::OutOfRange,
            "Error, decoded message length too large: found 2097152 bytes, the limit is: 1048576 bytes",
        )
        .unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("found 2097152 bytes"), "{s:?}");
        // Our own INTERNAL and OUT_OF_RANGE statuses stay as they are.
        assert!(corrected(Code::Internal, "store: disk full").is_none());
        assert!(corrected(Code::OutOfRange, "page_size: too big").is_none());
        assert!(corrected(Code::InvalidArgument, DECODE_PREFIX).is_none());
        // Bounded.
        let long = format!("{DECODE_PREFIX}: {}", "é".repeat(10_000));
        let s = corrected(Code::Internal, &long).unwrap();
        assert!(
            s.message().len() <= MAX_MESSAGE + 3,
            "{}",
            s.message().len()
        );
    }

    #[test]
    fn headers_are_rewritten_in_place() {
        let mut h = HeaderMap::new();
        Status::internal(format!("{DECODE_PREFIX}: invalid varint"))
            .add_header(&mut h)
            .unwrap();
        h.insert("content-type", "application/grpc".parse().unwrap());
        rewrite(&mut h);
        let s = Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(h["content-type"], "application/grpc");
        let mut h = HeaderMap::new();
        Status::internal("our own failure")
            .add_header(&mut h)
            .unwrap();
        rewrite(&mut h);
        assert_eq!(Status::from_header_map(&h).unwrap().code(), Code::Internal);
    }
}
