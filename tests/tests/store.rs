//! The store's command queue on the store the run asks for (SQLite, or the
//! real PostgreSQL server under STREAMSPACE_TEST_STORE=postgres): the
//! per-agent in-flight window, acks, re-queueing, duplicate names, and
//! agent slots that hold under concurrent writes; stream epochs that fence a
//! replica which lost its agent, and the reports of its stream; committed
//! writes reported to an observer (the metrics' seam).

use std::sync::Arc;
use std::time::Duration;

use streamspace_control_plane::core::lifecycle::{Lifecycle, LifecycleConfig};
use streamspace_control_plane::core::model::{
    AgentRecord, Capacity, Command, CommandState, Desired, FailureReason, Observed, Phase, Session,
    Usage, now_ms,
};
use streamspace_control_plane::core::roster::{AgentHello, Roster};
use streamspace_control_plane::core::steps::{self, StepConfig};
use streamspace_control_plane::core::store::{Change, CommandFilter, Slot, Store, StoreError};
use streamspace_tests::*;

fn cfg() -> StepConfig {
    StepConfig::at(now_ms(), 60_000)
}

/// A fresh store on the backend the run asks for (the directory holds SQLite's file).
async fn open_store() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let store = streamspace_control_plane::store::open(&database_url(tmp.path()).await)
        .await
        .unwrap();
    (tmp, store)
}

/// Replica `replica` takes `agent`'s stream over; returns its epoch.
async fn take_over(store: &dyn Store, agent: &str, replica: &str) -> i64 {
    let a = AgentRecord {
        id: agent.into(),
        platform: "process".into(),
        region: String::new(),
        capacity: Default::default(),
        version: "test".into(),
        fencing_token: 0,
        last_seen_ms: now_ms(),
        replica_id: replica.into(),
        stream_epoch: 0,
    };
    store.take_over_agent(&a).await.unwrap()
}

/// Claims `agent`'s pending commands within `window`, on the agent's
/// current stream (attaching it first if it never was).
async fn claim(store: &dyn Store, agent: &str, window: u32) -> Vec<Command> {
    let epoch = match store.get_agent(agent).await.unwrap() {
        Some(a) => a.stream_epoch,
        None => take_over(store, agent, "r1").await,
    };
    store
        .claim_commands(agent, epoch, window, now_ms())
        .await
        .unwrap()
}

/// Two replicas believe they hold one agent: only the later attach (the
/// higher epoch) claims its commands; the older one claims nothing, even
/// with commands pending, and its stream's end does not release the newer.
#[tokio::test]
async fn a_stale_stream_epoch_claims_nothing() {
    let (_tmp, store) = open_store().await;
    let old = take_over(&*store, "agent-f", "r1").await;
    let new = take_over(&*store, "agent-f", "r2").await;
    assert!(new > old, "each attach raises the epoch ({old} -> {new})");
    add(&*store, "f1", "agent-f").await;
    let now = now_ms();
    assert!(
        store
            .claim_commands("agent-f", old, 10, now)
            .await
            .unwrap()
            .is_empty(),
        "the replica that lost the agent sends nothing"
    );
    assert_eq!(
        store
            .claim_commands("agent-f", new, 10, now)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(!store.release_agent("agent-f", old, now).await.unwrap());
    let a = store.get_agent("agent-f").await.unwrap().unwrap();
    assert_eq!((a.replica_id.as_str(), a.stream_epoch), ("r2", new));
    assert!(store.release_agent("agent-f", new, now).await.unwrap());
    let a = store.get_agent("agent-f").await.unwrap().unwrap();
    assert_eq!((a.replica_id.as_str(), a.stream_epoch), ("", new));
}

/// Acknowledges `id` for `agent`; whether a delivered command changed.
async fn ack(store: &dyn Store, agent: &str, id: &str) -> bool {
    store.ack_command(agent, id, now_ms()).await.unwrap()
}

/// A session placed on `agent` and its start command, as create writes them.
async fn add(store: &dyn Store, name: &str, agent: &str) {
    let mut s = Session::named(name, Desired::Running, Phase::Pending);
    s.user = "alice".into();
    s.agent_id = Some(agent.into());
    let change = steps::plan(s.clone(), None, cfg());
    let cmd = change.new_command.expect("a start command");
    store
        .insert_session(&s, Some(&cmd), None, None)
        .await
        .unwrap();
}

/// Writes `cmd` (a finished state of an active command) in its session's transition.
async fn write_command(store: &dyn Store, cmd: Command) {
    let session = cmd.session.clone();
    store
        .transition(
            &session,
            Box::new(move |_, _| {
                Ok(Change {
                    update_command: Some(cmd),
                    ..Change::default()
                })
            }),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn in_flight_window_acks_and_requeue() {
    let (_tmp, store) = open_store().await;
    for i in 0..25 {
        add(&*store, &format!("a-{i}"), "agent-a").await;
    }
    add(&*store, "b-0", "agent-b").await;

    // The window bounds what is delivered and not yet finished.
    let first = claim(&*store, "agent-a", 10).await;
    assert_eq!(first.len(), 10);
    assert!(
        first
            .iter()
            .all(|c| c.agent_id == "agent-a" && c.state == CommandState::Delivered)
    );
    let names: Vec<&str> = first.iter().map(|c| c.session.as_str()).collect();
    assert_eq!(
        names,
        (0..10).map(|i| format!("a-{i}")).collect::<Vec<_>>(),
        "oldest first"
    );
    assert!(
        claim(&*store, "agent-a", 10).await.is_empty(),
        "window full"
    );

    // Acks: only for a delivered command of the same agent, once.
    let id = &first[0].id;
    assert!(ack(&*store, "agent-a", id).await);
    assert!(!ack(&*store, "agent-a", id).await, "already acknowledged");
    assert!(
        !ack(&*store, "agent-b", &first[1].id).await,
        "another agent's"
    );
    assert!(!ack(&*store, "agent-a", "no-such-command").await);
    assert_eq!(
        store.get_command(id).await.unwrap().unwrap().state,
        CommandState::Acknowledged
    );
    assert!(
        claim(&*store, "agent-a", 10).await.is_empty(),
        "acknowledged still counts"
    );

    // Finishing two frees two slots.
    for c in &first[..2] {
        let mut done = c.clone();
        done.state = CommandState::Succeeded;
        write_command(&*store, done).await;
    }
    let more = claim(&*store, "agent-a", 10).await;
    assert_eq!(
        more.iter().map(|c| c.session.as_str()).collect::<Vec<_>>(),
        ["a-10", "a-11"]
    );
    // A smaller window than what is out: nothing, not a negative LIMIT.
    assert!(claim(&*store, "agent-a", 3).await.is_empty());

    // After a reconnect everything unfinished goes back to pending, in order.
    assert_eq!(store.requeue_commands("agent-a").await.unwrap(), 10);
    let again = claim(&*store, "agent-a", 100).await;
    assert_eq!(again.len(), 23);
    assert_eq!(again[0].session, "a-2");
    // The other agent's queue was never touched.
    assert_eq!(claim(&*store, "agent-b", 10).await.len(), 1);
}

#[tokio::test]
async fn a_second_session_of_the_same_name_is_refused_and_nothing_is_written() {
    let (_tmp, store) = open_store().await;
    add(&*store, "dup", "agent-a").await;
    let mut s = Session::named("dup", Desired::Running, Phase::Pending);
    s.agent_id = Some("agent-a".into());
    let cmd = steps::plan(s.clone(), None, cfg()).new_command.unwrap();
    match store.insert_session(&s, Some(&cmd), None, None).await {
        Err(StoreError::AlreadyExists(m)) => assert!(m.contains("dup"), "{m}"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(
        store.get_command(&cmd.id).await.unwrap().is_none(),
        "its command was not written"
    );
    assert_eq!(claim(&*store, "agent-a", 10).await.len(), 1);
}

/// Many writers at once (the SQLite store commits them in groups): each
/// failed write leaves nothing behind, even when it failed half-way, and
/// every other write of the same group is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_together_and_a_failed_one_leaves_nothing() {
    let (_tmp, store) = open_store().await;
    add(&*store, "taken", "agent-a").await;
    let taken_cmd = claim(&*store, "agent-a", 1).await[0].clone();
    let mut tasks = vec![];
    for i in 0..150 {
        let store = store.clone();
        let taken_id = taken_cmd.id.clone();
        tasks.push(tokio::spawn(async move {
            let name = match i % 3 {
                0 => format!("ok-{i}"),
                1 => "taken".to_string(),
                _ => format!("half-{i}"),
            };
            let mut s = Session::named(&name, Desired::Running, Phase::Pending);
            s.agent_id = Some("agent-a".into());
            let mut cmd = steps::plan(s.clone(), None, cfg()).new_command.unwrap();
            if i % 3 == 2 {
                // The session row is new, its command's id is not: the
                // second INSERT fails after the first succeeded.
                cmd.id = taken_id;
            }
            (
                i,
                name,
                store.insert_session(&s, Some(&cmd), None, None).await,
            )
        }));
    }
    for t in tasks {
        let (i, name, r) = t.await.unwrap();
        match i % 3 {
            0 => {
                r.unwrap();
                assert!(store.get_session(&name).await.unwrap().is_some());
            }
            1 => assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "{r:?}"),
            _ => {
                assert!(r.is_err(), "{name}: {r:?}");
                assert!(
                    store.get_session(&name).await.unwrap().is_none(),
                    "{name}: its session row was rolled back with its command"
                );
            }
        }
    }
    // 50 new sessions, each with its pending start command.
    let claimed = claim(&*store, "agent-a", 1000).await;
    assert_eq!(claimed.len(), 50);
    assert!(claimed.iter().all(|c| c.session.starts_with("ok-")));
}

/// Many creates and placements race for the last slots of one agent: the
/// store's re-count inside the writing transaction lets exactly
/// `max_sessions` through, whichever path (insert or transition) writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_hold_under_concurrent_inserts_and_placements() {
    let (_tmp, store) = open_store().await;
    let slot = Slot {
        agent: "agent-s".into(),
        capacity: Capacity {
            max_sessions: 10,
            ..Capacity::default()
        },
        request: Usage::default(),
    };
    // 40 unplaced sessions that placement will try to move onto the agent.
    for i in 0..40 {
        let s = Session::named(&format!("wait-{i}"), Desired::Running, Phase::Pending);
        store.insert_session(&s, None, None, None).await.unwrap();
    }
    let mut tasks = vec![];
    for i in 0..120 {
        let (store, slot) = (store.clone(), slot.clone());
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                let f = move |s, active| Ok(steps::placed(s, active, &slot, cfg()));
                store
                    .transition(&format!("wait-{}", i / 3), Box::new(f))
                    .await
                    .map(|_| ())
            } else {
                let mut s = Session::named(&format!("new-{i}"), Desired::Running, Phase::Pending);
                steps::mark_placed(&mut s, &slot.agent);
                let cmd = steps::plan(s.clone(), None, cfg()).new_command;
                store
                    .insert_session(&s, cmd.as_ref(), Some(&slot), None)
                    .await
            }
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::NoRoom(a)) => {
                assert_eq!(a, "agent-s");
                full += 1
            }
            Err(e) => panic!("unexpected store error: {e}"),
        }
    }
    let placed = store.usage_per_agent().await.unwrap();
    assert_eq!(
        placed.get("agent-s").map(|u| u.sessions),
        Some(10),
        "{placed:?}"
    );
    assert_eq!((ok, full), (10, 110));
    // Refused writes left nothing: only the 10 placed sessions have commands.
    assert_eq!(claim(&*store, "agent-s", 1000).await.len(), 10);
    // Unlimited (0) is never refused.
    let free = Slot {
        agent: "agent-free".into(),
        capacity: Capacity::default(),
        request: Usage::default(),
    };
    for i in 0..3 {
        let mut s = Session::named(&format!("free-{i}"), Desired::Running, Phase::Pending);
        steps::mark_placed(&mut s, &free.agent);
        store
            .insert_session(&s, None, Some(&free), None)
            .await
            .unwrap();
    }
}

/// The same race for CPU and memory: sessions requesting 300m and 1Gi
/// against an agent with 1000m and 2Gi; exactly two fit (memory runs out
/// first), and the sums the store keeps match.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_and_memory_hold_under_concurrent_inserts() {
    let (_tmp, store) = open_store().await;
    let slot = Slot {
        agent: "agent-r".into(),
        capacity: Capacity {
            max_sessions: 0,
            cpu_millis: 1000,
            memory_bytes: 2 << 30,
        },
        request: Usage {
            cpu_millis: 300,
            memory_bytes: 1 << 30,
            ..Usage::default()
        },
    };
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (store, slot) = (store.clone(), slot.clone());
            tokio::spawn(async move {
                let mut s = Session::named(&format!("res-{i}"), Desired::Running, Phase::Pending);
                s.workload.resources.requests.cpu = "300m".into();
                s.workload.resources.requests.memory = "1Gi".into();
                steps::mark_placed(&mut s, &slot.agent);
                store.insert_session(&s, None, Some(&slot), None).await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::NoRoom(_)) => {}
            Err(e) => panic!("unexpected store error: {e}"),
        }
    }
    assert_eq!(ok, 2);
    let u = store.usage_per_agent().await.unwrap()["agent-r"];
    assert_eq!(
        (u.sessions, u.cpu_millis, u.memory_bytes),
        (2, 600, 2 << 30)
    );
}

/// Retention: only finished commands older than the cut are pruned, oldest
/// first, at most a batch at a time; active ones never, however old.
#[tokio::test]
async fn retention_prunes_old_finished_commands_only() {
    let (_tmp, store) = open_store().await;
    for i in 0..6 {
        add(&*store, &format!("r-{i}"), "agent-r").await;
    }
    let claimed = claim(&*store, "agent-r", 10).await;
    assert_eq!(claimed.len(), 6);
    let day = 86_400_000;
    // r-0..r-3 finished 10 days ago (r-0 first), r-4 finished now, r-5 stays active.
    for (i, c) in claimed.iter().enumerate().take(5) {
        let mut done = c.clone();
        done.state = if i % 2 == 0 {
            CommandState::Succeeded
        } else {
            CommandState::Failed
        };
        done.updated_ms = if i < 4 {
            now_ms() - 10 * day + i as i64
        } else {
            now_ms()
        };
        write_command(&*store, done).await;
    }
    let cut = now_ms() - day;
    assert_eq!(store.prune_commands(cut, 3).await.unwrap(), 3, "one batch");
    assert!(
        store.get_command(&claimed[0].id).await.unwrap().is_none(),
        "oldest first"
    );
    assert!(store.get_command(&claimed[3].id).await.unwrap().is_some());
    assert_eq!(store.prune_commands(cut, 3).await.unwrap(), 1);
    assert_eq!(store.prune_commands(cut, 3).await.unwrap(), 0);
    assert!(
        store.get_command(&claimed[4].id).await.unwrap().is_some(),
        "recent kept"
    );
    assert_eq!(
        store
            .get_command(&claimed[5].id)
            .await
            .unwrap()
            .unwrap()
            .state,
        CommandState::Delivered,
        "active kept"
    );
    // Even the active one, however old, survives a cut in the future.
    assert_eq!(store.prune_commands(now_ms() + day, 100).await.unwrap(), 1);
    assert!(store.get_command(&claimed[5].id).await.unwrap().is_some());
}

/// Records what a store reports.
#[derive(Default)]
struct Commits(std::sync::Mutex<Vec<(&'static str, f64, usize)>>);

impl streamspace_control_plane::core::store::WriteObserver for Commits {
    fn write_committed(&self, store: &'static str, seconds: f64, ops: usize) {
        self.0.lock().unwrap().push((store, seconds, ops));
    }
}

/// Each committed write transaction is reported once with its store's name
/// and its operations: concurrent writes that SQLite's writer commits
/// together add up to all of them; on PostgreSQL each is its own. Nothing
/// is reported before an observer is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_are_reported_to_the_observer() {
    let (_tmp, store) = open_store().await;
    let name = if std::env::var("STREAMSPACE_TEST_STORE").as_deref() == Ok("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    add(&*store, "unobserved", "agent-a").await;
    let commits = std::sync::Arc::new(Commits::default());
    store.observe_writes(commits.clone());
    let mut tasks = vec![];
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            add(&*store, &format!("seen-{i}"), "agent-a").await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = commits.0.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|(s, secs, ops)| *s == name && *secs >= 0.0 && *ops >= 1),
        "{seen:?}"
    );
    let ops: usize = seen.iter().map(|(_, _, n)| n).sum();
    match name {
        // The 40 inserts, and nothing else ran on the writer meanwhile.
        "sqlite" => assert_eq!(ops, 40, "{seen:?}"),
        _ => assert_eq!((seen.len(), ops), (40, 40), "{seen:?}"),
    }
    // A failed write is not a committed one.
    let before = commits.0.lock().unwrap().len();
    let mut s = Session::named("seen-0", Desired::Running, Phase::Pending);
    s.agent_id = Some("agent-a".into());
    assert!(store.insert_session(&s, None, None, None).await.is_err());
    let after = commits.0.lock().unwrap().clone();
    match name {
        // SQLite commits the group the failed job was in (its savepoint
        // rolled back): one commit of one operation.
        "sqlite" => {
            let ops: Vec<usize> = after[before..].iter().map(|c| c.2).collect();
            assert_eq!(ops, [1], "{after:?}");
        }
        _ => assert_eq!(after.len(), before, "{after:?}"),
    }
}

/// Two replicas (a roster each) over the one store; `agent` attached to the
/// first (reporting `inventory`), then taken over by the second (whose
/// inventory the caller reports); returns both and the streams.
struct TakenOver {
    old: Arc<Lifecycle>,
    old_conn: u64,
    new: Arc<Lifecycle>,
    new_conn: u64,
}

async fn taken_over(store: &Arc<dyn Store>, agent: &str, inventory: &[Observed]) -> TakenOver {
    let replica = |id: &str| {
        let roster = Arc::new(Roster::new(Duration::from_secs(30)));
        Arc::new(
            Lifecycle::new(store.clone(), roster, LifecycleConfig::default()).with_replica_id(id),
        )
    };
    let hello = AgentHello {
        id: agent.into(),
        platform: "process".into(),
        ..AgentHello::default()
    };
    let old = replica("replica-a");
    let old_conn = old.attach(&hello).await.unwrap().conn_id;
    old.attached(agent, old_conn, inventory).await.unwrap();
    let new = replica("replica-b");
    let new_conn = new.attach(&hello).await.unwrap().conn_id;
    TakenOver {
        old,
        old_conn,
        new,
        new_conn,
    }
}

fn observed(session: &str, phase: Phase) -> Observed {
    Observed {
        session: session.into(),
        phase,
        url: String::new(),
        failure_reason: FailureReason::None,
        message: String::new(),
        workload_name: String::new(),
    }
}

/// `name`'s phase and how many commands it has.
async fn phase_and_commands(store: &dyn Store, name: &str) -> (Phase, usize) {
    let s = store.get_session(name).await.unwrap().unwrap();
    let cmds = store
        .list_commands(&CommandFilter {
            session: Some(name.into()),
            limit: 100,
            ..CommandFilter::default()
        })
        .await
        .unwrap();
    (s.phase, cmds.len())
}

/// A report still in flight on an agent's old stream when a newer stream
/// attached (buffered on a drained stream, read late by the replica that
/// lost the agent) is older than what the newer stream reported: applied
/// after it, it would move the session back to a phase it has left and plan
/// a command for it (a second wake of the same generation). The old
/// replica's status and inventory change nothing; the same status on the
/// agent's current stream is applied.
#[tokio::test]
async fn a_report_from_a_replaced_stream_changes_nothing() {
    let (_tmp, store) = open_store().await;
    let mut s = Session::named("stale-1", Desired::Running, Phase::Running);
    s.user = "alice".into();
    s.agent_id = Some("agent-s".into());
    store.insert_session(&s, None, None, None).await.unwrap();
    let running = [observed("stale-1", Phase::Running)];
    let t = taken_over(&store, "agent-s", &running).await;
    t.new
        .attached("agent-s", t.new_conn, &running)
        .await
        .unwrap();
    assert_eq!(
        phase_and_commands(&*store, "stale-1").await,
        (Phase::Running, 0)
    );

    // The old stream's last status, read after the take-over.
    t.old
        .observed(
            "agent-s",
            t.old_conn,
            &observed("stale-1", Phase::Hibernated),
        )
        .await
        .unwrap();
    assert_eq!(
        phase_and_commands(&*store, "stale-1").await,
        (Phase::Running, 0),
        "a status from the replaced stream is ignored"
    );
    // The old stream's inventory, reconciled late: not even the sessions it
    // leaves out are touched (they would be marked stopped and started again).
    t.old.attached("agent-s", t.old_conn, &[]).await.unwrap();
    assert_eq!(
        phase_and_commands(&*store, "stale-1").await,
        (Phase::Running, 0),
        "an inventory from the replaced stream is ignored"
    );

    // On the current stream the same report is news: applied, and the
    // session, wanted running, is woken.
    t.new
        .observed(
            "agent-s",
            t.new_conn,
            &observed("stale-1", Phase::Hibernated),
        )
        .await
        .unwrap();
    assert_eq!(
        phase_and_commands(&*store, "stale-1").await,
        (Phase::Hibernated, 1)
    );
}
