//! The process runtime under hostile names: whatever session id or user a
//! command carries, and whatever home path an old state record holds, the
//! runtime touches nothing outside its data directory and deletes nothing
//! but `homes/<user>` or `scratch/<session>`.

use std::path::Path;
use std::time::Duration;

use std::os::unix::process::CommandExt;

use proptest::prelude::*;

use super::*;

fn start_with_home(user: &str) -> pb::StartSession {
    pb::StartSession {
        user: user.into(),
        template: "t".into(),
        workload: Some(pb::WorkloadSpec {
            command: vec!["sleep".into(), "60".into()],
            persistent_home: true,
            ..Default::default()
        }),
    }
}

/// Files that must survive: in the data directory's every sub-directory,
/// another user's home, and beside the data directory.
fn plant(base: &Path) -> Vec<std::path::PathBuf> {
    let data = base.join("data");
    let files = vec![
        base.join("outside"),
        data.join("precious"),
        data.join("homes/bob/notes"),
        data.join("logs/keep.log"),
        data.join("scratch/other/x"),
    ];
    for f in &files {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "keep").unwrap();
    }
    files
}

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_string()),
        Just("..".to_string()),
        Just("../..".to_string()),
        Just("/".to_string()),
        Just("bob".to_string()),
        Just("alice".to_string()),
        "[a-z./\\\\\0@_-]{0,12}",
        "\\PC{0,70}",
        proptest::collection::vec(any::<char>(), 60..200).prop_map(|v| v.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A start with any user followed by a stop that deletes the home never
    /// deletes anything but `homes/<user>`; an invalid user or session id is
    /// refused as INVALID before anything is written.
    #[test]
    fn stop_with_delete_home_never_leaves_the_users_home(user in hostile(), session in hostile()) {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("data");
        let keep = plant(base.path());
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio.block_on(async {
            // `sleep` opens no port: a start does not wait for one.
            let rt = ProcessRuntime::open(&data, StatusSink::new(), Duration::from_secs(2), false)
                .unwrap()
                .with_start_wait(Duration::ZERO);
            let session = if check_session(&session).is_ok() { session.clone() } else { format!("s-{}", session.len()) };
            match rt.start(&session, &start_with_home(&user)).await {
                Ok(()) => {
                    prop_assert!(check_user(&user).is_ok());
                    rt.stop(&session, true).await.unwrap();
                }
                Err(e) => {
                    prop_assert!(check_user(&user).is_err(), "{e}");
                    prop_assert_eq!(e.reason, R::Invalid);
                    prop_assert!(!e.retryable);
                    prop_assert!(e.message.starts_with("user: expected"), "{}", e.message);
                    prop_assert!(e.message.len() < 300);
                }
            }
            // A hostile session id is refused too, by every action.
            if check_session(&user).is_err() {
                for r in [rt.stop(&user, true).await, rt.hibernate(&user).await, rt.wake(&user).await] {
                    let e = r.unwrap_err();
                    prop_assert_eq!(e.reason, R::Invalid);
                    prop_assert!(e.message.starts_with("session_id: expected"), "{}", e.message);
                }
            }
            Ok(())
        })?;
        for f in &keep {
            if user == "bob" && f.ends_with("homes/bob/notes") {
                continue; // bob's own home, deleted on request
            }
            prop_assert!(f.exists(), "{} was deleted (user {:?})", f.display(), user);
        }
        for d in Layout::DIRS {
            prop_assert!(data.join(d).is_dir(), "{d} is gone");
        }
    }
}

/// A state record left by an older agent may hold any home path: a stop
/// that deletes the home removes it only if it is strictly inside `homes/`
/// or `scratch/`.
#[tokio::test]
async fn a_recorded_home_outside_the_homes_is_not_deleted() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let keep = plant(base.path());
    for (i, home) in [
        data.join("homes/.."),
        data.join("homes"),
        data.join("homes/."),
        data.join("scratch/../.."),
        base.path().to_path_buf(),
        data.join("homes/bob/.."),
    ]
    .into_iter()
    .enumerate()
    {
        let rt =
            ProcessRuntime::open(&data, StatusSink::new(), Duration::from_secs(1), false).unwrap();
        let session = format!("old-{i}");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let st = ProcState {
            session: session.clone(),
            user: "..".into(),
            pid,
            spawn_tag: String::new(),
            start_time: proc_stat(pid).unwrap().1,
            port: 20000,
            hibernated: false,
            home,
            persistent_home: true,
            cpu_millis: 0,
            memory_bytes: 0,
        };
        rt.layout.save(&st).unwrap();
        drop(rt);
        let rt =
            ProcessRuntime::open(&data, StatusSink::new(), Duration::from_secs(1), false).unwrap();
        assert_eq!(rt.inventory().await.unwrap().len(), 1, "re-adopted");
        rt.stop(&session, true).await.unwrap();
        let _ = child.wait();
        for f in &keep {
            assert!(f.exists(), "{} was deleted", f.display());
        }
    }
}

/// Ports: a re-adopted session's port is not handed to a new session.
#[tokio::test]
async fn an_adopted_port_is_not_handed_out_again() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path();
    let range: PortRange = "24000-24001".parse().unwrap();
    let rt = ProcessRuntime::open_with_ports(
        data,
        StatusSink::new(),
        Duration::from_secs(1),
        false,
        PortAllocator::new(range),
    )
    .unwrap()
    .with_start_wait(Duration::ZERO);
    let start = pb::StartSession {
        user: "alice".into(),
        template: "t".into(),
        workload: Some(pb::WorkloadSpec {
            command: vec!["sleep".into(), "60".into()],
            ..Default::default()
        }),
    };
    rt.start("a", &start).await.unwrap();
    let port_a = rt.procs.lock().await["a"].state.port;
    drop(rt);
    let rt = ProcessRuntime::open_with_ports(
        data,
        StatusSink::new(),
        Duration::from_secs(1),
        false,
        PortAllocator::new(range),
    )
    .unwrap()
    .with_start_wait(Duration::ZERO);
    rt.start("b", &start).await.unwrap();
    let port_b = rt.procs.lock().await["b"].state.port;
    assert_ne!(port_a, port_b);
    let e = rt.start("c", &start).await.unwrap_err();
    assert!(
        e.message.contains("no free port in 24000-24001"),
        "{}",
        e.message
    );
    assert!(e.retryable);
    rt.stop("a", false).await.unwrap();
    rt.start("c", &start).await.unwrap();
    assert_eq!(
        rt.procs.lock().await["c"].state.port,
        port_a,
        "released at stop"
    );
    for s in ["b", "c"] {
        rt.stop(s, false).await.unwrap();
    }
}
