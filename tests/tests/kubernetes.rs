//! The kubernetes runtime against a real API server (tests/k8s/cluster.sh:
//! kube-apiserver, controller manager, scheduler, KWOK fake nodes). The agent
//! runs as a real process with only its RBAC manifest's permissions (a
//! ServiceAccount token in its kubeconfig).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::{Api, ResourceExt};
use streamspace::v1 as pb;
use streamspace_agent::runtime::kube_objects::{self, ObjectConfig};
use streamspace_agent::runtime::kubernetes::KubernetesRuntime;
use streamspace_agent::runtime::{Runtime, StatusSink};
use streamspace_control_plane::server::ControlPlane;
use streamspace_tests::k8s::{TestCluster, cluster};
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;

use pb::SessionPhase as P;

struct Env {
    k: TestCluster,
    ns: String,
    pki: TestPki,
    tmp: tempfile::TempDir,
    cp: ControlPlane,
    api: Api0,
}

type Api0 = streamspace_tests::Api;

async fn env(prefix: &str) -> Option<Env> {
    init();
    let k = cluster().await?;
    let ns = k.namespace(prefix);
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let api = Api0::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    Some(Env {
        k,
        ns,
        pki,
        tmp,
        cp,
        api,
    })
}

impl Env {
    fn agent(&self, id: &str, dir: &str, extra: &[&str], env: &[(&str, &str)]) -> AgentProc {
        let mut args = self.k.agent_args(&self.ns, self.tmp.path());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProc::spawn_with(
            &self.pki,
            id,
            self.cp.agent_addr,
            &self.tmp.path().join(dir),
            &args,
            env,
        )
    }

    /// Object settings matching the agents these tests start.
    fn objects(&self) -> ObjectConfig {
        ObjectConfig {
            namespace: self.ns.clone(),
            storage_class: None,
            home_size: "1Gi".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.k.client.clone(), &self.ns)
    }

    async fn create(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut pb::CreateSessionRequest),
    ) -> pb::Session {
        let mut r = pb::CreateSessionRequest {
            name: name.into(),
            template: "firefox-browser".into(),
            user: "alice".into(),
            ..Default::default()
        };
        f(&mut r);
        self.api
            .sessions
            .create_session(r)
            .await
            .unwrap()
            .into_inner()
    }

    async fn deployment_uid(&self, name: &str) -> Option<String> {
        self.deployments()
            .get_opt(name)
            .await
            .unwrap()
            .map(|d| d.uid().unwrap())
    }

    async fn finish(self) {
        self.cp.shutdown().await;
        self.k.delete_namespace(&self.ns);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_hibernate_wake_stop_keeps_the_home() {
    let Some(mut e) = env("lifecycle").await else {
        return;
    };
    // The test cluster has no volume provisioner: offer one volume of a
    // storage class of our own, and tell the agent to use that class.
    let class = format!("ss-{}", e.ns);
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {class}\nspec:\n  capacity:\n    storage: 10Gi\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  hostPath:\n    path: /tmp/{class}\n"
    );
    streamspace_tests::k8s::kubectl_ok(&e.k.admin_kubeconfig, &["apply", "-f", "-"], Some(&pv));
    let _agent = e.agent(
        "k8s-a",
        "agent",
        &[&format!("--storage-class={class}")],
        &[],
    );
    e.create("alice-ff", |r| r.persistent_home = Some(true))
        .await;
    let s = e.api.wait_phase("alice-ff", P::Running, 60).await;
    assert_eq!(
        s.url,
        format!("http://alice-ff.{}.svc.cluster.local:5800/", e.ns)
    );
    assert!(
        s.workload.starts_with("alice-ff-"),
        "pod name: {}",
        s.workload
    );

    let d = e.deployments().get("alice-ff").await.unwrap();
    let labels = d.labels();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "streamspace");
    assert_eq!(labels["stream.space/session"], "alice-ff");
    assert_eq!(labels["stream.space/user"], "alice");
    let svc: Api<Service> = Api::namespaced(e.k.client.clone(), &e.ns);
    assert_eq!(
        svc.get("alice-ff").await.unwrap().labels()["stream.space/session"],
        "alice-ff"
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(e.k.client.clone(), &e.ns);
    let claim = pvcs.get("home-alice").await.unwrap();
    assert_eq!(claim.labels()["stream.space/user"], "alice");
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some(class.as_str())
    );

    e.api
        .sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "alice-ff".into(),
        })
        .await
        .unwrap();
    e.api.wait_phase("alice-ff", P::Hibernated, 60).await;
    assert_eq!(
        e.deployments()
            .get("alice-ff")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(0)
    );

    e.api
        .sessions
        .wake_session(pb::WakeSessionRequest {
            name: "alice-ff".into(),
        })
        .await
        .unwrap();
    e.api.wait_phase("alice-ff", P::Running, 60).await;
    assert_eq!(
        e.deployments()
            .get("alice-ff")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(1)
    );

    e.api
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "alice-ff".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    e.api.wait_gone("alice-ff", 60).await;
    assert!(e.deployments().get_opt("alice-ff").await.unwrap().is_none());
    assert!(svc.get_opt("alice-ff").await.unwrap().is_none());
    assert!(
        pvcs.get_opt("home-alice").await.unwrap().is_some(),
        "the home volume is kept"
    );
    e.k.kubectl(&["delete", "persistentvolume", &class, "--wait=false"]);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_start_twice_changes_nothing() {
    let Some(e) = env("idempotent").await else {
        return;
    };
    let (sink, _rx) = StatusSink::channel(1024);
    let cfg = e.objects();
    let rt: Arc<KubernetesRuntime> = KubernetesRuntime::start(e.k.client.clone(), cfg, sink)
        .await
        .unwrap();
    let t = streamspace_control_plane::dev::dev_templates()
        .into_iter()
        .find(|t| t.name == "firefox-browser")
        .unwrap();
    let w = streamspace_control_plane::grpc::convert::template_pb(&t);
    let start = pb::StartSession {
        user: "bob".into(),
        template: t.name.clone(),
        workload: Some(pb::WorkloadSpec {
            image: w.image,
            ports: w.ports,
            streaming_port: w.streaming_port,
            resources: w.default_resources,
            persistent_home: true,
            run_as_root: true,
            ..Default::default()
        }),
    };
    rt.start("twice", &start).await.unwrap();
    let first = e.deployments().get("twice").await.unwrap();
    rt.start("twice", &start)
        .await
        .expect("the same start again succeeds");
    let second = e.deployments().get("twice").await.unwrap();
    // The deployment controller keeps writing .status; the spec is ours.
    assert_eq!(first.uid(), second.uid(), "not re-created");
    assert_eq!(
        first.metadata.generation, second.metadata.generation,
        "the spec did not change"
    );
    assert_eq!(first.spec, second.spec);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_session_fails_with_the_cause_and_does_not_delay_others() {
    let Some(mut e) = env("sched").await else {
        return;
    };
    // The agent declares far more CPU than the cluster's nodes have, so
    // the control plane places the session and Kubernetes is what refuses it.
    let _agent = e.agent(
        "k8s-b",
        "agent",
        &["--max-sessions=100", "--max-cpu=10000"],
        &[],
    );
    e.create("too-big", |r| {
        r.resources = Some(pb::Resources {
            requests: Some(pb::ResourceList {
                cpu: "100".into(),
                memory: "1Gi".into(),
            }),
            limits: Some(pb::ResourceList {
                cpu: "100".into(),
                memory: "1Gi".into(),
            }),
        })
    })
    .await;
    // 20 sessions at once, while the stuck one is pending.
    let names: Vec<String> = (0..20).map(|i| format!("many-{i}")).collect();
    for n in &names {
        e.create(n, |r| {
            r.resources = Some(pb::Resources {
                requests: Some(pb::ResourceList {
                    cpu: "10m".into(),
                    memory: "16Mi".into(),
                }),
                limits: None,
            })
        })
        .await;
    }
    for n in &names {
        e.api.wait_phase(n, P::Running, 120).await;
    }
    let failed = e.api.wait_phase("too-big", P::Failed, 60).await;
    assert_eq!(
        failed.failure_reason,
        pb::FailureReason::Unschedulable as i32,
        "{failed:?}"
    );
    assert!(
        failed.message.contains("Insufficient cpu"),
        "the reason names the cause: {}",
        failed.message
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_knows_what_it_runs_and_repairs_drift() {
    let Some(mut e) = env("restart").await else {
        return;
    };
    let mut agent = e.agent("k8s-c", "agent", &[], &[]);
    let names: Vec<String> = (0..10).map(|i| format!("r-{i}")).collect();
    for n in &names {
        e.create(n, |_| {}).await;
    }
    for n in &names {
        e.api.wait_phase(n, P::Running, 90).await;
    }
    let mut uids = vec![];
    for n in &names {
        uids.push(e.deployment_uid(n).await.unwrap());
    }
    agent.kill9();
    // What the restarted agent's Hello will carry: the inventory read from the cluster.
    let (sink, _rx) = StatusSink::channel(1024);
    let cfg = e.objects();
    let probe = KubernetesRuntime::start(e.k.client.clone(), cfg, sink)
        .await
        .unwrap();
    let inv = probe.inventory().await.unwrap();
    let mut listed: Vec<&str> = inv.iter().map(|s| s.session_id.as_str()).collect();
    listed.sort();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(listed, want, "inventory lists all 10");
    assert!(inv.iter().all(|s| s.phase == P::Running as i32));
    drop(probe);

    agent.start();
    let roster = e.cp.lifecycle.roster().clone();
    wait_for("the agent to re-attach", 30, || {
        let r = roster.clone();
        async move { r.get("k8s-c").map(|_| ()) }
    })
    .await;
    // A Deployment deleted by hand is re-created...
    e.deployments()
        .delete("r-0", &Default::default())
        .await
        .unwrap();
    let old = uids[0].clone();
    let deployments = e.deployments();
    wait_for("r-0 to be re-created", 60, || {
        let (d, old) = (deployments.clone(), old.clone());
        async move {
            d.get_opt("r-0")
                .await
                .ok()
                .flatten()
                .filter(|d| d.uid().unwrap() != old && d.metadata.deletion_timestamp.is_none())
                .map(|_| ())
        }
    })
    .await;
    e.api.wait_phase("r-0", P::Running, 60).await;
    // ...and nothing else was re-created.
    for (n, uid) in names.iter().zip(&uids).skip(1) {
        assert_eq!(
            e.deployment_uid(n).await.as_ref(),
            Some(uid),
            "{n} must not be re-created"
        );
        assert_eq!(e.api.get(n).await.unwrap().phase, P::Running as i32);
    }
    // An object of a session the control plane does not know is removed.
    let ghost = pb::StartSession {
        user: "nobody".into(),
        template: "ghost".into(),
        workload: Some(pb::WorkloadSpec {
            image: "busybox".into(),
            run_as_root: true,
            ..Default::default()
        }),
    };
    let cfg = e.objects();
    let dep = kube_objects::deployment("ghost", &ghost, 1, &cfg);
    e.deployments()
        .create(&Default::default(), &dep)
        .await
        .unwrap();
    let deployments = e.deployments();
    wait_for("the unknown session's Deployment to be removed", 60, || {
        let d = deployments.clone();
        async move {
            d.get_opt("ghost")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await;
    e.finish().await;
}
