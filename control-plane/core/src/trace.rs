//! The trace a command belongs to. The core keeps OpenTelemetry out of its
//! dependencies: a command only carries the W3C `traceparent` of the span
//! that accepted it (an opaque string, empty when tracing is off), and the
//! binary that exports traces installs the two functions that read the
//! current span's context and link a span to a stored one. Without them
//! every command's context is empty and linking does nothing.

use std::sync::OnceLock;

/// What the exporting binary provides.
#[derive(Clone, Copy)]
pub struct Bridge {
    /// The `traceparent` of the current span ("" when none).
    pub current: fn() -> String,
    /// Makes a span the child of the span a `traceparent` names.
    pub set_parent: fn(&tracing::Span, &str),
}

static BRIDGE: OnceLock<Bridge> = OnceLock::new();

/// Installs the bridge (the first call wins; later ones change nothing).
pub fn install(b: Bridge) {
    let _ = BRIDGE.set(b);
}

/// The `traceparent` of the current span, or "" without a bridge.
pub fn current() -> String {
    BRIDGE.get().map(|b| (b.current)()).unwrap_or_default()
}

/// Links `span` under `traceparent` (no-op when empty or without a bridge).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    if let Some(b) = BRIDGE.get() {
        (b.set_parent)(span, traceparent);
    }
}
