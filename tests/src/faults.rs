//! Helpers for fault tests of the agent: templates whose processes behave
//! badly on purpose, freezing a process (SIGSTOP/SIGCONT) to hold a frame
//! in flight, and reading a socket's receive queue from /proc to know that
//! a frame reached the peer's kernel before it is frozen.

use std::net::SocketAddr;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use streamspace::v1 as pb;

/// A process-runtime template running `sh -c <script>` (with `${PORT}` etc.
/// substituted by the agent).
pub fn shell_template(name: &str, script: &str) -> pb::Template {
    pb::Template {
        name: name.into(),
        display_name: name.into(),
        description: "test template".into(),
        image: "busybox:1".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ports: vec![pb::PortSpec {
            name: "http".into(),
            container_port: 8000,
        }],
        streaming_port: "http".into(),
        ..Default::default()
    }
}

/// SIGSTOP: the process keeps its sockets but reads and writes nothing.
pub fn freeze(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
}

/// SIGCONT after [`freeze`].
pub fn thaw(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
}

/// Bytes waiting to be read on the loopback TCP connections whose remote
/// end is `remote` (from /proc/net/tcp), summed.
pub fn rx_queued_from(remote: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = remote else {
        return 0;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&want.as_str()))
                .then(|| f.get(4).copied())
                .flatten()
        })
        .filter_map(|q| q.split_once(':'))
        .filter_map(|(_, rx)| u64::from_str_radix(rx, 16).ok())
        .sum()
}

/// The port of a session URL `http://host:port/`.
pub fn url_port(url: &str) -> Option<u16> {
    url.strip_prefix("http://")?
        .split('/')
        .next()?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

/// The pid of the live process whose command line has the argument `arg`
/// (e.g. a control plane's `--api-addr=...`, unique per test).
pub fn pid_with_arg(arg: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                && crate::proc_state(*pid).is_some_and(|s| s != 'Z')
        })
}
