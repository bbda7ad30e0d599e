//! Crash timing: round after round, a burst of concurrent creates (with some
//! hibernates and deletes) runs while the control plane or an agent is
//! killed with SIGKILL at a random moment and restarted. After every round,
//! within a bound, what the API says must match what runs: nothing answered
//! OK is lost, every phase matches the session's processes, no agent holds
//! more than its max_sessions, no two live sessions share a port, and no
//! process runs for a session that does not exist.
//!
//! Two kinds of workload: one that keeps running and one that exits on its
//! own shortly after start, so some processes die while their start is in
//! flight or while nobody is listening for their exit. Rounds, seed and
//! timing are printed; `STREAMSPACE_CHAOS_SEED` repeats a run and
//! `STREAMSPACE_CHAOS_ROUNDS` sets how many rounds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use streamspace_tests::chaos::invariants::{Expect, Snapshot, check, list_all};
use streamspace_tests::chaos::{self, LASTING, Rng, SHORT_LIVED, Sweeper, bounded, env_number};
use streamspace_tests::procs::{AgentProc, CpProc, print_tail};
use streamspace_tests::*;

const AGENTS: [&str; 2] = ["chaos-a", "chaos-b"];
/// Per agent: small enough that most bursts exceed the two agents' total.
const MAX_SESSIONS: u32 = 12;
/// How long a round may take to converge after the restart.
const BOUND_SECS: u64 = 30;

/// What one name goes through in a burst.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    template: &'static str,
    /// When, after the burst starts, the create is sent.
    delay_ms: u64,
    hibernate: bool,
    delete: bool,
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    ControlPlane,
    Agent(usize),
}

/// One round's crash: who dies, when (ms into the burst), and how long it
/// stays down (long enough, at times, for short-lived processes to exit
/// while nobody is listening).
#[derive(Debug, Clone, Copy)]
struct Crash {
    victim: Victim,
    at_ms: u64,
    down_ms: u64,
}

fn plan_round(rng: &mut Rng, prefix: &str, round: u64) -> (Vec<Plan>, Crash) {
    let n = rng.range(16, 49);
    let plans = (0..n)
        .map(|i| Plan {
            name: format!("{prefix}-{round}-{i}"),
            template: if rng.chance(50) { LASTING } else { SHORT_LIVED },
            delay_ms: rng.range(0, 1000),
            hibernate: rng.chance(20),
            delete: rng.chance(15),
        })
        .collect();
    let victim = if rng.chance(50) {
        Victim::ControlPlane
    } else {
        Victim::Agent(rng.range(0, AGENTS.len() as u64) as usize)
    };
    let at_ms = rng.range(0, 801);
    let down_ms = rng.range(0, 2501);
    (
        plans,
        Crash {
            victim,
            at_ms,
            down_ms,
        },
    )
}

#[derive(Debug, Default)]
struct Tally {
    created: u32,
    refused: u32,
    hibernated: u32,
    deleted: u32,
}

/// Runs one name's plan; records what was answered OK in `expect`.
async fn run_plan(
    mut api: Sessions,
    p: Plan,
    expect: Arc<Mutex<Expect>>,
    tally: Arc<Mutex<Tally>>,
) {
    tokio::time::sleep(Duration::from_millis(p.delay_ms)).await;
    let r = bounded(
        10,
        api.create_session(pb::CreateSessionRequest {
            name: p.name.clone(),
            template: p.template.into(),
            ..Default::default()
        }),
    )
    .await;
    if r.is_err() {
        tally.lock().unwrap().refused += 1;
        return;
    }
    expect.lock().unwrap().created.insert(p.name.clone());
    tally.lock().unwrap().created += 1;
    if p.hibernate {
        let r = bounded(
            10,
            api.hibernate_session(pb::HibernateSessionRequest {
                name: p.name.clone(),
            }),
        )
        .await;
        if r.is_ok() {
            tally.lock().unwrap().hibernated += 1;
        }
    }
    if p.delete {
        expect.lock().unwrap().delete_sent.insert(p.name.clone());
        let r = bounded(
            10,
            api.delete_session(pb::DeleteSessionRequest {
                name: p.name.clone(),
                delete_home: false,
            }),
        )
        .await;
        if r.is_ok() {
            expect.lock().unwrap().deleted.insert(p.name.clone());
            tally.lock().unwrap().deleted += 1;
        }
    }
}

/// Retries [`check`] until every rule holds at once; the last look otherwise.
async fn converge(api: &mut Api, prefix: &str, expect: &Expect) -> Result<Duration, Snapshot> {
    let began = Instant::now();
    let deadline = began + Duration::from_secs(BOUND_SECS);
    let mut last = None;
    loop {
        if let Ok(snap) = bounded(15, check(&mut api.sessions, prefix, expect)).await {
            if snap.violations.is_empty() {
                return Ok(began.elapsed());
            }
            last = Some(snap);
        }
        if Instant::now() > deadline {
            return Err(last.unwrap_or(Snapshot {
                sessions: vec![],
                processes: vec![],
                violations: vec![],
            }));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints what broke and the log lines about the sessions involved, then panics.
fn report(what: &str, seed: u64, snap: &Snapshot, logs: &[(String, String)]) -> ! {
    eprintln!("===== {what}: still broken after {BOUND_SECS}s (seed {seed}) =====");
    for v in snap.violations.iter().take(40) {
        eprintln!("  {v}");
    }
    eprintln!("----- offending sessions -----");
    let offenders = snap.offenders();
    for line in offenders.iter().take(40) {
        eprintln!("  {line}");
    }
    for (who, log) in logs {
        let named: Vec<&str> = log
            .lines()
            .filter(|l| {
                offenders
                    .iter()
                    .take(10)
                    .any(|o| o.split_whitespace().next().is_some_and(|n| l.contains(n)))
            })
            .collect();
        print_tail(
            &format!("{who} (lines about offending sessions)"),
            &named.join("\n"),
            40,
        );
        print_tail(who, log, 30);
    }
    panic!(
        "{what}: {} rule(s) broken after {BOUND_SECS}s (seed {seed}), first: {}",
        snap.violations.len(),
        snap.violations
            .first()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "the API never answered".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_with_crashes_converge() {
    init();
    let seed = chaos::seed("crash timing");
    let rounds = env_number("STREAMSPACE_CHAOS_ROUNDS", 35);
    let mut rng = Rng::new(seed);
    // Unique to this run: the sweep at the end touches only its processes.
    let prefix = format!("cx{:08x}", rng.next_u64() as u32);
    let sweeper = Sweeper {
        prefix: prefix.clone(),
    };

    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let mut cp = CpProc::spawn(&pki, &db, &tmp.path().join("cp"), 500);
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    chaos::put_templates(&mut api).await;
    let max_flag = format!("--max-sessions={MAX_SESSIONS}");
    let mut agents: Vec<AgentProc> = AGENTS
        .iter()
        .map(|id| {
            AgentProc::spawn_with(
                &pki,
                id,
                cp.agent_addr,
                &tmp.path().join(id),
                &["--platform=process", &max_flag],
                &[],
            )
        })
        .collect();
    api.wait_agents(AGENTS.len(), 30).await;

    let expect = Arc::new(Mutex::new(Expect {
        capacity: AGENTS.iter().map(|id| (id.to_string(), 1000)).collect(),
        lasting_template: LASTING.into(),
        ..Expect::default()
    }));
    let data_root = tmp.path().to_path_buf();
    let logs = |cp: &CpProc, agents: &[AgentProc]| -> Vec<(String, String)> {
        let mut l = vec![("control-plane".to_string(), cp.log())];
        l.extend(agents.iter().map(|a| (format!("agent {}", a.id), a.log())));
        // What session processes printed (a healthy one prints nothing here):
        // why a process exited on its own, e.g. a port taken.
        for id in AGENTS {
            let Ok(dir) = std::fs::read_dir(data_root.join(id).join("logs")) else {
                continue;
            };
            for f in dir.flatten().take(200) {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                if !text.trim().is_empty() {
                    l.push((
                        format!("session log {id}/{}", f.file_name().to_string_lossy()),
                        text,
                    ));
                }
            }
        }
        l
    };

    for round in 0..rounds {
        let (plans, crash) = plan_round(&mut rng, &prefix, round);
        let Crash {
            victim,
            at_ms: kill_at,
            down_ms,
        } = crash;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let burst = futures::future::join_all(
            plans
                .iter()
                .cloned()
                .map(|p| run_plan(api.sessions.clone(), p, expect.clone(), tally.clone())),
        );
        let crash = async {
            tokio::time::sleep(Duration::from_millis(kill_at)).await;
            match victim {
                Victim::ControlPlane => cp.kill9(),
                Victim::Agent(i) => agents[i].kill9(),
            }
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            match victim {
                Victim::ControlPlane => cp.start(),
                Victim::Agent(i) => agents[i].start(),
            }
        };
        tokio::join!(burst, crash);
        if matches!(victim, Victim::ControlPlane) {
            cp.ready().await;
            api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
        }
        let t = std::mem::take(&mut *tally.lock().unwrap());
        let snapshot = expect.lock().unwrap().clone();
        let took = match converge(&mut api, &prefix, &snapshot).await {
            Ok(d) => d,
            Err(snap) => report(
                &format!(
                    "round {round} ({victim:?} killed {kill_at} ms into the burst, down {down_ms} ms)"
                ),
                seed,
                &snap,
                &logs(&cp, &agents),
            ),
        };
        eprintln!(
            "round {round}: {} names, {victim:?} killed at {kill_at} ms for {down_ms} ms; {} created, {} refused, {} hibernated, {} deleted; converged in {:.1}s",
            plans.len(),
            t.created,
            t.refused,
            t.hibernated,
            t.deleted,
            took.as_secs_f64()
        );

        // Clear the round: every session goes, and with it every process.
        let round_prefix = format!("{prefix}-{round}-");
        let names: BTreeSet<String> = list_all(&mut api.sessions)
            .await
            .expect("list sessions")
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with(&round_prefix))
            .collect();
        let deletes = names.iter().map(|name| {
            let mut s = api.sessions.clone();
            let name = name.clone();
            async move {
                let r = bounded(
                    10,
                    s.delete_session(pb::DeleteSessionRequest {
                        name: name.clone(),
                        delete_home: false,
                    }),
                )
                .await;
                (name, r)
            }
        });
        for (name, r) in futures::future::join_all(deletes).await {
            let mut e = expect.lock().unwrap();
            e.delete_sent.insert(name.clone());
            match r {
                Ok(_) => {
                    e.deleted.insert(name);
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => panic!(
                    "round {round}: deleting {name}: {:?} {}",
                    s.code(),
                    s.message()
                ),
            }
        }
        let snapshot = expect.lock().unwrap().clone();
        if let Err(snap) = converge(&mut api, &prefix, &snapshot).await {
            report(
                &format!("round {round}: deleting every session"),
                seed,
                &snap,
                &logs(&cp, &agents),
            );
        }
    }
    let left = sweeper.sweep();
    assert_eq!(left, 0, "no session process outlives its deleted session");
    drop(agents);
    drop(cp);
}
