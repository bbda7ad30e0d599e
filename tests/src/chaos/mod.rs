//! Shared set-up for the "kind, not instance" tests: the crash-timing test
//! (bursts of creates while the control plane or an agent is killed) and the
//! placement race test (many concurrent creates against too little capacity).
//!
//! Randomness comes from one seed, printed at the start and taken from
//! `STREAMSPACE_CHAOS_SEED` when set, so a failing run can be repeated; the
//! generator is a small local one so the sequence never changes with a crate
//! upgrade. Session names carry a per-run prefix, so the process sweep at the
//! end touches only this run's processes.

pub mod invariants;
pub mod noop;

use std::time::Duration;

use streamspace::v1 as pb;

use crate::Api;

/// SplitMix64: tiny, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi` exclusive; `lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// The run's seed: `STREAMSPACE_CHAOS_SEED` if set, else from the clock.
/// Printed either way, with the line that repeats the run.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("STREAMSPACE_CHAOS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            panic!("STREAMSPACE_CHAOS_SEED={s:?}: expected an unsigned integer")
        }),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    eprintln!("{test}: seed {seed} (repeat with STREAMSPACE_CHAOS_SEED={seed})");
    seed
}

/// An unsigned number from the environment variable `name`, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?}: expected an unsigned integer")),
        Err(_) => default,
    }
}

/// The template whose process keeps running and serves HTTP on $PORT.
pub const LASTING: &str = "static-files";
/// The template whose process opens its port, serves briefly, and exits 3.
pub const SHORT_LIVED: &str = "short-lived";

/// One process (no shell, no children) that serves HTTP on $PORT for
/// 1.5 s and then exits with status 3: a workload that dies on its own.
const SHORT_LIVED_SCRIPT: &str = "import http.server,os,threading;\
s=http.server.HTTPServer(('127.0.0.1',int(os.environ['PORT'])),http.server.SimpleHTTPRequestHandler);\
threading.Timer(1.5,lambda:os._exit(3)).start();\
s.serve_forever()";

/// Puts the dev templates and the short-lived template through the admin API.
pub async fn put_templates(api: &mut Api) {
    api.put_dev_templates().await;
    let base = streamspace_control_plane::dev::dev_templates()
        .into_iter()
        .find(|t| t.name == LASTING)
        .expect("the dev templates include static-files");
    let mut t = streamspace_control_plane::grpc::convert::template_pb(&base);
    t.name = SHORT_LIVED.into();
    t.display_name = "Exits soon after start".into();
    t.description = "Serves HTTP for 1.5 s, then exits with status 3.".into();
    t.command = vec!["python3".into(), "-c".into(), SHORT_LIVED_SCRIPT.into()];
    api.templates
        .put_template(pb::PutTemplateRequest { template: Some(t) })
        .await
        .expect("put the short-lived template");
}

/// Kills, on drop, every process whose `SESSION_ID` starts with the run's
/// prefix: whatever a failing or passing run left behind, orphans included
/// (the agents' own clean-up only knows the processes in their state files).
pub struct Sweeper {
    pub prefix: String,
}

impl Sweeper {
    pub fn sweep(&self) -> usize {
        let live = invariants::live_session_processes(&self.prefix);
        for p in &live {
            let pid = nix::unistd::Pid::from_raw(p.pid);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        live.len()
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// Runs `f` with a deadline; a call that hangs counts as failed.
pub async fn bounded<T>(
    secs: u64,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {secs}s"
        ))),
    }
}
