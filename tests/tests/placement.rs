//! Placement never puts more sessions on an agent than it declared it can
//! hold, however many creates race: 1,000 concurrent creates against three
//! agents with 200 slots in all. A sampler watches the per-agent counts the
//! whole time, so a count that goes over and comes back down is caught too.
//! Exactly the capacity gets placed; the rest wait unplaced and say why.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use streamspace::v1 as pb;
use streamspace_tests::chaos::invariants::list_all;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::chaos::{bounded, env_number};
use streamspace_tests::procs::CpProc;
use streamspace_tests::*;
use tokio_util::sync::CancellationToken;

const AGENTS: [(&str, u32); 3] = [("place-a", 50), ("place-b", 50), ("place-c", 100)];

/// Codes a create may get under load and that a client retries: the
/// request was not taken, so trying again is safe.
fn retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
    )
}

/// What the sampler saw: samples taken, highest count per agent, and every
/// sample where an agent was over its capacity.
#[derive(Debug, Default)]
struct Samples {
    taken: u64,
    max: BTreeMap<String, u32>,
    over: Vec<String>,
}

async fn sample_until(mut admin: Admin, stop: CancellationToken) -> Samples {
    let cap: BTreeMap<&str, u32> = AGENTS.iter().copied().collect();
    let mut s = Samples::default();
    while !stop.is_cancelled() {
        if let Ok(r) = bounded(10, admin.list_agents(pb::ListAgentsRequest {})).await {
            s.taken += 1;
            for a in r.into_inner().agents {
                let m = s.max.entry(a.id.clone()).or_default();
                *m = (*m).max(a.sessions);
                let max = cap.get(a.id.as_str()).copied().unwrap_or(0);
                if a.sessions > max && s.over.len() < 20 {
                    s.over.push(format!(
                        "sample {}: agent {} has {} sessions placed, max_sessions {max}",
                        s.taken, a.id, a.sessions
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_place_over_capacity() {
    init();
    let creates = env_number("STREAMSPACE_PLACEMENT_CREATES", 1000) as usize;
    let in_flight = 96;
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = CpProc::spawn(&pki, &db, &tmp.path().join("cp"), 500);
    cp.ready().await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    api.put_dev_templates().await;
    let _agents = NoopAgents::start(&pki, cp.agent_addr, &AGENTS);
    api.wait_agents(AGENTS.len(), 30).await;
    let admin = api.admin.clone();

    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_until(admin.clone(), stop.clone()));

    // A few channels, each carrying many concurrent calls.
    let mut clients = vec![];
    for _ in 0..4 {
        clients.push(Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await.sessions);
    }
    let outcomes: Vec<(usize, Result<(), tonic::Status>, u32)> = futures::stream::iter(0..creates)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            async move {
                let mut retries = 0;
                loop {
                    let r = bounded(
                        60,
                        c.create_session(pb::CreateSessionRequest {
                            name: format!("race-{i:04}"),
                            template: "static-files".into(),
                            ..Default::default()
                        }),
                    )
                    .await;
                    match r {
                        Err(e) if retryable(e.code()) && retries < 20 => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        r => return (i, r.map(|_| ()), retries),
                    }
                }
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let retried: u32 = outcomes.iter().map(|(_, _, n)| n).sum();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(i, r, _)| {
            r.as_ref()
                .err()
                .map(|e| format!("race-{i:04}: {:?} {}", e.code(), e.message()))
        })
        .collect();
    eprintln!(
        "{creates} creates: {} failed, {retried} retries after a retryable code",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "every create is answered OK (an unplaceable session waits, it is not refused); {} failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );

    // Placement of the last creates may finish just after their answers.
    let total: u32 = AGENTS.iter().map(|(_, n)| n).sum();
    let sessions = api.sessions.clone();
    let listed = wait_for(
        "every session listed and the placed ones to stop changing",
        30,
        || {
            let mut sessions = sessions.clone();
            async move {
                let all = list_all(&mut sessions).await.ok()?;
                let placed = all.iter().filter(|s| !s.agent_id.is_empty()).count();
                (all.len() == creates && placed >= total as usize).then_some(all)
            }
        },
    )
    .await;
    stop.cancel();
    let samples = sampler.await.unwrap();
    eprintln!(
        "sampler: {} samples, highest count per agent {:?}",
        samples.taken, samples.max
    );

    let mut placed: BTreeMap<&str, u32> = BTreeMap::new();
    for s in listed.iter().filter(|s| !s.agent_id.is_empty()) {
        *placed.entry(s.agent_id.as_str()).or_default() += 1;
    }
    eprintln!("placed at the end: {placed:?}");
    for (id, max) in AGENTS {
        let n = placed.get(id).copied().unwrap_or(0);
        assert!(
            n <= max,
            "agent {id}: {n} sessions placed at the end, max_sessions is {max}"
        );
    }
    assert!(
        samples.over.is_empty(),
        "an agent was over its capacity while creates raced:\n{}",
        samples.over.join("\n")
    );
    let placed_total: u32 = placed.values().sum();
    assert_eq!(
        placed_total, total,
        "exactly the total capacity ({total}) is placed, found {placed_total}: {placed:?}"
    );
    let unplaced: Vec<&pb::Session> = listed.iter().filter(|s| s.agent_id.is_empty()).collect();
    for s in &unplaced {
        assert_eq!(
            s.phase,
            pb::SessionPhase::Pending as i32,
            "{}: unplaced, so PENDING; found {:?}",
            s.name,
            pb::SessionPhase::try_from(s.phase)
        );
        assert!(
            s.conditions
                .iter()
                .any(|c| c.r#type == "Scheduled" && c.status == "False"),
            "{}: unplaced, so a Scheduled=False condition says why; found {:?}",
            s.name,
            s.conditions
        );
    }
    let _ = &mut api;
    drop(cp);
}

/// The CPU and memory each session requests, cycled over the 20 creates.
const MIXED: [(&str, &str, u64, u64); 4] = [
    ("250m", "256Mi", 250, 256 << 20),
    ("500m", "512Mi", 500, 512 << 20),
    ("1", "1Gi", 1000, 1 << 30),
    ("2", "2Gi", 2000, 2 << 30),
];

fn capacity(cpu_millis: u64, memory_gi: u64) -> pb::Capacity {
    pb::Capacity {
        max_sessions: 0,
        cpu_millis,
        memory_bytes: memory_gi << 30,
    }
}

async fn create_sized(api: &mut Api, name: &str, cpu: &str, mem: &str) -> pb::Session {
    let list = pb::ResourceList {
        cpu: cpu.into(),
        memory: mem.into(),
    };
    api.sessions
        .create_session(pb::CreateSessionRequest {
            name: name.into(),
            template: "static-files".into(),
            resources: Some(pb::Resources {
                requests: Some(list.clone()),
                limits: Some(list),
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner()
}

/// Three agents with different CPU and memory; 20 sessions with mixed
/// requests land only where they fit (the requests on each agent never sum
/// over its capacity) and spread over all three; a session too big for all
/// stays Pending saying what is short, and is placed once a bigger agent
/// attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_land_only_where_their_requests_fit() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let agents = [
        ("fit-a", capacity(4000, 8)),
        ("fit-b", capacity(8000, 8)),
        ("fit-c", capacity(12_000, 16)),
    ];
    let caps: BTreeMap<&str, pb::Capacity> = agents.iter().copied().collect();
    let _agents = NoopAgents::with_capacity(&pki, cp.agent_addr, &agents);
    api.wait_agents(3, 30).await;

    let mut requested: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in 0..20 {
        let (cpu, mem, c, m) = MIXED[i % MIXED.len()];
        let s = create_sized(&mut api, &format!("fit-{i}"), cpu, mem).await;
        assert!(
            !s.agent_id.is_empty(),
            "fit-{i} was not placed: {}",
            s.message
        );
        let sum = requested.entry(s.agent_id.clone()).or_default();
        *sum = (sum.0 + c, sum.1 + m);
    }
    for (agent, (cpu, mem)) in &requested {
        let cap = caps[agent.as_str()];
        assert!(
            *cpu <= cap.cpu_millis && *mem <= cap.memory_bytes,
            "agent {agent}: {cpu}m and {mem} bytes requested, capacity {cap:?}"
        );
    }
    assert_eq!(
        requested.len(),
        3,
        "least-loaded fit uses every agent: {requested:?}"
    );

    // Too big for every agent: Pending, and the condition says what is short.
    let big = create_sized(&mut api, "fit-big", "16", "4Gi").await;
    assert!(big.agent_id.is_empty());
    assert_eq!(big.phase, pb::SessionPhase::Pending as i32);
    let cond = big
        .conditions
        .iter()
        .find(|c| c.r#type == "Scheduled")
        .expect("a Scheduled condition");
    assert_eq!(cond.reason, "InsufficientResources");
    assert!(
        cond.message
            .contains("no room on the 3 matching agent(s): cpu short on 3 (needs 16000m"),
        "{}",
        cond.message
    );
    // A bigger agent attaches: the waiting session goes there.
    let _bigger =
        NoopAgents::with_capacity(&pki, cp.agent_addr, &[("fit-d", capacity(32_000, 64))]);
    let placed = wait_for("fit-big to be placed", 30, || {
        let mut api = api.clone();
        async move {
            api.get("fit-big")
                .await
                .ok()
                .filter(|s| !s.agent_id.is_empty())
        }
    })
    .await;
    assert_eq!(placed.agent_id, "fit-d");
    cp.shutdown().await;
}
