//! Scenario 5, failover: the real `streamspace-agent` with the process runtime
//! runs S sessions (`python3 -m http.server`). The agent is killed with
//! SIGKILL, S hibernate commands are accepted while it is down, and it is
//! restarted; measured: the time from the restart until every session is
//! HIBERNATED. Then the same with S wake commands (the sessions are
//! hibernated when the agent dies). Checked from /proc after each: every
//! session has exactly one process (SESSION_ID=<name> in its environment),
//! it is the session's pid, and it is stopped (state T) exactly when the
//! session is HIBERNATED; after deleting them all, none is left.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use streamspace::v1 as pb;
use streamspace_tests::{proc_state, session_processes};

use super::Sizes;
use super::api::{Api, Op, Want, Watcher, arrived, command};
use super::children::{AgentBinary, CpChild, Lab};
use super::measure::fmt_int;
use super::report::Report;

const S: &str = "5 failover";

#[derive(Debug, Clone, Default)]
pub struct FailoverResult {
    pub recovery: Duration,
}

/// Kills whatever session processes a failed run leaves behind.
struct Reaper(Vec<String>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for name in &self.0 {
            for pid in session_processes(name) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

pub async fn run(lab: &Lab, z: &Sizes, report: &mut Report) -> anyhow::Result<FailoverResult> {
    let python = which_python()?;
    let db = format!("sqlite://{}", lab.path("failover.db").display());
    let cp = CpChild::start(lab, "cp-failover", &db).await?;
    let api = Api::connect(lab, cp.api_addr, 4).await?;
    api.put_template_running(&python).await?;
    let mut agent = AgentBinary::start(lab, "bench-failover", cp.agent_addr)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.agents_connected().await?.0 < 1 {
        if Instant::now() > deadline {
            bail!("streamspace-agent did not attach within 30 s (see bench-failover.log)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watch = Watcher::start(&api).await?;
    let names: Vec<String> = (0..z.failover_sessions)
        .map(|i| format!("fo-{i:03}"))
        .collect();
    let _reaper = Reaper(names.clone());
    let within = Duration::from_secs(120);

    // S running sessions.
    let started = futures::future::try_join_all(names.iter().map(|name| {
        let (mut s, w) = (api.sessions(), watch.clone());
        async move {
            command(&mut s, &w, Op::Create, name, 1, within)
                .await?
                .context("create refused as overloaded")
        }
    }))
    .await?;
    drop(started);

    // Twice: kill -9 the agent, have the API accept S commands while it is
    // down, restart it, wait until every session shows the result. First
    // with running sessions (S hibernates), then with hibernated ones (S wakes).
    let mut worst = Duration::ZERO;
    for (op, phase, generation) in [
        (Op::Hibernate, pb::SessionPhase::Hibernated, 2),
        (Op::Wake, pb::SessionPhase::Running, 3),
    ] {
        agent.kill9().await;
        let waits: Vec<_> = names
            .iter()
            .map(|n| watch.expect(n, Want::Phase(phase, generation)))
            .collect();
        futures::future::try_join_all(names.iter().map(|name| {
            let mut s = api.sessions();
            let name = name.clone();
            async move {
                match op {
                    Op::Hibernate => {
                        s.hibernate_session(pb::HibernateSessionRequest { name })
                            .await
                    }
                    _ => s.wake_session(pb::WakeSessionRequest { name }).await,
                }
            }
        }))
        .await?;
        let restarted = Instant::now();
        agent.restart()?;
        for (w, name) in waits.into_iter().zip(&names) {
            arrived(
                w,
                &format!("{op:?} of {name} after the agent restart"),
                within,
            )
            .await?;
        }
        let recovery = restarted.elapsed();
        report.add(
            S,
            &format!(
                "agent kill -9, {} {op:?} commands accepted meanwhile, restart: all done after",
                fmt_int(names.len() as u64)
            ),
            format!("{:.2} s", recovery.as_secs_f64()),
        );
        worst = worst.max(recovery);
        exactly_once(&api, &names, phase).await?;
    }

    // Delete all; nothing may be left running.
    futures::future::try_join_all(names.iter().map(|name| {
        let (mut s, w) = (api.sessions(), watch.clone());
        async move { command(&mut s, &w, Op::Delete, name, 3, within).await }
    }))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<_> = names
            .iter()
            .filter(|n| !session_processes(n).is_empty())
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("sessions deleted but their processes still run: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.add(
        S,
        "sessions with exactly one process / leftovers after delete",
        format!("{} of {} / 0", names.len(), names.len()),
    );
    agent.kill9().await;
    drop(cp);
    Ok(FailoverResult { recovery: worst })
}

/// Every session runs exactly the one process it reports, stopped when hibernated.
async fn exactly_once(api: &Api, names: &[String], phase: pb::SessionPhase) -> anyhow::Result<()> {
    for name in names {
        let s = api
            .sessions()
            .get_session(pb::GetSessionRequest { name: name.clone() })
            .await?
            .into_inner();
        let procs = session_processes(name);
        let pid = s
            .workload
            .strip_prefix("pid ")
            .and_then(|p| p.parse::<i32>().ok());
        if procs.len() != 1 || Some(procs[0]) != pid {
            bail!(
                "DUPLICATED or LOST: session {name} should run exactly its process {:?}, found {procs:?}",
                s.workload
            );
        }
        let stopped = proc_state(procs[0]) == Some('T');
        if stopped != (phase == pb::SessionPhase::Hibernated) {
            bail!(
                "LOST: session {name} is {phase:?} but its process {} is {}",
                procs[0],
                if stopped { "stopped" } else { "not stopped" }
            );
        }
    }
    Ok(())
}

/// The real interpreter behind `python3`: a launcher shim (pyenv) would add
/// short-lived helper processes with the session's environment.
fn which_python() -> anyhow::Result<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        _ => bail!(
            "the failover scenario runs `python3 -m http.server` sessions: python3 is missing"
        ),
    }
}
