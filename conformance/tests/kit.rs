//! The kit against real agents: the Rust agent passes every case, and each
//! deliberately broken agent (`bad-agent --misbehave ...`) fails the case of
//! the rule it breaks, naming it, while passing cases it does not break.

use std::path::PathBuf;
use std::process::{Command, Output};

const KIT: &str = env!("CARGO_BIN_EXE_streamspace-conformance");
const BAD_AGENT: &str = env!("CARGO_BIN_EXE_bad-agent");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The Rust agent: $STREAMSPACE_AGENT_BIN, else `streamspace-agent` of this
/// build's target directory (next to the test executable's `deps/`). None
/// (skip) when it is missing, except under CI=true, where that fails.
fn rust_agent() -> Option<PathBuf> {
    let path = match std::env::var_os("STREAMSPACE_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("test executable");
            let profile_dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("target/<profile>");
            profile_dir.join("streamspace-agent")
        }
    };
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "{} is missing: `cargo build -p streamspace-agent --bin streamspace-agent` first, or set STREAMSPACE_AGENT_BIN",
        path.display()
    );
    assert!(!in_ci(), "{msg}");
    eprintln!("skipped: {msg}");
    None
}

/// This checkout's golden transcripts. The kit's default is compiled in, and
/// a cached build of another checkout may be what runs here.
fn golden_dir() -> String {
    let here = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    format!("{here}/golden")
}

fn kit(agent_cmd: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(KIT)
        .env("CONFORMANCE_GOLDEN_DIR", golden_dir())
        .arg("--agent-cmd")
        .arg(agent_cmd)
        .args(args)
        .output()
        .expect("run the kit");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

fn cases(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| ["--case".to_string(), n.to_string()])
        .collect()
}

#[test]
fn the_rust_agent_passes_every_case() {
    let Some(agent) = rust_agent() else { return };
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let (out, stdout) = kit(
        &agent.display().to_string(),
        &["--junit", junit.to_str().unwrap()],
    );
    let n = String::from_utf8_lossy(&Command::new(KIT).arg("--list").output().unwrap().stdout)
        .lines()
        .count();
    assert!(
        out.status.success(),
        "the Rust agent failed the kit:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("TAP version 13\n1..{n}\n")),
        "{stdout}"
    );
    assert_eq!(stdout.matches("\nok ").count(), n, "{stdout}");
    assert!(
        stdout.contains(&format!("# streamspace-conformance: {n} passed, 0 failed")),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(&format!("tests=\"{n}\" failures=\"0\"")),
        "{xml}"
    );
}

/// Runs `bad-agent --misbehave <how>` through `broken` and `intact`: only
/// `broken` fails, with its rule named, and the exit code says so.
fn bad_agent_fails_only(how: &str, broken: &str, intact: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let mut names = vec![broken];
    names.extend_from_slice(intact);
    let mut args = cases(&names);
    args.extend(["--junit".into(), junit.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, stdout) = kit(&format!("{BAD_AGENT} --misbehave {how}"), &args);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("\nnot ok 1 - {broken} ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("rule {broken}: ")), "{stdout}");
    for (i, name) in intact.iter().enumerate() {
        assert!(
            stdout.contains(&format!("\nok {} - {name} ", i + 2)),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("1 failed in") && stdout.contains(&format!("(failed: {broken})")),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(&format!("<failure message=\"rule {broken}: ")),
        "{xml}"
    );
}

#[test]
fn an_agent_that_acks_twice_fails_ack_then_result() {
    bad_agent_fails_only(
        "ack-twice",
        "ack-then-result",
        &["hello-welcome", "heartbeat-interval", "no-unknown-ids"],
    );
}

#[test]
fn an_agent_without_heartbeats_fails_heartbeat_interval() {
    bad_agent_fails_only(
        "no-heartbeat",
        "heartbeat-interval",
        &["hello-welcome", "ack-then-result", "unknown-stop"],
    );
}

#[test]
fn an_agent_that_answers_unsent_commands_fails_no_unknown_ids() {
    bad_agent_fails_only(
        "result-for-unknown-id",
        "no-unknown-ids",
        &["hello-welcome", "ack-then-result", "unknown-stop"],
    );
}

#[test]
fn an_agent_that_applies_commands_concurrently_fails_max_in_flight() {
    bad_agent_fails_only(
        "ignore-max-in-flight",
        "max-in-flight",
        &["lifecycle", "unknown-stop"],
    );
}

#[test]
fn an_agent_without_a_status_after_each_result_fails_status_after_result() {
    bad_agent_fails_only(
        "no-status-after-result",
        "status-after-result",
        &["lifecycle", "unknown-stop"],
    );
}

#[test]
fn a_transcript_that_differs_from_its_golden_file_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let golden = std::fs::read_to_string(format!("{}/unknown-stop.txt", golden_dir())).unwrap();
    std::fs::write(
        dir.path().join("unknown-stop.txt"),
        golden.replace("STOPPED", "RUNNING"),
    )
    .unwrap();
    let (out, stdout) = kit(
        &format!("{BAD_AGENT} --misbehave none"),
        &[
            "--case",
            "unknown-stop",
            "--golden-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("not ok 1 - unknown-stop"), "{stdout}");
    assert!(
        stdout.contains("- <- Status cf-never-started RUNNING"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ <- Status cf-never-started STOPPED"),
        "{stdout}"
    );
}

#[test]
fn list_and_unknown_case() {
    let out = Command::new(KIT).arg("--list").output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for name in [
        "hello-welcome",
        "inventory-after-restart",
        "oversized-frame",
        "drain",
    ] {
        assert!(list.lines().any(|l| l.starts_with(name)), "{list}");
    }
    let out = Command::new(KIT)
        .args(["--agent-cmd", "true", "--case", "no-such-case"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--case: unknown case \"no-such-case\""),
        "{err}"
    );
}
