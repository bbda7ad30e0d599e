//! Ports for session processes. Binding port 0 and handing the number to the
//! child does not work: the socket is closed before the child binds, and the
//! kernel hands the same number out again, so two sessions get one port.
//!
//! The allocator hands out ports from a range of its own, outside the
//! kernel's ephemeral range (so the kernel never picks them for outgoing
//! connections or port-0 binds), remembers every port a live session holds
//! (including sessions re-adopted after a restart) and never hands a held
//! port out again until it is released. It probes that a port is bindable
//! before handing it out (another program may use it) and starts at a random
//! offset.
//!
//! Several agents on one host (or one agent and its restarted self) share the
//! host's ports, and the bind probe alone cannot see a port that another
//! agent has handed out but whose process has not bound it yet (still
//! starting, or hibernated before it got there). So each handed-out port is
//! also locked host-wide: an exclusive `flock` on `<lock dir>/<port>`, taken
//! without waiting. The session's process inherits the lock's file
//! descriptor as its standard input (an empty, read-only file: reading it
//! gives end-of-file, as `/dev/null` would), so the lock lives exactly as
//! long as the process (and any child that keeps its stdin) does — across
//! agent restarts, and gone the moment the process dies. A workload that
//! closes its stdin (a daemon) drops the lock; its bound port still fails the
//! probe. Agents that share a network namespace should
//! share the lock directory (`--port-lock-dir`, default
//! `<temp dir>/streamspace-ports`); a lock directory that cannot be used
//! leaves the bind probe alone, with a warning.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// The default range of session ports.
pub const DEFAULT_RANGE: &str = "20000-29999";

/// An inclusive range of TCP ports, parsed from `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        DEFAULT_RANGE.parse().expect("default range parses")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("--session-ports: expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, found {0:?}")]
    BadRange(String),
    #[error("no free port in {low}-{high}: {held} held by sessions of this agent, the rest in use")]
    Exhausted { low: u16, high: u16, held: usize },
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, PortError> {
        let bad = || {
            let shown: String = s.chars().take(40).collect();
            PortError::BadRange(shown)
        };
        let (l, h) = s.trim().split_once('-').ok_or_else(bad)?;
        let low: u16 = l.trim().parse().map_err(|_| bad())?;
        let high: u16 = h.trim().parse().map_err(|_| bad())?;
        if low < 1024 || low > high {
            return Err(bad());
        }
        Ok(Self { low, high })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl PortRange {
    fn len(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    fn contains(&self, p: u16) -> bool {
        (self.low..=self.high).contains(&p)
    }

    fn overlaps(&self, r: &RangeInclusive<u16>) -> bool {
        self.low <= *r.end() && *r.start() <= self.high
    }
}

/// The kernel's ephemeral port range, if this is Linux and it can be read.
pub fn ephemeral_range() -> Option<RangeInclusive<u16>> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Some(a..=b),
        _ => None,
    }
}

/// Whether a listener can bind `port` on every address now (so nothing
/// listens on it, on loopback or elsewhere).
fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// The host-wide lock directory when none is configured.
pub fn default_lock_dir() -> PathBuf {
    std::env::temp_dir().join("streamspace-ports")
}

/// A port handed out, with its host-wide lock (a read-only descriptor of the
/// empty lock file). The session's process gets the lock as its standard
/// input ([`stdin`](Self::stdin)): it reads end-of-file there, as from
/// `/dev/null`, and holds the lock until it exits or closes its stdin.
#[derive(Debug)]
pub struct PortClaim {
    pub port: u16,
    lock: Option<File>,
}

impl PortClaim {
    /// Standard input for the session's process: the lock, or `/dev/null`
    /// when the lock directory is unusable.
    pub fn stdin(&mut self) -> std::process::Stdio {
        match self.lock.take() {
            Some(f) => f.into(),
            None => std::process::Stdio::null(),
        }
    }
}

pub struct PortAllocator {
    range: PortRange,
    lock_dir: PathBuf,
    /// Set once a warning about an unusable lock directory was logged.
    lock_warned: AtomicBool,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Ports that live sessions of this agent hold.
    held: HashSet<u16>,
    /// Offset in the range where the next search starts.
    next: u32,
}

impl PortAllocator {
    /// An allocator over `range` locking ports in [`default_lock_dir`].
    pub fn new(range: PortRange) -> Self {
        Self::with_lock_dir(range, default_lock_dir())
    }

    /// An allocator over `range` locking ports in `lock_dir`; warns if the
    /// range overlaps the kernel's ephemeral range (then a port-0 bind
    /// anywhere on the host can take a session's port between the probe and
    /// the child's bind).
    pub fn with_lock_dir(range: PortRange, lock_dir: PathBuf) -> Self {
        if let Some(eph) = ephemeral_range()
            && range.overlaps(&eph)
        {
            warn!(
                session_ports = %range,
                ephemeral = %format!("{}-{}", eph.start(), eph.end()),
                "--session-ports overlaps the kernel's ephemeral port range; pick a range outside it"
            );
        }
        Self {
            range,
            lock_dir,
            lock_warned: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                held: HashSet::new(),
                next: rand::random_range(0..range.len()),
            }),
        }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Records that a live session holds `port` (a session re-adopted after
    /// a restart), so it is not handed out again.
    pub fn adopt(&self, port: u16) {
        self.inner.lock().expect("ports lock").held.insert(port);
    }

    /// A port no live session of this agent holds, nobody on the host has
    /// locked, and that is bindable now.
    pub fn allocate(&self) -> Result<PortClaim, PortError> {
        let mut i = self.inner.lock().expect("ports lock");
        let len = self.range.len();
        for k in 0..len {
            let off = (i.next + k) % len;
            let port = self.range.low + off as u16;
            if i.held.contains(&port) {
                continue;
            }
            let lock = match self.lock(port) {
                Lock::Taken => continue,
                Lock::Held(f) => Some(f),
                Lock::Unusable => None,
            };
            if !bindable(port) {
                continue;
            }
            i.held.insert(port);
            i.next = (off + 1) % len;
            return Ok(PortClaim { port, lock });
        }
        Err(PortError::Exhausted {
            low: self.range.low,
            high: self.range.high,
            held: i.held.len(),
        })
    }

    /// Takes the host-wide lock of `port` without waiting.
    fn lock(&self, port: u16) -> Lock {
        match try_lock(&self.lock_dir, port) {
            Ok(Some(f)) => Lock::Held(f),
            Ok(None) => Lock::Taken,
            Err(e) => {
                if !self.lock_warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        dir = %self.lock_dir.display(),
                        error = %e,
                        "port lock directory unusable; ports are only probed, so another agent on this host may hand out the same port (set --port-lock-dir)"
                    );
                }
                Lock::Unusable
            }
        }
    }

    /// The session holding `port` is gone: the port can be handed out again.
    pub fn release(&self, port: u16) {
        self.inner.lock().expect("ports lock").held.remove(&port);
    }

    /// How many ports live sessions hold.
    pub fn held(&self) -> usize {
        self.inner.lock().expect("ports lock").held.len()
    }

    /// Whether `port` is inside this allocator's range.
    pub fn in_range(&self, port: u16) -> bool {
        self.range.contains(port)
    }
}

enum Lock {
    Held(File),
    Taken,
    Unusable,
}

/// Opens `<dir>/<port>` (creating the directory world-writable and sticky,
/// like `/tmp`, so agents of other users can lock there too) and locks it
/// exclusively: `Some` when locked, `None` when someone else holds it.
fn try_lock(dir: &Path, port: u16) -> std::io::Result<Option<File>> {
    if !dir.is_dir() {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        match std::fs::DirBuilder::new().mode(0o1777).create(dir) {
            Ok(()) => {
                // The umask trimmed the mode.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    // The locked descriptor is read-only: it becomes a session's stdin.
    // `flock` needs only an open descriptor, so a file another user created
    // works too.
    let path = dir.join(port.to_string());
    if !path.exists() {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
    }
    let f = File::open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ranges_parse_and_are_checked() {
        assert_eq!(
            "20000-29999".parse::<PortRange>().unwrap(),
            PortRange {
                low: 20000,
                high: 29999
            }
        );
        for bad in ["", "80-90", "3000", "5000-4000", "1024-70000", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let a = Arc::new(PortAllocator::new("21000-21999".parse().unwrap()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..25).map(|_| a.allocate().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let claims: Vec<PortClaim> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let all: Vec<u16> = claims.iter().map(|c| c.port).collect();
        let distinct: HashSet<u16> = all.iter().copied().collect();
        assert_eq!(distinct.len(), 400, "every allocation is a different port");
        assert!(all.iter().all(|p| (21000..=21999).contains(p)));
    }

    #[test]
    fn adopted_ports_are_not_handed_out_and_release_frees() {
        let a = PortAllocator::new("22000-22002".parse().unwrap());
        a.adopt(22001);
        let p1 = a.allocate().unwrap();
        let p2 = a.allocate().unwrap();
        let mut got = [p1.port, p2.port];
        got.sort();
        assert_eq!(got, [22000, 22002]);
        assert!(matches!(
            a.allocate(),
            Err(PortError::Exhausted { held: 3, .. })
        ));
        a.release(22001);
        assert_eq!(a.allocate().unwrap().port, 22001);
    }

    /// Two agents on one host (two allocators over one range and one lock
    /// directory) never hand out the same port, although no process ever
    /// binds one: the bind probe alone would let both have every port.
    #[test]
    fn two_agents_on_one_host_never_share_a_port() {
        let dir = tempfile::tempdir().unwrap();
        let range: PortRange = "23000-23009".parse().unwrap();
        let agents: Vec<Arc<PortAllocator>> = (0..2)
            .map(|_| Arc::new(PortAllocator::with_lock_dir(range, dir.path().into())))
            .collect();
        let threads: Vec<_> = agents
            .iter()
            .map(|a| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(c) = a.allocate() {
                        got.push(c);
                    }
                    got
                })
            })
            .collect();
        let claims: Vec<PortClaim> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: HashSet<u16> = claims.iter().map(|c| c.port).collect();
        assert_eq!(claims.len(), 10, "together they hand out the range once");
        assert_eq!(distinct.len(), 10, "no port twice: {claims:?}");
        // A released port whose lock is gone is free for the other agent.
        let mut claims = claims;
        let first = claims.remove(0).port;
        let owner = agents
            .iter()
            .position(|a| a.inner.lock().unwrap().held.contains(&first))
            .unwrap();
        agents[owner].release(first);
        assert_eq!(agents[1 - owner].allocate().unwrap().port, first);
        drop(claims);
    }

    /// The lock lives as long as the session's process: handed to a child,
    /// it outlives the claim and the allocator (an agent restart), and is
    /// gone when the child dies.
    #[test]
    fn the_lock_lives_as_long_as_the_process_that_inherits_it() {
        let dir = tempfile::tempdir().unwrap();
        let range: PortRange = "23100-23100".parse().unwrap();
        let a = PortAllocator::with_lock_dir(range, dir.path().into());
        let mut claim = a.allocate().unwrap();
        assert!(claim.lock.is_some(), "the lock directory is usable");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(claim.stdin())
            .spawn()
            .unwrap();
        drop(claim);
        drop(a);
        let restarted = PortAllocator::with_lock_dir(range, dir.path().into());
        assert!(
            matches!(
                restarted.allocate(),
                Err(PortError::Exhausted { held: 0, .. })
            ),
            "the child holds the port's lock"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(restarted.allocate().unwrap().port, 23100);
    }

    /// A lock directory that cannot be used leaves the bind probe alone.
    #[test]
    fn an_unusable_lock_directory_falls_back_to_probing() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let a = PortAllocator::with_lock_dir("23200-23201".parse().unwrap(), file.path().join("x"));
        let c = a.allocate().unwrap();
        assert!(c.lock.is_none());
        assert!((23200..=23201).contains(&c.port));
    }

    #[test]
    fn a_port_in_use_by_another_program_is_skipped() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = l.local_addr().unwrap().port();
        let a = PortAllocator::new(PortRange {
            low: taken,
            high: taken,
        });
        assert!(matches!(
            a.allocate(),
            Err(PortError::Exhausted { held: 0, .. })
        ));
    }
}
