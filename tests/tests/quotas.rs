//! Quotas per user and per role, through the API of a real control plane on
//! real TLS (SQLite or PostgreSQL, per STREAMSPACE_TEST_STORE), with noop
//! agents: a table of refusals (count, running, CPU, memory, role, wake, an
//! administrator acting for a user), each RESOURCE_EXHAUSTED naming the
//! quota, its limit and use, with nothing written; freed quota after a
//! delete; and concurrent creates that never overrun a limit.

use streamspace::v1 as pb;
use streamspace_control_plane::server::ControlPlane;
use streamspace_tests::chaos::noop::NoopAgents;
use streamspace_tests::*;
use tonic::Code;

/// One step of a case: what a caller asks.
#[derive(Clone, Copy)]
enum Op {
    /// Create `name` with these CPU and memory requests, running or not.
    Create {
        name: &'static str,
        cpu: &'static str,
        mem: &'static str,
        running: bool,
    },
    Wake(&'static str),
}

use Op::*;

const fn run(name: &'static str) -> Op {
    Create {
        name,
        cpu: "100m",
        mem: "64Mi",
        running: true,
    }
}

struct Case {
    what: &'static str,
    quotas: &'static str,
    /// Who calls (a token of tests/src/lib.rs) and for which user.
    token: &'static str,
    user: &'static str,
    before: &'static [Op],
    over: Op,
    expect: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "session count",
        quotas: "quotas:\n  alice-count:\n    user: alice\n    maxSessions: 2\n",
        token: ALICE_TOKEN,
        user: "alice",
        before: &[run("c1"), run("c2")],
        over: run("c3"),
        expect: "quota \"alice-count\" (user alice) exceeded: sessions limit 2, in use 2, this request adds 1",
    },
    Case {
        what: "running sessions (a hibernated one does not count)",
        quotas: "quotas:\n  alice-running:\n    user: alice\n    maxRunningSessions: 1\n",
        token: ALICE_TOKEN,
        user: "alice",
        before: &[
            run("r1"),
            Create {
                name: "r2",
                cpu: "100m",
                mem: "64Mi",
                running: false,
            },
        ],
        over: run("r3"),
        expect: "quota \"alice-running\" (user alice) exceeded: running sessions limit 1, in use 1, this request adds 1",
    },
    Case {
        what: "total CPU",
        quotas: "quotas:\n  bob-cpu:\n    user: bob\n    cpu: \"1\"\n",
        token: BOB_TOKEN,
        user: "bob",
        before: &[Create {
            name: "p1",
            cpu: "600m",
            mem: "64Mi",
            running: true,
        }],
        over: Create {
            name: "p2",
            cpu: "600m",
            mem: "64Mi",
            running: true,
        },
        expect: "quota \"bob-cpu\" (user bob) exceeded: cpu limit 1, in use 600m, this request adds 600m",
    },
    Case {
        what: "total memory",
        quotas: "quotas:\n  bob-memory:\n    user: bob\n    memory: 1Gi\n",
        token: BOB_TOKEN,
        user: "bob",
        before: &[Create {
            name: "m1",
            cpu: "100m",
            mem: "768Mi",
            running: true,
        }],
        over: Create {
            name: "m2",
            cpu: "100m",
            mem: "512Mi",
            running: true,
        },
        expect: "quota \"bob-memory\" (user bob) exceeded: memory limit 1Gi, in use 768Mi, this request adds 512Mi",
    },
    Case {
        what: "per role",
        quotas: "quotas:\n  students:\n    role: students\n    maxSessions: 1\n",
        token: CAROL_TOKEN,
        user: "carol",
        before: &[run("s1")],
        over: run("s2"),
        expect: "quota \"students\" (role students) exceeded: sessions limit 1, in use 1, this request adds 1",
    },
    Case {
        what: "a wake over the running limit",
        quotas: "quotas:\n  alice-running:\n    user: alice\n    maxRunningSessions: 1\n",
        token: ALICE_TOKEN,
        user: "alice",
        before: &[
            run("w1"),
            Create {
                name: "w2",
                cpu: "100m",
                mem: "64Mi",
                running: false,
            },
        ],
        over: Wake("w2"),
        expect: "quota \"alice-running\" (user alice) exceeded: running sessions limit 1, in use 1, this request adds 1",
    },
    Case {
        what: "an administrator creating for a user",
        quotas: "quotas:\n  alice-count:\n    user: alice\n    maxSessions: 1\n",
        token: ADMIN_TOKEN,
        user: "alice",
        before: &[run("d1")],
        over: run("d2"),
        expect: "quota \"alice-count\" (user alice) exceeded: sessions limit 1, in use 1",
    },
];

async fn apply(api: &mut Api, user: &str, op: Op) -> Result<pb::Session, tonic::Status> {
    match op {
        Create {
            name,
            cpu,
            mem,
            running,
        } => {
            let list = pb::ResourceList {
                cpu: cpu.into(),
                memory: mem.into(),
            };
            let desired = if running {
                pb::DesiredState::Running
            } else {
                pb::DesiredState::Hibernated
            };
            api.sessions
                .create_session(pb::CreateSessionRequest {
                    name: name.into(),
                    template: "static-files".into(),
                    user: user.into(),
                    resources: Some(pb::Resources {
                        requests: Some(list.clone()),
                        limits: Some(list),
                    }),
                    desired_state: desired as i32,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
        Wake(name) => api
            .sessions
            .wake_session(pb::WakeSessionRequest { name: name.into() })
            .await
            .map(|r| r.into_inner()),
    }
}

async fn sessions_of(api: &mut Api, user: &str) -> Vec<pb::Session> {
    api.sessions
        .list_sessions(pb::ListSessionsRequest {
            user: user.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions
}

/// A control plane with `quotas` (the `--quotas` file format) and two noop
/// agents without limits.
async fn control_plane(quotas: &str) -> (ControlPlane, TestPki, NoopAgents, tempfile::TempDir) {
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let o = CpOptions {
        quotas: streamspace_control_plane::quotas::parse(quotas).unwrap(),
        ..Default::default()
    };
    let cp = start_cp(&pki, &db, &o).await;
    let agents = NoopAgents::start(&pki, cp.agent_addr, &[("quota-a", 0), ("quota-b", 0)]);
    (cp, pki, agents, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_table() {
    init();
    for case in CASES {
        let (cp, pki, _agents, _tmp) = control_plane(case.quotas).await;
        let mut api = Api::connect(&pki, cp.api_addr, case.token).await;
        let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
        admin.wait_agents(2, 30).await;
        for op in case.before {
            apply(&mut api, case.user, *op)
                .await
                .unwrap_or_else(|e| panic!("{}: a step before the limit failed: {e}", case.what));
        }
        let before = sessions_of(&mut admin, case.user).await;
        let e = apply(&mut api, case.user, case.over)
            .await
            .expect_err(case.what);
        assert_eq!(e.code(), Code::ResourceExhausted, "{}: {e}", case.what);
        assert!(
            e.message().starts_with(case.expect),
            "{}: got {:?}",
            case.what,
            e.message()
        );
        assert!(e.message().len() < 300, "{}: unbounded message", case.what);
        // Nothing written: the same sessions, in the same desired states.
        let after = sessions_of(&mut admin, case.user).await;
        let desired = |v: &[pb::Session]| {
            let mut d: Vec<_> = v
                .iter()
                .map(|s| (s.name.clone(), s.desired_state))
                .collect();
            d.sort();
            d
        };
        assert_eq!(
            desired(&before),
            desired(&after),
            "{}: something was written",
            case.what
        );
        // Other users are not held by this quota.
        let mut other = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
        if case.user != "alice" {
            apply(&mut other, "alice", run("free"))
                .await
                .unwrap_or_else(|e| panic!("{}: alice was held: {e}", case.what));
        }
        cp.shutdown().await;
    }
}

/// A deleted session's quota is free at once (its deletion may still be
/// under way on the agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_frees_quota() {
    init();
    let (cp, pki, _agents, _tmp) =
        control_plane("quotas:\n  one:\n    user: alice\n    maxSessions: 1\n    cpu: 200m\n")
            .await;
    let mut api = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    apply(&mut api, "alice", run("f1")).await.unwrap();
    let e = apply(&mut api, "alice", run("f2")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    api.sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "f1".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    apply(&mut api, "alice", run("f2")).await.unwrap();
    cp.shutdown().await;
}

/// Many creates of one user at once, on two connections: exactly the limit
/// gets through (the store counts inside the writing transaction, serialized
/// per user), every other one is refused naming the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overrun_a_quota() {
    init();
    const LIMIT: usize = 5;
    const CREATES: usize = 40;
    let (cp, pki, _agents, _tmp) = control_plane(
        "quotas:\n  five:\n    user: alice\n    maxSessions: 5\n    maxRunningSessions: 5\n",
    )
    .await;
    let a = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let b = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let names: Vec<String> = (0..CREATES).map(|i| format!("race-{i}")).collect();
    let tasks: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut api = if i % 2 == 0 { a.clone() } else { b.clone() };
            let name: &'static str = Box::leak(name.clone().into_boxed_str());
            tokio::spawn(async move { apply(&mut api, "alice", run(name)).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                assert!(e.message().contains("quota \"five\""), "{e}");
            }
        }
    }
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    assert_eq!(ok, LIMIT, "creates that got through");
    assert_eq!(sessions_of(&mut admin, "alice").await.len(), LIMIT);
    cp.shutdown().await;
}
