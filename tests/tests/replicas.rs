//! Several control-plane replicas on one real PostgreSQL database: any
//! replica accepts a request, the replica holding the agent's stream sends
//! the command, and every command takes effect exactly once. SQLite runs
//! one replica and refuses a second.

use std::collections::HashMap;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_control_plane::core::model::{Action, CommandState};
use streamspace_control_plane::core::store::CommandFilter;
use streamspace_control_plane::server::ControlPlane;
use streamspace_tests::postgres::PrivatePostgres;
use streamspace_tests::procs::{AgentProc, CpProc};
use streamspace_tests::service::Service;
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
    let cmds = finished_commands(cps[0].lifecycle.store()).await;
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
                    w.lock().unwrap().get(n).copied() == Some(phase as i32)
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
            let gone = !w.lock().unwrap().contains_key(&names[0]);
            async move { gone.then_some(()) }
        })
        .await;
    }

    drop(agents);
    for cp in cps {
        cp.shutdown().await;
    }
}

/// The last (event type, phase) a watcher saw per session.
type Watched = std::sync::Arc<std::sync::Mutex<HashMap<String, i32>>>;

/// Watches every session through `api` in the background, as a client
/// should: list and watch, and when the watch ends (a watcher that falls
/// behind is told ABORTED, "list and watch again"), start over from a new
/// list. The map holds the last phase seen of every live session.
fn watch(api: &Api) -> Watched {
    let seen = Watched::default();
    let (mut sessions, out) = (api.sessions.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let req = pb::WatchSessionsRequest {
                send_initial: true,
                ..Default::default()
            };
            let Ok(events) = sessions.watch_sessions(req).await else {
                return;
            };
            let mut events = events.into_inner();
            out.lock().unwrap().clear();
            while let Ok(Some(e)) = events.message().await {
                let s = e.session.unwrap_or_default();
                let mut out = out.lock().unwrap();
                if e.r#type == pb::session_event::Type::Deleted as i32 {
                    out.remove(&s.name);
                } else {
                    out.insert(s.name, s.phase);
                }
            }
        }
    });
    seen
}

/// A number below `n`, different each call.
fn random(n: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

/// Three replica processes on one PostgreSQL database with their agents
/// behind a [`Service`], as in a cluster: agents dial the Service and land
/// on whichever replica it picks.
///
/// Fields drop in order: the processes (which print their logs' tails when
/// a test fails) before the directory that holds those logs.
struct ReplicaSet {
    cps: Vec<CpProc>,
    apis: Vec<Api>,
    _svc: Service,
    agents: Vec<AgentProc>,
    names: Vec<String>,
    store: std::sync::Arc<dyn streamspace_control_plane::core::store::Store>,
    _pki: TestPki,
    _tmp: tempfile::TempDir,
}

impl ReplicaSet {
    /// `REPLICAS` replicas, `agents` agents, one running session each;
    /// `prefix` names the agents and sessions (tests run side by side).
    async fn start(prefix: &str, agents: usize, heartbeat_ms: u64) -> Self {
        Self::start_on(prefix, agents, heartbeat_ms, postgres_url().await).await
    }

    /// The same on database `db`.
    async fn start_on(prefix: &str, agents: usize, heartbeat_ms: u64, db: String) -> Self {
        init();
        let pki = TestPki::new();
        let tmp = tempfile::tempdir().unwrap();
        let cps: Vec<CpProc> = (0..REPLICAS)
            .map(|r| {
                CpProc::spawn_with(
                    &pki,
                    &db,
                    &tmp.path().join(format!("replica-{r}")),
                    heartbeat_ms,
                    &[&format!("--replica-id=replica-{r}")],
                )
            })
            .collect();
        let mut apis = vec![];
        for cp in &cps {
            cp.ready().await;
            apis.push(Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await);
        }
        apis[0].put_dev_templates().await;
        let svc = Service::start(cps.iter().map(|c| c.agent_addr).collect()).await;
        let agents = (0..agents)
            .map(|i| {
                let id = format!("{prefix}-agent-{i}");
                AgentProc::spawn(&pki, &id, svc.addr, &tmp.path().join(&id))
            })
            .collect();
        let store = streamspace_control_plane::store::open(&db).await.unwrap();
        let mut set = Self {
            _pki: pki,
            _tmp: tmp,
            cps,
            apis,
            _svc: svc,
            agents,
            names: vec![],
            store,
        };
        let n = set.agents.len();
        set.wait_held("every agent to attach", |held| held.len() == n)
            .await;
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            retry(&set.apis, |mut api| {
                let name = name.clone();
                async move { api.create(&name, "static-files").await.map(|_| ()) }
            })
            .await;
            set.names.push(name);
        }
        for name in set.names.clone() {
            set.wait_phase(&name, P::Running).await;
        }
        set
    }

    /// The replica holding each attached agent, as the store records it.
    async fn held(&self) -> Vec<(String, String)> {
        let agents = self.store.list_agents().await.unwrap();
        agents
            .into_iter()
            .filter(|a| !a.replica_id.is_empty())
            .map(|a| (a.id, a.replica_id))
            .collect()
    }

    async fn wait_held(&self, what: &str, f: impl Fn(&[(String, String)]) -> bool) {
        wait_for(what, 60, || async { f(&self.held().await).then_some(()) }).await;
    }

    async fn wait_phase(&self, name: &str, phase: P) {
        wait_for(&format!("{name} to be {phase:?}"), 60, || {
            let mut api = self.apis[random(REPLICAS)].clone();
            async move {
                let s = api.get(name).await.ok()?;
                (s.phase == phase as i32).then_some(())
            }
        })
        .await;
    }

    /// Starts toggling every session `per_session` times through random
    /// replicas (retrying a call that a replica could not take on another
    /// one); [`ReplicaSet::finish`] waits for them and checks the outcome.
    fn load(&self, per_session: usize) -> Vec<tokio::task::JoinHandle<Vec<Duration>>> {
        let mut tasks = vec![];
        for name in self.names.clone() {
            let apis = self.apis.clone();
            tasks.push(tokio::spawn(async move {
                let mut took = vec![];
                for k in 0..per_session {
                    let wake = k % 2 == 1;
                    let t = std::time::Instant::now();
                    retry(&apis, |mut api| {
                        let name = name.clone();
                        async move {
                            if wake {
                                api.sessions
                                    .wake_session(pb::WakeSessionRequest { name })
                                    .await
                                    .map(|_| ())
                            } else {
                                api.sessions
                                    .hibernate_session(pb::HibernateSessionRequest { name })
                                    .await
                                    .map(|_| ())
                            }
                        }
                    })
                    .await;
                    let phase = if wake { P::Running } else { P::Hibernated };
                    wait_for(&format!("{name} to be {phase:?}"), 60, || {
                        let mut api = apis[random(REPLICAS)].clone();
                        let name = name.clone();
                        async move {
                            let s = api.get(&name).await.ok()?;
                            (s.phase == phase as i32).then_some(())
                        }
                    })
                    .await;
                    took.push(t.elapsed());
                }
                took
            }));
        }
        tasks
    }

    /// Waits for the toggles of [`ReplicaSet::load`], prints their p99
    /// through `what`, and checks that each took effect exactly once.
    async fn finish(
        &mut self,
        tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
        per_session: usize,
        what: &str,
    ) {
        let mut took = vec![];
        for t in tasks {
            took.extend(t.await.unwrap());
        }
        println!("{} toggles through {what}: p99 {:?}", took.len(), p99(took));
        self.assert_exactly_once(per_session).await;
    }

    /// Every command succeeded, each was applied once by an agent, and
    /// every session has its one process in the state its last toggle left.
    /// The outbox is read once nothing in it is active (see
    /// [`finished_commands`]).
    async fn assert_exactly_once(&mut self, per_session: usize) {
        let cmds = finished_commands(&self.store).await;
        for c in &cmds {
            assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
        }
        let applied = applied_per_command(&self.agents);
        for c in &cmds {
            assert_eq!(
                applied.get(&c.id).copied(),
                Some(1),
                "command {} ({} of {}) applied once",
                c.id,
                c.action.name(),
                c.session
            );
        }
        let hibernated = per_session % 2 == 1;
        for name in self.names.clone() {
            let mut api = self.apis[0].clone();
            let s = api.get(&name).await.unwrap();
            let procs = session_processes(&name);
            assert_eq!(procs, vec![session_pid(&s)], "{name}: one process");
            assert_eq!(proc_state(procs[0]) == Some('T'), hibernated, "{name}");
        }
    }
}

/// Every command in the outbox, once none is active. A session's phase
/// (reported before a command's result) is no sign that its results are
/// stored; a result that never arrives fails the wait.
async fn finished_commands(
    store: &std::sync::Arc<dyn streamspace_control_plane::core::store::Store>,
) -> Vec<streamspace_control_plane::core::model::Command> {
    wait_for("every command to finish", 30, || async {
        let cmds = store
            .list_commands(&CommandFilter {
                limit: 100_000,
                ..CommandFilter::default()
            })
            .await
            .unwrap();
        (!cmds.iter().any(|c| c.state.is_active())).then_some(cmds)
    })
    .await
}

impl Drop for ReplicaSet {
    /// Session processes outlive a killed agent: stop them with the test.
    fn drop(&mut self) {
        self.agents.clear();
        for name in &self.names {
            kill_session_processes(name);
        }
    }
}

/// How many times the agents applied each command (from their logs).
fn applied_per_command(agents: &[AgentProc]) -> HashMap<String, usize> {
    let mut applied: HashMap<String, usize> = HashMap::new();
    for a in agents {
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
    applied
}

/// Calls [`retry`] made again after a refusal (all tests of this binary).
static RETRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `call` on a random replica until one takes it: a replica that is
/// down or shutting down answers UNAVAILABLE (or not at all), and the
/// caller tries another, as a client behind a Service would.
async fn retry<F, Fut>(apis: &[Api], call: F)
where
    F: Fn(Api) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call(apis[random(apis.len())].clone()).await {
            Ok(()) => return,
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && std::time::Instant::now() < deadline =>
            {
                RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("call refused: {s:?}"),
        }
    }
}

/// The 99th percentile of `d`.
fn p99(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[(d.len() * 99 / 100).min(d.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_burst_loses_nothing() {
    let mut set = ReplicaSet::start("kill", AGENTS, 2000).await;
    let per_session = 11;
    let victim = 1;
    let orphaned: Vec<String> = set
        .held()
        .await
        .into_iter()
        .filter(|(_, r)| *r == format!("replica-{victim}"))
        .map(|(a, _)| a)
        .collect();
    assert!(!orphaned.is_empty(), "the Service spread the agents");
    let load = set.load(per_session);
    {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        set.cps[victim].kill9();
        let killed = std::time::Instant::now();
        let gone = format!("replica-{victim}");
        set.wait_held("every orphaned agent to attach elsewhere", |held| {
            held.len() == AGENTS && held.iter().all(|(_, r)| *r != gone)
        })
        .await;
        println!(
            "{} agents orphaned by SIGKILL attached again within {:?}",
            orphaned.len(),
            killed.elapsed()
        );
        set.cps[victim].start();
        set.cps[victim].ready().await;
    }
    // The victim's API was gone for a while: calls landed on the others.
    set.finish(load, per_session, "a replica kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_drops_no_stream() {
    // Heartbeats of 2 s: on two busy cores a 500 ms heartbeat can miss its
    // 1.5 s bound and close a stream for a reason this test is not about.
    let mut set = ReplicaSet::start("roll", AGENTS, 2000).await;
    let per_session = 25;
    let load = set.load(per_session);
    {
        for r in 0..REPLICAS {
            tokio::time::sleep(Duration::from_millis(500)).await;
            set.cps[r].sigterm();
            let status = tokio::task::block_in_place(|| set.cps[r].wait());
            assert!(
                status.is_some_and(|s| s.success()),
                "replica-{r} exits cleanly: {status:?}"
            );
            set.cps[r].start();
            set.cps[r].ready().await;
        }
    }
    set.finish(load, per_session, "a rolling restart of 3 replicas")
        .await;
    // Make-before-break: every drained stream was closed by its agent only
    // after the next one was attached; no stream ended any other way.
    let (mut drains, mut replaced) = (0, 0);
    for a in &set.agents {
        let log = strip_ansi(&a.log());
        assert!(
            !log.contains("control plane stream ended"),
            "agent {} saw a stream end before its next one was open:\n{log}",
            a.id
        );
        drains += log.matches("drain requested").count();
        replaced += log
            .matches("attached again; closing the drained stream")
            .count();
    }
    // No replica closed a drained stream at its deadline: each agent closed
    // its own once attached elsewhere.
    for (r, cp) in set.cps.iter().enumerate() {
        let log = strip_ansi(&cp.log());
        let cut: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("closing agent stream") && l.contains("shutting down"))
            .collect();
        assert!(
            cut.is_empty(),
            "replica-{r} closed drained streams: {cut:#?}"
        );
    }
    println!("{drains} drains, {replaced} streams replaced before they closed");
    assert!(
        drains >= AGENTS,
        "every agent was drained at least once ({drains})"
    );
    assert_eq!(drains, replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_burst_loses_nothing() {
    let pg = PrivatePostgres::start();
    let mut set = ReplicaSet::start_on("pgr", 12, 2000, pg.url.clone()).await;
    let per_session = 21;
    let load = set.load(per_session);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let down = std::time::Instant::now();
    tokio::task::block_in_place(|| pg.halt());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.resume());
    println!(
        "PostgreSQL was down for {:?}; calls refused and retried so far: {}",
        down.elapsed(),
        RETRIED.load(std::sync::atomic::Ordering::Relaxed)
    );
    // Calls made meanwhile failed with UNAVAILABLE (retried on a replica
    // by `retry`) or waited; every one that was accepted took effect once.
    set.finish(load, per_session, "a PostgreSQL restart").await;
}

/// Two replicas each believing they hold one agent (forced: the test
/// attaches the same agent id on both through their real attach path):
/// only the later attach (the higher stream epoch) is sent the agent's
/// commands; the other claims nothing though they are pending, and its
/// presence sweep closes its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_holding_one_agent_never_both_deliver() {
    use streamspace_control_plane::core::roster::AgentHello;
    init();
    let pki = TestPki::new();
    let db = postgres_url().await;
    let mut cps = vec![];
    for r in 0..2 {
        let o = CpOptions {
            replica_id: format!("twin-replica-{r}"),
            ..CpOptions::default()
        };
        cps.push(start_cp(&pki, &db, &o).await);
    }
    let mut api = Api::connect(&pki, cps[0].api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let hello = AgentHello {
        id: "twin".into(),
        platform: "process".into(),
        region: "test".into(),
        version: "test".into(),
        ..AgentHello::default()
    };
    let old = cps[0].lifecycle.attach(&hello).await.unwrap();
    let new = cps[1].lifecycle.attach(&hello).await.unwrap();
    assert!(
        cps[0].lifecycle.roster().get("twin").is_some(),
        "replica 0 still believes"
    );
    api.create("twin-s", "static-files").await.unwrap();

    let stale = cps[0]
        .lifecycle
        .next_commands("twin", old.conn_id, 64)
        .await
        .unwrap();
    assert!(stale.is_empty(), "the lower epoch is fenced: {stale:?}");
    let sent = cps[1]
        .lifecycle
        .next_commands("twin", new.conn_id, 64)
        .await
        .unwrap();
    assert_eq!(sent.len(), 1, "the holder sends the start");
    assert_eq!(sent[0].session, "twin-s");
    // Replica 0 learns it lost the agent and closes its stream.
    cps[0].lifecycle.keep_presence().await.unwrap();
    assert!(old.cancel.is_cancelled(), "the stale stream is closed");
    assert!(!new.cancel.is_cancelled());
    for cp in cps {
        cp.shutdown().await;
    }
}

/// The connection between an agent and its replica dies without a FIN or
/// RST (the Service stops forwarding and keeps both sockets open): the
/// agent notices within the heartbeat bound (three heartbeats with nothing
/// from the control plane, which acknowledges every heartbeat), attaches
/// again, and a command accepted while the stream was silent takes effect
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_without_fin_is_replaced_within_the_heartbeat_bound() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = postgres_url().await;
    let o = CpOptions::default();
    let heartbeat = o.heartbeat;
    let cp = start_cp(&pki, &db, &o).await;
    let svc = Service::start(vec![cp.agent_addr]).await;
    let agent = AgentProc::spawn(&pki, "cut-agent", svc.addr, &tmp.path().join("agent"));
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    api.wait_agents(1, 30).await;
    api.create("cut-s", "static-files").await.unwrap();
    api.wait_phase("cut-s", P::Running, 60).await;

    svc.blackhole();
    let cut = std::time::Instant::now();
    api.sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "cut-s".into(),
        })
        .await
        .unwrap();
    wait_for("the agent to notice the silent stream", 30, || {
        let gone = strip_ansi(&agent.log()).contains("the connection is gone");
        async move { gone.then_some(()) }
    })
    .await;
    let noticed = cut.elapsed();
    wait_for("the agent to attach again", 30, || {
        let n = strip_ansi(&agent.log())
            .matches("connected to the control plane")
            .count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let back = cut.elapsed();
    println!(
        "stream cut without FIN: noticed after {noticed:?}, attached again after {back:?} (heartbeat {heartbeat:?})"
    );
    // Three silent heartbeats, checked at the next one's tick.
    assert!(
        noticed <= heartbeat * 4 + Duration::from_millis(500),
        "{noticed:?}"
    );
    assert_eq!(svc.held(), 2, "the cut connection's sockets stayed open");
    api.wait_phase("cut-s", P::Hibernated, 30).await;
    let s = api.get("cut-s").await.unwrap();
    let procs = session_processes("cut-s");
    assert_eq!(procs, vec![session_pid(&s)]);
    assert_eq!(proc_state(procs[0]), Some('T'), "hibernated once");
    let applied = applied_per_command(std::slice::from_ref(&agent));
    let cmds = finished_commands(cp.lifecycle.store()).await;
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    for c in &cmds {
        assert_eq!(c.state, CommandState::Succeeded, "{c:?}");
        assert_eq!(applied.get(&c.id).copied(), Some(1), "{c:?}");
    }
    kill_session_processes("cut-s");
    cp.shutdown().await;
}

/// Waits until a session of `watcher`'s database waits on a lock (`what`
/// names the wait in the timeout's message).
async fn lock_wait(watcher: &sqlx::PgPool, what: &str) {
    wait_for(what, 30, || {
        let watcher = watcher.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&watcher)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        }
    })
    .await;
}

/// One replica claims an agent's pending command while another replica's
/// transition finishes it, holding the command's row lock (the agent sent
/// the result on its old stream while it attached to the new one). Once the
/// transition commits, the claim sends nothing it finished: not the command
/// again, and no failure on the session's next command that the transition
/// wrote. Real PostgreSQL, the claim seen waiting on the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_finished_while_it_is_claimed_is_not_sent_again() {
    use streamspace_control_plane::core::model::{
        AgentRecord, Desired, Outcome, Phase, Session, now_ms,
    };
    use streamspace_control_plane::core::steps::{self, StepConfig};
    init();
    let db = postgres_url().await;
    let store = streamspace_control_plane::store::open(&db).await.unwrap();
    let watcher = sqlx::PgPool::connect(&db).await.unwrap();
    // With and without a next command written by the finishing transition.
    for next in [false, true] {
        let (name, agent) = (format!("claimed-{next}"), format!("claimer-{next}"));
        let mut s = Session::named(&name, Desired::Running, Phase::Pending);
        s.user = "alice".into();
        s.agent_id = Some(agent.clone());
        let start = steps::plan(s.clone(), None, StepConfig::at(now_ms(), 60_000))
            .new_command
            .expect("a start");
        store
            .insert_session(&s, Some(&start), None, None)
            .await
            .unwrap();
        let epoch = store
            .take_over_agent(&AgentRecord {
                id: agent.clone(),
                platform: "process".into(),
                version: "test".into(),
                last_seen_ms: now_ms(),
                replica_id: "replica-1".into(),
                ..AgentRecord::default()
            })
            .await
            .unwrap();

        let (locked, go) = (tokio::sync::oneshot::channel(), std::sync::mpsc::channel());
        let (locked_tx, locked_rx) = locked;
        let (go_tx, go_rx) = go;
        let finishing = tokio::spawn({
            let (store, name, id) = (store.clone(), name.clone(), start.id.clone());
            async move {
                store
                    .transition(
                        &name,
                        Box::new(move |s, active| {
                            // The session and its command are read and locked.
                            let _ = locked_tx.send(());
                            tokio::task::block_in_place(|| go_rx.recv()).unwrap();
                            let mut s = s.expect("the session");
                            if next {
                                s.desired = Desired::Hibernated;
                                s.generation += 1;
                            }
                            let cfg = StepConfig::at(now_ms(), 60_000);
                            Ok(steps::finished(
                                Some(s),
                                active,
                                &id,
                                &Outcome::Succeeded,
                                cfg,
                            ))
                        }),
                    )
                    .await
            }
        });
        locked_rx.await.unwrap();
        let claiming = tokio::spawn({
            let (store, agent) = (store.clone(), agent.clone());
            async move { store.claim_commands(&agent, epoch, 10, now_ms()).await }
        });
        lock_wait(&watcher, "the claim to wait on the command's row lock").await;
        go_tx.send(()).unwrap();
        let change = finishing.await.unwrap().unwrap().change;
        assert_eq!(change.new_command.is_some(), next, "{change:?}");
        let claimed = claiming.await.unwrap();
        let claimed = claimed.unwrap_or_else(|e| panic!("the claim failed: {e}"));
        assert!(
            claimed.is_empty(),
            "the claim took nothing that was pending when it began: {claimed:?}"
        );
        let finished = store.get_command(&start.id).await.unwrap().unwrap();
        assert_eq!(finished.state, CommandState::Succeeded, "{finished:?}");
        // The next command is sent by the next claim, once.
        let again = store
            .claim_commands(&agent, epoch, 10, now_ms())
            .await
            .unwrap();
        let ids: Vec<&str> = again.iter().map(|c| c.id.as_str()).collect();
        let expected: Vec<&str> = change.new_command.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, expected);
    }
}

/// A take-over of the agent while one of its reports is being applied on
/// the replica that held it: the take-over waits for the report's
/// transaction (the report's fence holds the agent row `FOR SHARE`), so the
/// report lands before the new stream's reports, never after them; a report
/// of the old stream read after the take-over changes nothing. Real
/// PostgreSQL, the take-over seen waiting on the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_waits_for_a_report_of_the_stream_it_replaces() {
    use streamspace_control_plane::core::model::{AgentRecord, Desired, Phase, Session, now_ms};
    use streamspace_control_plane::core::store::{Change, SessionWrite, StreamFence};
    init();
    let db = postgres_url().await;
    let store = streamspace_control_plane::store::open(&db).await.unwrap();
    let watcher = sqlx::PgPool::connect(&db).await.unwrap();
    let (name, agent) = ("fenced-1".to_string(), "fenced-agent".to_string());
    let mut s = Session::named(&name, Desired::Running, Phase::Running);
    s.user = "alice".into();
    s.agent_id = Some(agent.clone());
    store.insert_session(&s, None, None, None).await.unwrap();
    let record = |replica: &str| AgentRecord {
        id: agent.clone(),
        platform: "process".into(),
        version: "test".into(),
        last_seen_ms: now_ms(),
        replica_id: replica.into(),
        ..AgentRecord::default()
    };
    let old = store.take_over_agent(&record("replica-1")).await.unwrap();
    let fence = StreamFence {
        agent: agent.clone(),
        epoch: old,
    };
    // A report of the old stream: the session hibernated.
    let report = |s: Option<Session>| {
        let mut s = s.expect("the session");
        s.phase = Phase::Hibernated;
        Ok(Change {
            session: SessionWrite::Upsert(s),
            ..Change::default()
        })
    };

    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reporting = tokio::spawn({
        let (store, name, fence) = (store.clone(), name.clone(), fence.clone());
        async move {
            store
                .transition_fenced(
                    &name,
                    Some(fence),
                    Box::new(move |s, _| {
                        // The fence is checked and its lock held.
                        let _ = locked_tx.send(());
                        tokio::task::block_in_place(|| go_rx.recv()).unwrap();
                        report(s)
                    }),
                )
                .await
        }
    });
    locked_rx.await.unwrap();
    let taking_over = tokio::spawn({
        let (store, r) = (store.clone(), record("replica-2"));
        async move { store.take_over_agent(&r).await }
    });
    lock_wait(&watcher, "the take-over to wait on the agent row's lock").await;
    go_tx.send(()).unwrap();
    let t = reporting.await.unwrap().unwrap();
    assert!(!t.superseded, "the report began before the take-over");
    let new = taking_over.await.unwrap().unwrap();
    assert!(new > old, "{old} -> {new}");
    let after = store.get_session(&name).await.unwrap().unwrap();
    assert_eq!(after.phase, Phase::Hibernated);

    // The new stream reports the session running; the old stream's next
    // report, read now, is fenced out.
    store
        .transition(
            &name,
            Box::new(|s, _| {
                let mut s = s.expect("the session");
                s.phase = Phase::Running;
                Ok(Change {
                    session: SessionWrite::Upsert(s),
                    ..Change::default()
                })
            }),
        )
        .await
        .unwrap();
    let late = store
        .transition_fenced(&name, Some(fence), Box::new(move |s, _| report(s)))
        .await
        .unwrap();
    assert!(late.superseded && late.change.is_empty(), "{late:?}");
    let after = store.get_session(&name).await.unwrap().unwrap();
    assert_eq!(after.phase, Phase::Running);
}
