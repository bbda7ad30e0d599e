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
//! offset, so several agents on one host rarely collide.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Mutex;

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

pub struct PortAllocator {
    range: PortRange,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Ports that live sessions of this agent hold.
    held: HashSet<u16>,
    /// Offset in the range where the next search starts.
    next: u32,
}

impl PortAllocator {
    /// An allocator over `range`; warns if the range overlaps the kernel's
    /// ephemeral range (then a port-0 bind anywhere on the host can take a
    /// session's port between the probe and the child's bind).
    pub fn new(range: PortRange) -> Self {
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

    /// A port no live session of this agent holds and that is bindable now.
    pub fn allocate(&self) -> Result<u16, PortError> {
        let mut i = self.inner.lock().expect("ports lock");
        let len = self.range.len();
        for k in 0..len {
            let off = (i.next + k) % len;
            let port = self.range.low + off as u16;
            if i.held.contains(&port) || !bindable(port) {
                continue;
            }
            i.held.insert(port);
            i.next = (off + 1) % len;
            return Ok(port);
        }
        Err(PortError::Exhausted {
            low: self.range.low,
            high: self.range.high,
            held: i.held.len(),
        })
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
        let all: Vec<u16> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
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
        let mut got = [p1, p2];
        got.sort();
        assert_eq!(got, [22000, 22002]);
        assert!(matches!(
            a.allocate(),
            Err(PortError::Exhausted { held: 3, .. })
        ));
        a.release(22001);
        assert_eq!(a.allocate().unwrap(), 22001);
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
