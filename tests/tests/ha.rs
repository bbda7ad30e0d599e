//! Agent HA on a Lease (seed 003) against the real API server: three agent
//! replicas with one agent id; exactly one holds the Lease and is attached,
//! with no re-attaches; SIGKILL of the leader fails over and a command issued
//! right after the kill succeeds; SIGTERM hands over without waiting for the
//! Lease to expire. Failover times are printed (measured, not asserted).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api as KubeApi;
use streamspace::v1 as pb;
use streamspace_tests::k8s::cluster;
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;

const ID: &str = "k8s-ha";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_leader_fast_failover() {
    init();
    let Some(k) = cluster().await else { return };
    let ns = k.namespace("ha");
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let mut args = k.agent_args(&ns, tmp.path());
    args.push("--enable-ha".to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut replicas: Vec<AgentProc> = (0..3)
        .map(|i| {
            let pod = format!("agent-{i}");
            AgentProc::spawn_with(
                &pki,
                ID,
                cp.agent_addr,
                &tmp.path().join(&pod),
                &args,
                &[("POD_NAME", pod.as_str())],
            )
        })
        .collect();
    let leases: KubeApi<Lease> = KubeApi::namespaced(k.client.clone(), &ns);
    let roster = cp.lifecycle.roster().clone();
    let attached = || {
        let r = roster.clone();
        async move { r.get(ID).map(|a| (a.conn_id, a.hello.fencing_token)) }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (conn, token) = loop {
        if let Some(v) = attached().await {
            break v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas.iter().map(|r| r.log()).collect();
            panic!(
                "no replica attached within 60s; replica logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let holder = || {
        let l = leases.clone();
        async move {
            l.get(&format!("streamspace-agent-{ID}"))
                .await
                .ok()
                .and_then(|l| l.spec?.holder_identity)
        }
    };
    let leader = holder().await.expect("a Lease holder");
    let leader_idx: usize = leader.trim_start_matches("agent-").parse().unwrap();
    let lease = leases
        .get(&format!("streamspace-agent-{ID}"))
        .await
        .expect("the Lease");
    assert_eq!(
        token,
        streamspace_agent::lease::fencing_token(&lease, 1),
        "first leader's fencing token: the Lease's creation time, then 1 transition"
    );

    // Exactly one stream, no re-attaches, for the observation window.
    let window = std::env::var("STREAMSPACE_TEST_HA_WINDOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    let end = Instant::now() + Duration::from_secs(window);
    while Instant::now() < end {
        assert_eq!(
            attached().await,
            Some((conn, token)),
            "the attached stream must not change"
        );
        assert_eq!(
            holder().await.as_deref(),
            Some(leader.as_str()),
            "the Lease holder must not change"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (i, r) in replicas.iter().enumerate() {
        let connects = r.log().matches("connected to the control plane").count();
        assert_eq!(
            connects,
            usize::from(i == leader_idx),
            "replica {i} attached {connects} times"
        );
    }

    // SIGKILL the leader; a command issued right after the kill succeeds.
    let killed = Instant::now();
    replicas[leader_idx].kill9();
    api.create("after-crash", "firefox-browser").await.unwrap();
    let (conn2, token2) = wait_for("a standby to attach", 30, || {
        let r = roster.clone();
        async move {
            r.get(ID)
                .map(|a| (a.conn_id, a.hello.fencing_token))
                .filter(|(c, _)| *c != conn)
        }
    })
    .await;
    let crash_failover = killed.elapsed();
    assert!(
        token2 > token,
        "the new leader's fencing token {token2} is higher than {token}"
    );
    api.wait_phase("after-crash", pb::SessionPhase::Running, 60)
        .await;
    let leader2 = holder().await.expect("a new holder");
    assert_ne!(leader2, leader);

    // SIGTERM the new leader: it releases the Lease, a standby takes over
    // before the released Lease would have expired.
    let before = leases
        .get(&format!("streamspace-agent-{ID}"))
        .await
        .unwrap()
        .spec
        .unwrap();
    let renewed = before.renew_time.unwrap().0;
    let duration = i64::from(before.lease_duration_seconds.unwrap());
    let idx2: usize = leader2.trim_start_matches("agent-").parse().unwrap();
    let stopped = Instant::now();
    replicas[idx2].terminate();
    wait_for("the last standby to attach", 30, || {
        let r = roster.clone();
        async move { r.get(ID).filter(|a| a.conn_id != conn2).map(|_| ()) }
    })
    .await;
    let graceful_failover = stopped.elapsed();
    let after = leases
        .get(&format!("streamspace-agent-{ID}"))
        .await
        .unwrap()
        .spec
        .unwrap();
    let acquired = after.acquire_time.unwrap().0;
    assert!(
        acquired < renewed + k8s_openapi::jiff::SignedDuration::from_secs(duration),
        "handover at {acquired} did not wait for expiry at {renewed}+{duration}s"
    );
    api.create("after-handover", "firefox-browser")
        .await
        .unwrap();
    api.wait_phase("after-handover", pb::SessionPhase::Running, 60)
        .await;

    // An operator deletes the Lease: the holder makes a new one. After a
    // restart its token (from the new Lease's creation time) is still above
    // every token before, so the control plane takes it instead of refusing a
    // "stale" leader (a transition count restarting at 1 was refused forever).
    let token3 = roster.get(ID).expect("attached").hello.fencing_token;
    leases
        .delete(&format!("streamspace-agent-{ID}"), &Default::default())
        .await
        .expect("delete the Lease");
    wait_for("the Lease to be made again", 30, holder).await;
    let last = (0..replicas.len())
        .find(|i| *i != leader_idx && *i != idx2)
        .unwrap();
    replicas[last].kill9();
    replicas[last].start();
    let token4 = wait_for("a leader of the re-made Lease to attach", 30, || {
        let r = roster.clone();
        async move {
            r.get(ID)
                .map(|a| a.hello.fencing_token)
                .filter(|t| *t > token3)
        }
    })
    .await;
    assert!(holder().await.is_some(), "the Lease is back, held");
    api.create("after-lease-delete", "firefox-browser")
        .await
        .unwrap();
    api.wait_phase("after-lease-delete", pb::SessionPhase::Running, 60)
        .await;
    eprintln!("fencing tokens: {token} -> {token2} -> {token3} -> (Lease re-made) {token4}");

    eprintln!(
        "HA failover: crash (SIGKILL) {crash_failover:?}, graceful (SIGTERM) {graceful_failover:?}"
    );
    std::fs::write(
        target_dir().join("ha-failover.txt"),
        format!(
            "crash_ms={} graceful_ms={}\n",
            crash_failover.as_millis(),
            graceful_failover.as_millis()
        ),
    )
    .ok();
    cp.shutdown().await;
    k.delete_namespace(&ns);
}
