//! The audit log: one JSON line for every state-changing API call, apart
//! from the debug log (which goes to stderr and may be filtered or sampled).
//! Reads (Get, List, Watch) write nothing.
//!
//! A line has: `time` (RFC 3339, UTC, when the call arrived), `user` and
//! `role` of the caller, `method` (the full gRPC method), `target` (the
//! session, template or agent the call names, as sent), `outcome` (`OK` or
//! the gRPC code name, e.g. `INVALID_ARGUMENT`), `message` (the error's
//! message, at most 200 characters; empty on OK), `request_id` (the
//! caller's `x-request-id`, else a new UUID) and `trace_id` (from a W3C
//! `traceparent`, else empty). Never a token or any other metadata.
//!
//! The line is written (one `write` of the whole line on a file opened for
//! appending, under a lock) before the answer goes back, so concurrent calls
//! never interleave and a caller that got an answer can find its line.
//! Calls refused by authentication never reach a service and are not
//! written (they have no caller); the debug log has them.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tonic::{Request, Status};
use tracing::warn;

use crate::core::Caller;
use crate::core::model::{now_ms, rfc3339};

/// The state-changing methods, by full gRPC name.
pub mod method {
    pub const CREATE_SESSION: &str = "/streamspace.v1.SessionService/CreateSession";
    pub const HIBERNATE_SESSION: &str = "/streamspace.v1.SessionService/HibernateSession";
    pub const WAKE_SESSION: &str = "/streamspace.v1.SessionService/WakeSession";
    pub const DELETE_SESSION: &str = "/streamspace.v1.SessionService/DeleteSession";
    pub const PUT_TEMPLATE: &str = "/streamspace.v1.TemplateService/PutTemplate";
    pub const DELETE_TEMPLATE: &str = "/streamspace.v1.TemplateService/DeleteTemplate";
    pub const DRAIN_AGENT: &str = "/streamspace.v1.AgentAdminService/DrainAgent";
    pub const REVOKE_AGENT: &str = "/streamspace.v1.AgentAdminService/RevokeAgent";
    pub const UNREVOKE_AGENT: &str = "/streamspace.v1.AgentAdminService/UnrevokeAgent";
    pub const RETRY_COMMAND: &str = "/streamspace.v1.AgentAdminService/RetryCommand";
    pub const CANCEL_COMMAND: &str = "/streamspace.v1.AgentAdminService/CancelCommand";
}

/// Longest error message kept in a line.
const MAX_MESSAGE: usize = 200;
/// Longest `x-request-id` taken from a caller; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where audit lines go; clones share the sink. The default writes nothing.
#[derive(Clone, Default)]
pub struct AuditLog {
    sink: Option<Sink>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("on", &self.sink.is_some())
            .finish()
    }
}

impl AuditLog {
    /// `-` writes to stdout; any other path is opened for appending (created
    /// with mode 0640 if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let w: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            let mut o = std::fs::OpenOptions::new();
            o.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
            Box::new(o.open(path)?)
        };
        Ok(Self {
            sink: Some(Arc::new(Mutex::new(w))),
        })
    }

    /// Starts the line of one call to `method` on `target`; the call's
    /// result is given to [`Audited::finish`].
    pub fn start<T>(&self, req: &Request<T>, method: &'static str, target: &str) -> Audited {
        let Some(sink) = &self.sink else {
            return Audited(None);
        };
        let md = req.metadata();
        let request_id = md
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let trace_id = md
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id)
            .unwrap_or_default();
        Audited(Some(Pending {
            sink: sink.clone(),
            time_ms: now_ms(),
            caller: req.extensions().get::<Caller>().cloned(),
            method,
            target: target.chars().take(MAX_MESSAGE).collect(),
            request_id,
            trace_id,
        }))
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`);
/// None if it is not one (or the all-zero id).
fn trace_id(tp: &str) -> Option<String> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let [version, trace, parent, flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(version, 2)
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0');
    ok.then(|| trace.to_ascii_lowercase())
}

struct Pending {
    sink: Sink,
    time_ms: i64,
    caller: Option<Caller>,
    method: &'static str,
    target: String,
    request_id: String,
    trace_id: String,
}

/// One call being audited; [`Audited::finish`] writes its line.
pub struct Audited(Option<Pending>);

impl Audited {
    /// Writes the line for `result` and hands `result` back.
    pub fn finish<R>(self, result: Result<R, Status>) -> Result<R, Status> {
        if let Some(p) = self.0 {
            let (outcome, message) = match &result {
                Ok(_) => ("OK", String::new()),
                Err(s) => (
                    code_name(s.code()),
                    s.message().chars().take(MAX_MESSAGE).collect(),
                ),
            };
            let (user, role) = match &p.caller {
                Some(c) => (c.user.as_str(), if c.admin { "admin" } else { "user" }),
                None => ("", ""),
            };
            let mut line = serde_json::json!({
                "time": rfc3339(p.time_ms),
                "user": user,
                "role": role,
                "method": p.method,
                "target": p.target,
                "outcome": outcome,
                "message": message,
                "request_id": p.request_id,
                "trace_id": p.trace_id,
            })
            .to_string();
            line.push('\n');
            let mut w = p.sink.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = w.write_all(line.as_bytes()).and_then(|()| w.flush()) {
                warn!(error = %e, method = p.method, "writing the audit log");
            }
        }
        result
    }
}

/// The canonical name of a gRPC status code.
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamspace::v1 as pb;

    #[test]
    fn methods_name_the_generated_services() {
        let services = [
            pb::session_service_server::SERVICE_NAME,
            pb::template_service_server::SERVICE_NAME,
            pb::agent_admin_service_server::SERVICE_NAME,
        ];
        for m in [
            method::CREATE_SESSION,
            method::HIBERNATE_SESSION,
            method::WAKE_SESSION,
            method::DELETE_SESSION,
            method::PUT_TEMPLATE,
            method::DELETE_TEMPLATE,
            method::DRAIN_AGENT,
            method::REVOKE_AGENT,
            method::UNREVOKE_AGENT,
        ] {
            assert!(
                services.iter().any(|s| m.starts_with(&format!("/{s}/"))),
                "{m}"
            );
        }
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let tp = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-abc-00f067aa0ba902b7-01"), None);
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn a_line_per_call_with_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller {
            user: "alice".into(),
            admin: false,
            roles: vec![],
        });
        req.metadata_mut()
            .insert("x-request-id", "req-1".parse().unwrap());
        req.metadata_mut()
            .insert("authorization", "Bearer secret-token-123".parse().unwrap());
        let _ = log
            .start(&req, method::CREATE_SESSION, "s1")
            .finish::<()>(Err(Status::invalid_argument("name: bad")));
        let _ = log.start(&req, method::WAKE_SESSION, "s1").finish(Ok(()));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["outcome"], "INVALID_ARGUMENT");
        assert_eq!(lines[0]["message"], "name: bad");
        assert_eq!(lines[0]["request_id"], "req-1");
        assert_eq!(lines[0]["role"], "user");
        assert_eq!(lines[1]["outcome"], "OK");
        assert!(!text.contains("secret-token"));
    }
}
