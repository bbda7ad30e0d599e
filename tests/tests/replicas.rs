//! Several control-plane replicas on one real PostgreSQL database: any
//! replica accepts a request, the replica holding the agent's stream sends
//! the command, and every command takes effect exactly once. SQLite runs
//! one replica and refuses a second.

use std::collections::HashMap;

use streamspace::v1 as pb;
use streamspace_control_plane::core::model::{Action, CommandState};
use streamspace_control_plane::core::store::CommandFilter;
use streamspace_control_plane::server::ControlPlane;
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;

use pb::SessionPhase as P;

const REPLICAS: usize = 3;
const AGENTS: usize = 30;
const COMMANDS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_second_replica() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("streamspace.db").display());
    let first = start_cp(&pki, &db, &CpOptions::default()).await;
    let second = ControlPlane::start(server_config(&pki, &db, &CpOptions::default())).await;
    let e = format!("{:#}", second.err().expect("a second replica is refused"));
    assert!(
        e.contains("SQLite runs exactly one replica") && e.contains("PostgreSQL"),
        "{e}"
    );
    first.shutdown().await;
    // Once the first has stopped, the database is free again.
    let again = start_cp(&pki, &db, &CpOptions::default()).await;
    again.shutdown().await;
}

/// Hibernates or wakes `name` through `api` and waits for the phase.
async fn toggle(api: &mut Api, name: &str, wake: bool) {
    if wake {
        api.sessions
            .wake_session(pb::WakeSessionRequest { name: name.into() })
            .await
            .unwrap();
        api.wait_phase(name, P::Running, 60).await;
    } else {
        api.sessions
            .hibernate_session(pb::HibernateSessionRequest { name: name.into() })
            .await
            .unwrap();
        api.wait_phase(name, P::Hibernated, 60).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_every_command_once() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = postgres_url().await;
    let mut cps = vec![];
    let mut apis = vec![];
    for r in 0..REPLICAS {
        let o = CpOptions {
            replica_id: format!("replica-{r}"),
            ..CpOptions::default()
        };
        let cp = start_cp(&pki, &db, &o).await;
        apis.push(Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await);
        cps.push(cp);
    }
    apis[0].put_dev_templates().await;
    // Agents spread over the replicas, ten on each.
    let agents: Vec<AgentProc> = (0..AGENTS)
        .map(|i| {
            let id = format!("ha-agent-{i}");
            AgentProc::spawn(
                &pki,
                &id,
                cps[i % REPLICAS].agent_addr,
                &tmp.path().join(&id),
            )
        })
        .collect();
    wait_for("every agent attached to its replica", 60, || {
        let held: Vec<usize> = cps
            .iter()
            .map(|cp| cp.lifecycle.roster().all().len())
            .collect();
        async move { (held == vec![AGENTS / REPLICAS; REPLICAS]).then_some(()) }
    })
    .await;
    // Every replica sees every other replica's agents as candidates.
    wait_for("agents held elsewhere to be known", 10, || {
        let known = cps
            .iter()
            .all(|cp| cp.lifecycle.agents_held_elsewhere() == AGENTS - AGENTS / REPLICAS);
        async move { known.then_some(()) }
    })
    .await;

    // A watcher on every replica: each sees every change, whichever
    // replica made it.
    let watched: Vec<Watched> = apis.iter().map(watch).collect();

    // One session per agent's worth, each created through a random replica.
    let names: Vec<String> = (0..AGENTS).map(|i| format!("ha-{i}")).collect();
    for n in &names {
        let r = random(REPLICAS);
        apis[r].create(n, "static-files").await.unwrap();
    }
    for n in &names {
        apis[0].wait_phase(n, P::Running, 60).await;
    }

    // COMMANDS hibernate/wake commands, each through a random replica; a
    // session's next command waits for the previous one to take effect.
    let mut tasks = vec![];
    for (i, name) in names.iter().enumerate() {
        let count = COMMANDS / AGENTS + usize::from(i < COMMANDS % AGENTS);
        let (name, apis) = (name.clone(), apis.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..count {
                let r = random(REPLICAS);
                toggle(&mut apis[r].clone(), &name, k % 2 == 1).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Exactly once: every command succeeded on its first delivery...
    let store = cps[0].lifecycle.store().clone();
    let cmds = store
        .list_commands(&CommandFilter {
            limit: 10_000,
            ..CommandFilter::default()
        })
        .await
        .unwrap();
    let toggles = cmds
        .iter()
        .filter(|c| matches!(c.action, Action::Hibernate | Action::Wake))
        .count();
    assert_eq!(toggles, COMMANDS, "every toggle wrote one command");
    for c in &cmds {
        assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
    }
    // ... each was applied once by the agent that holds its session ...
    let mut applied: HashMap<String, usize> = HashMap::new();
    for a in &agents {
        let log = strip_ansi(&a.log());
        for line in log.lines().filter(|l| l.contains("command applied")) {
            if let Some(id) = line
                .split("command_id=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
            {
                *applied.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    for c in &cmds {
        assert_eq!(
            applied.get(&c.id).copied(),
            Some(1),
            "command {} ({}) applied once",
            c.id,
            c.action.name()
        );
    }
    // ... and each session has exactly one process, in the state its last
    // command left: stopped (SIGSTOP) when hibernated, running otherwise.
    for (i, name) in names.iter().enumerate() {
        let count = COMMANDS / AGENTS + usize::from(i < COMMANDS % AGENTS);
        let s = apis[0].get(name).await.unwrap();
        let procs = session_processes(name);
        assert_eq!(procs, vec![session_pid(&s)], "{name}: one process");
        let hibernated = count % 2 == 1;
        let phase = if hibernated {
            P::Hibernated
        } else {
            P::Running
        };
        assert_eq!(s.phase, phase as i32, "{name}");
        assert_eq!(
            proc_state(procs[0]) == Some('T'),
            hibernated,
            "{name}: process state {:?}",
            proc_state(procs[0])
        );
    }
    // Every replica's watcher saw each session's last phase.
    for (r, w) in watched.iter().enumerate() {
        wait_for(
            &format!("replica-{r}'s watcher to see every session's last phase"),
            10,
            || {
                let ok = names.iter().enumerate().all(|(i, n)| {
                    let count = COMMANDS / AGENTS + usize::from(i < COMMANDS % AGENTS);
                    let phase = if count % 2 == 1 {
                        P::Hibernated
                    } else {
                        P::Running
                    };
                    w.lock().unwrap().get(n).copied()
                        == Some((pb::session_event::Type::Modified as i32, phase as i32))
                });
                async move { ok.then_some(()) }
            },
        )
        .await;
    }
    // A delete through one replica reaches the others' watchers.
    apis[0]
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: names[0].clone(),
            delete_home: true,
        })
        .await
        .unwrap();
    apis[0].wait_gone(&names[0], 30).await;
    for w in &watched {
        wait_for("the delete to reach every watcher", 10, || {
            let seen = w.lock().unwrap().get(&names[0]).map(|e| e.0);
            async move { (seen == Some(pb::session_event::Type::Deleted as i32)).then_some(()) }
        })
        .await;
    }

    drop(agents);
    for cp in cps {
        cp.shutdown().await;
    }
}

/// The last (event type, phase) a watcher saw per session.
type Watched = std::sync::Arc<std::sync::Mutex<HashMap<String, (i32, i32)>>>;

/// Watches every session through `api` in the background.
fn watch(api: &Api) -> Watched {
    let seen = Watched::default();
    let (mut sessions, out) = (api.sessions.clone(), seen.clone());
    tokio::spawn(async move {
        let mut events = sessions
            .watch_sessions(pb::WatchSessionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(e)) = events.message().await {
            let s = e.session.unwrap_or_default();
            out.lock().unwrap().insert(s.name, (e.r#type, s.phase));
        }
    });
    seen
}

/// A number below `n`, different each call.
fn random(n: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

/// `s` without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
