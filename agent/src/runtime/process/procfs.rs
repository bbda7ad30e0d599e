//! What the process runtime reads from /proc and the signals it sends: a
//! session's process is identified by pid *and* kernel start time (a pid can
//! be reused), and a process whose pid was never recorded is found by the
//! unique tag the runtime puts in its environment.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Local ports of established TCP connections (IPv4 and IPv6), from
/// /proc/net/tcp and /proc/net/tcp6 of the agent's network namespace.
pub fn established_local_ports() -> std::collections::HashSet<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| parse_established(&t))
        .collect()
}

/// The local ports of the ESTABLISHED (state 01) rows of a /proc/net/tcp
/// table; malformed rows are skipped.
pub fn parse_established(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != "01" {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// The environment variable carrying a spawn's unique tag.
pub const SPAWN_ENV: &str = "STREAMSPACE_SPAWN";

/// (state char, start time) of `pid` from /proc, or None if it does not exist.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The process whose environment carries `STREAMSPACE_SPAWN=<tag>`, as (pid,
/// start time): the session leader if several share the tag (its children
/// inherit the environment).
pub fn find_tagged(tag: &str) -> Option<(i32, u64)> {
    let needle = format!("{SPAWN_ENV}={tag}");
    let mut found: Vec<(i32, u64, bool)> = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        if let Some((st, start)) = proc_stat(pid)
            && st != 'Z'
            && st != 'X'
        {
            let leader =
                nix::unistd::getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid);
            found.push((pid, start, leader));
        }
    }
    found.sort_by_key(|(pid, _, leader)| (!leader, *pid));
    found.first().map(|(pid, start, _)| (*pid, *start))
}

/// Whether the process we started (pid + start time) still exists and is not a zombie.
pub fn alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((st, t)) if t == start_time && st != 'Z' && st != 'X')
}

/// Waits up to `limit` for the process to exit; returns whether it did.
pub async fn gone_within(pid: i32, start_time: u64, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while alive(pid, start_time) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Signals the session's process group. Just after spawning, the child may
/// not have made itself a group leader yet (`setsid` runs in it first), so
/// there is no such group; then the process itself gets the signal, or a
/// hibernate sent in that moment would be lost.
pub fn signal_group(pid: i32, sig: Signal) {
    if killpg(Pid::from_raw(pid), sig) == Err(Errno::ESRCH) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3153198 1 0 100 0 0 10 0
   1: 0100007F:4E20 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3153200 1 0 20 4 30 10 -1
   2: 0100007F:9C40 0100007F:4E20 01 00000000:00000000 00:00000000 00000000     0        0 3153201 1 0 20 4 30 10 -1
   3: 0100007F:4E21 0100007F:9C41 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
";

    /// The listening row (0A) and TIME_WAIT (06) do not count; both ends of
    /// a loopback connection do (the session's port 20000 and the client's).
    #[test]
    fn established_rows_give_their_local_ports() {
        assert_eq!(parse_established(TABLE), vec![20000, 40000]);
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:4E22 00000000000000000000000001000000:A000 01 0:0 0:0 0 0 0 1";
        assert_eq!(parse_established(v6), vec![20002]);
    }

    proptest! {
        /// Whatever the kernel (or a bug) puts there, parsing never panics
        /// and only ESTABLISHED rows give ports.
        #[test]
        fn any_table_parses(lines in proptest::collection::vec("\\PC{0,80}", 0..20)) {
            let table = lines.join("\n");
            let ports = parse_established(&table);
            prop_assert!(ports.len() <= lines.len());
        }
    }

    /// A process that has not made itself a group leader yet (as a session
    /// process is for a moment after spawning) still gets the signal.
    #[test]
    fn a_process_without_its_own_group_is_signalled_itself() {
        // Not a group leader: it stays in the test's process group.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        signal_group(pid, Signal::SIGSTOP);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proc_stat(pid).map(|(st, _)| st) != Some('T') {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} was not stopped: {:?}",
                proc_stat(pid)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
