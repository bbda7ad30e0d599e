//! Quota objects on the real API server: one applied with kubectl holds a
//! user (RESOURCE_EXHAUSTED through the API naming `namespace/name`), a
//! Session object over it waits Pending with Ready=False reason
//! QuotaExceeded and is created once quota frees up, the CRD refuses a
//! malformed quantity, and deleting the object lifts the quota.

use streamspace::v1 as pb;
use streamspace_tests::k8s::{TestCluster, cluster, kubectl_ok};
use streamspace_tests::procs::CpProc;
use streamspace_tests::*;
use tonic::Code;

const NS: &str = "quota-objects";

const QUOTA: &str = r#"
apiVersion: stream.space/v1alpha1
kind: Quota
metadata:
  name: alice-one
  namespace: quota-objects
spec:
  user: alice
  maxSessions: 1
"#;

const SESSION: &str = r#"
apiVersion: stream.space/v1alpha1
kind: Session
metadata:
  name: alice-obj
  namespace: quota-objects
spec:
  user: alice
  template: static-files
  state: running
"#;

fn session_status(k: &TestCluster) -> Option<serde_json::Value> {
    let out =
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args(["get", "session", "alice-obj", "-n", NS, "-o", "json"])
            .output()
            .unwrap();
    out.status.success().then(|| {
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["status"].clone()
    })
}

fn has_reason(status: &serde_json::Value, reason: &str) -> bool {
    status["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["reason"] == reason))
}

async fn create(api: &mut Api, name: &str) -> Result<pb::Session, tonic::Status> {
    api.create(name, "static-files").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_objects_hold_users_and_sessions() {
    init();
    let Some(k) = cluster().await else { return };
    k.install_crds();
    // Start clean: a failed earlier run may have left objects behind.
    let _ =
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(format!("--kubeconfig={}", k.admin_kubeconfig.display()))
            .args(["delete", "namespace", NS, "--wait=true", "--timeout=60s"])
            .output();
    k.kubectl(&["create", "namespace", NS]);

    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let kubeconfig = format!("--kubeconfig={}", k.admin_kubeconfig.display());
    let cp_args = [
        "--kubernetes=true",
        kubeconfig.as_str(),
        "--watch-namespace=quota-objects",
        "--mirror-namespace=quota-objects",
    ];
    let cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &cp_args);
    cp.ready().await;
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    admin.put_dev_templates().await;
    let mut alice = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;

    // A malformed quantity never reaches the controller: the CRD refuses it.
    let bad = QUOTA.replace("  maxSessions: 1", "  cpu: lots");
    let out = streamspace_tests::procs::output_with_stdin(
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(&kubeconfig)
            .args(["apply", "-f", "-"]),
        &bad,
    );
    assert!(!out.status.success(), "a Quota with cpu: lots was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.cpu"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(QUOTA));
    create(&mut alice, "alice-api").await.unwrap();
    // The watch brings the object in force within moments.
    let refusal = wait_for("the Quota object to hold alice", 30, || {
        let mut alice = alice.clone();
        async move {
            match create(&mut alice, "alice-api-2").await {
                Err(e) if e.code() == Code::ResourceExhausted => Some(e),
                Ok(_) => {
                    // Accepted before the quota was in force: undo and retry.
                    let _ = alice
                        .sessions
                        .delete_session(pb::DeleteSessionRequest {
                            name: "alice-api-2".into(),
                            delete_home: false,
                        })
                        .await;
                    None
                }
                Err(_) => None,
            }
        }
    })
    .await;
    assert!(
        refusal.message().starts_with(
            "quota \"quota-objects/alice-one\" (user alice) exceeded: sessions limit 1, in use 1"
        ),
        "{}",
        refusal.message()
    );

    // A Session object over the quota waits, saying why...
    kubectl_ok(&k.admin_kubeconfig, &["apply", "-f", "-"], Some(SESSION));
    let status = wait_for("the Session object to wait for quota", 30, || async {
        session_status(&k).filter(|s| has_reason(s, "QuotaExceeded"))
    })
    .await;
    assert_eq!(status["phase"], "Pending", "{status}");
    assert!(admin.get("alice-obj").await.is_err(), "nothing written");
    // ...and is created once a session of alice's is deleted.
    alice
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "alice-api".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    wait_for("the Session object to be created", 60, || {
        let mut admin = admin.clone();
        async move { admin.get("alice-obj").await.ok() }
    })
    .await;
    wait_for("the QuotaExceeded condition to clear", 30, || async {
        session_status(&k).filter(|s| !has_reason(s, "QuotaExceeded"))
    })
    .await;

    // Deleting the Quota object lifts the quota.
    k.kubectl(&["delete", "quotas.stream.space", "alice-one", "-n", NS]);
    wait_for("the quota to be lifted", 30, || {
        let mut alice = alice.clone();
        async move { create(&mut alice, "alice-api-3").await.ok() }
    })
    .await;
    drop(cp);
    let _ =
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(&kubeconfig)
            .args([
                "patch",
                "session",
                "alice-obj",
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ])
            .output();
    let _ =
        std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg(&kubeconfig)
            .args(["delete", "namespace", NS, "--wait=false"])
            .output();
}
