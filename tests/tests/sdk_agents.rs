//! The agents of other languages (`sdk/python`, `sdk/go`), written from
//! `proto/` alone, run real sessions through the public API with the real
//! control plane over mTLS: create -> RUNNING (URL answers) -> hibernate
//! (process stopped) -> wake -> the agent is SIGKILLed and restarted (the
//! session is re-adopted, same process) -> delete (process gone).
//!
//! The test command builds them and names their executables in
//! `STREAMSPACE_PYTHON_AGENT` and `STREAMSPACE_GO_AGENT`
//! (`scripts/sdk-python.sh install`, `scripts/sdk-go.sh install`). Without
//! the variable a test says so and passes, except under CI, where it fails.

use std::path::PathBuf;

use streamspace::v1 as pb;
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;

/// The executable `var` names; None (skip) outside CI when unset.
fn executable(var: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.exists(), "{var}={}: no such file", p.display());
            Some(p)
        }
        _ if in_ci() => {
            panic!("{var} is not set: the test command builds the SDK agents (scripts/test.sh)")
        }
        _ => {
            eprintln!("{var} is not set: skipped (scripts/sdk-*.sh install builds the agent)");
            None
        }
    }
}

/// The one live process of session `name` (found by its SESSION_ID).
async fn the_process(name: &str) -> i32 {
    let name = name.to_string();
    wait_for(&format!("exactly one process of {name}"), 10, || {
        let name = name.clone();
        async move {
            let pids = session_processes(&name);
            (pids.len() == 1).then(|| pids[0])
        }
    })
    .await
}

async fn runs_a_session_end_to_end(var: &str, id: &str) {
    init();
    let Some(program) = executable(var) else {
        return;
    };
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let data = tmp.path().join("agent");
    let mut agent = AgentProc::external(&pki, &program, id, cp.agent_addr, &data);
    let admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    connected(&admin, id, true).await;
    let mut api = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let name = format!("{id}-files");
    let guard = Sweep(name.clone());

    api.create(&name, "static-files").await.unwrap();
    let running = api.wait_phase(&name, pb::SessionPhase::Running, 60).await;
    assert_eq!(running.agent_id, id);
    assert!(http_ok(&running.url).await, "{} must answer", running.url);
    let pid = the_process(&name).await;

    api.sessions
        .hibernate_session(pb::HibernateSessionRequest { name: name.clone() })
        .await
        .unwrap();
    api.wait_phase(&name, pb::SessionPhase::Hibernated, 30)
        .await;
    wait_for("the process to be stopped (state T)", 10, || async move {
        (proc_state(pid) == Some('T')).then_some(())
    })
    .await;

    api.sessions
        .wake_session(pb::WakeSessionRequest { name: name.clone() })
        .await
        .unwrap();
    let woken = api.wait_phase(&name, pb::SessionPhase::Running, 30).await;
    assert!(
        http_ok(&woken.url).await,
        "{} must answer after wake",
        woken.url
    );
    assert_eq!(
        the_process(&name).await,
        pid,
        "wake resumes the same process"
    );

    // SIGKILL the agent: the session keeps running; the restarted agent
    // re-adopts it (Hello's inventory) and nothing is started twice.
    agent.kill9();
    connected(&admin, id, false).await;
    agent.start();
    connected(&admin, id, true).await;
    let after = api.wait_phase(&name, pb::SessionPhase::Running, 30).await;
    assert_eq!(
        the_process(&name).await,
        pid,
        "re-adopted, not started again"
    );
    assert!(http_ok(&after.url).await);

    api.sessions
        .delete_session(pb::DeleteSessionRequest {
            name: name.clone(),
            delete_home: false,
        })
        .await
        .unwrap();
    api.wait_gone(&name, 30).await;
    wait_for("the process to be gone", 10, || async move {
        proc_state(pid).is_none().then_some(())
    })
    .await;
    drop(guard);
    cp.shutdown().await;
}

/// Waits until agent `id`'s stream is attached (`true`) or gone.
async fn connected(admin: &Api, id: &str, want: bool) {
    wait_for(&format!("agent {id} connected={want}"), 60, || {
        let mut admin = admin.admin.clone();
        let id = id.to_string();
        async move {
            let r = admin.list_agents(pb::ListAgentsRequest {}).await.ok()?;
            let now = r
                .into_inner()
                .agents
                .into_iter()
                .any(|a| a.id == id && a.connected);
            (now == want).then_some(())
        }
    })
    .await;
}

/// Kills what a failing run left of a session (an SDK agent's state files
/// are its own, so `AgentProc`'s clean-up cannot read them).
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in session_processes(&self.0) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_runs_a_session_end_to_end() {
    runs_a_session_end_to_end("STREAMSPACE_PYTHON_AGENT", "py-agent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agent_runs_a_session_end_to_end() {
    runs_a_session_end_to_end("STREAMSPACE_GO_AGENT", "go-agent").await;
}
