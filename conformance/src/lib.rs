//! `streamspace-conformance`: the conformance kit every StreamSpace agent must
//! pass. The kit plays the control plane's side of `AgentService.Attach`
//! itself, over real mTLS on loopback with a throwaway PKI, launches the agent
//! under test from a shell command line with the environment every agent
//! reads, and runs named cases against it. Each case scripts the frames the
//! kit sends, checks one rule of the protocol in what comes back, and records
//! a normalized transcript that is compared with a committed golden file.
//!
//! # Layout
//! - [`cases`]: the named cases (one rule each) and their registry.
//! - [`ctx`]: what a case works with (directory, PKI, listener, agent, workloads).
//! - [`conn`]: one agent stream from the kit's side: sends, waits with deadlines,
//!   accounts for every frame.
//! - [`server`]: the mTLS `AgentService` listener that hands streams to the case.
//! - [`agent`]: launching and killing the agent under test (`sh -c`).
//! - [`pki`]: CA, server and agent certificates (rcgen).
//! - [`transcript`], [`golden`]: normalized transcripts and golden files.
//! - [`report`]: TAP, JUnit XML and the summary line; [`http`]: probing session URLs.
//! - [`error`]: the crate's one error type.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cases;
pub mod conn;
pub mod ctx;
pub mod error;
pub mod golden;
pub mod http;
pub mod pki;
pub mod report;
pub mod server;
pub mod transcript;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use error::{Error, Result};

/// Longest a case may run before it fails.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do with golden transcripts.
#[derive(Clone)]
pub enum Golden {
    Compare(PathBuf),
    Update(PathBuf),
    Ignore,
}

/// Runs one case to its end (pass, broken rule, or kit error).
pub async fn run_case(
    settings: &ctx::Settings,
    case: &'static cases::Case,
    golden: &Golden,
) -> report::Outcome {
    let started = Instant::now();
    let mut detail = String::new();
    let failure = match ctx::Ctx::new(settings, case.name).await {
        Err(e) => Some(format!("the kit could not set the case up: {e}")),
        Ok(mut c) => {
            let r = tokio::time::timeout(CASE_TIMEOUT, (case.run)(&mut c)).await;
            let failure = match r {
                Err(_) => Some(format!(
                    "rule {}: the case did not finish within {CASE_TIMEOUT:?}",
                    case.name
                )),
                Ok(Err(e @ Error::Rule { .. })) => Some(e.to_string()),
                Ok(Err(e)) => Some(format!("the kit failed: {e}")),
                Ok(Ok(())) => {
                    let text = c.transcript_text();
                    match golden {
                        Golden::Compare(dir) => golden::compare(dir, case.name, &text)
                            .map(|d| format!("golden transcript: {d}")),
                        Golden::Update(dir) => golden::write(dir, case.name, &text)
                            .err()
                            .map(|e| format!("the kit failed: {e}")),
                        Golden::Ignore => None,
                    }
                }
            };
            if failure.is_some() {
                detail = c.agent_log();
            }
            failure
        }
    };
    report::Outcome {
        case: case.name,
        duration: started.elapsed(),
        failure,
        detail,
    }
}
