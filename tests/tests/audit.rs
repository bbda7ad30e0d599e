//! The audit log of a real control-plane process (`--audit-log`): a scripted
//! run of writes, a refused write and many reads leaves exactly one line per
//! write with its method, target and outcome, none for reads, and no token.

use streamspace::v1 as pb;
use streamspace_tests::procs::CpProc;
use streamspace_tests::{ADMIN_TOKEN, ALICE_TOKEN, Api, BOB_TOKEN, TestPki};

const S: &str = "/streamspace.v1.SessionService/";
const T: &str = "/streamspace.v1.TemplateService/";
const A: &str = "/streamspace.v1.AgentAdminService/";

fn with_ids<T>(msg: T, request_id: &str, traceparent: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    r.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_write_none_for_reads_and_no_tokens() {
    streamspace_tests::init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = streamspace_tests::database_url(tmp.path()).await;
    let path = tmp.path().join("audit.log");
    let flag = format!("--audit-log={}", path.display());
    let cp = CpProc::spawn_with(&pki, &db, &tmp.path().join("cp"), 500, &[&flag]);
    cp.ready().await;
    let mut admin = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let mut alice = Api::connect(&pki, cp.api_addr, ALICE_TOKEN).await;
    let mut bob = Api::connect(&pki, cp.api_addr, BOB_TOKEN).await;

    let dev = streamspace_control_plane::dev::dev_templates();
    let mut t = streamspace_control_plane::grpc::convert::template_pb(&dev[0]);
    let name = t.name.clone();
    admin
        .templates
        .put_template(pb::PutTemplateRequest {
            template: Some(t.clone()),
        })
        .await
        .unwrap();
    for s in ["s1", "s2", "s3"] {
        alice.create(s, &name).await.unwrap();
    }
    let bad = alice.create("Bad_Name", &name).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    alice
        .sessions
        .hibernate_session(with_ids(
            pb::HibernateSessionRequest { name: "s1".into() },
            "req-hibernate-1",
            tp,
        ))
        .await
        .unwrap();
    alice
        .sessions
        .wake_session(pb::WakeSessionRequest { name: "s1".into() })
        .await
        .unwrap();
    let nf = bob
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "s2".into(),
            delete_home: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        nf.code(),
        tonic::Code::NotFound,
        "bob may not see alice's session"
    );
    alice
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: "s2".into(),
            delete_home: false,
        })
        .await
        .unwrap();
    t.name = "scratch".into();
    admin
        .templates
        .put_template(pb::PutTemplateRequest { template: Some(t) })
        .await
        .unwrap();
    admin
        .templates
        .delete_template(pb::DeleteTemplateRequest {
            name: "scratch".into(),
        })
        .await
        .unwrap();
    let drain = admin
        .admin
        .drain_agent(pb::DrainAgentRequest {
            id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(drain.code(), tonic::Code::FailedPrecondition);

    // Reads: none of these writes a line.
    for _ in 0..5 {
        alice.get("s1").await.unwrap();
        alice
            .sessions
            .list_sessions(pb::ListSessionsRequest::default())
            .await
            .unwrap();
        alice
            .templates
            .list_templates(pb::ListTemplatesRequest {})
            .await
            .unwrap();
        alice
            .templates
            .get_template(pb::GetTemplateRequest { name: name.clone() })
            .await
            .unwrap();
        admin
            .admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap();
        let _ = admin
            .admin
            .get_agent(pb::GetAgentRequest {
                id: "nobody".into(),
            })
            .await;
        admin
            .admin
            .list_revocations(pb::ListRevocationsRequest {})
            .await
            .unwrap();
        let w = alice
            .sessions
            .watch_sessions(pb::WatchSessionsRequest {
                send_initial: true,
                ..Default::default()
            })
            .await
            .unwrap();
        drop(w);
    }

    let text = std::fs::read_to_string(&path).expect("audit log written");
    for token in [ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN] {
        assert!(!text.contains(token), "a token is in the audit log");
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let got: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            let f = |k: &str| {
                l[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {l}"))
                    .to_string()
            };
            (f("user"), f("method"), f("target"), f("outcome"))
        })
        .collect();
    let want: Vec<(&str, String, &str, &str)> = vec![
        ("admin", format!("{T}PutTemplate"), name.as_str(), "OK"),
        ("alice", format!("{S}CreateSession"), "s1", "OK"),
        ("alice", format!("{S}CreateSession"), "s2", "OK"),
        ("alice", format!("{S}CreateSession"), "s3", "OK"),
        (
            "alice",
            format!("{S}CreateSession"),
            "Bad_Name",
            "INVALID_ARGUMENT",
        ),
        ("alice", format!("{S}HibernateSession"), "s1", "OK"),
        ("alice", format!("{S}WakeSession"), "s1", "OK"),
        ("bob", format!("{S}DeleteSession"), "s2", "NOT_FOUND"),
        ("alice", format!("{S}DeleteSession"), "s2", "OK"),
        ("admin", format!("{T}PutTemplate"), "scratch", "OK"),
        ("admin", format!("{T}DeleteTemplate"), "scratch", "OK"),
        (
            "admin",
            format!("{A}DrainAgent"),
            "nobody",
            "FAILED_PRECONDITION",
        ),
    ];
    let want: Vec<(String, String, String, String)> = want
        .into_iter()
        .map(|(u, m, t, o)| (u.into(), m, t.into(), o.into()))
        .collect();
    println!(
        "audit log: {} lines for {} writes and 40 reads",
        got.len(),
        want.len()
    );
    assert_eq!(got, want);

    let refused = &lines[4];
    assert_eq!(refused["role"], "user");
    assert!(
        refused["message"].as_str().unwrap().starts_with("name"),
        "{refused}"
    );
    let hib = &lines[5];
    assert_eq!(hib["request_id"], "req-hibernate-1");
    assert_eq!(hib["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[0]["role"], "admin");
    for l in &lines {
        let time = l["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        assert!(!l["request_id"].as_str().unwrap().is_empty(), "{l}");
    }
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), lines.len(), "generated request ids are unique");
    assert_eq!(lines[1]["trace_id"], "", "no traceparent, no trace id");
}
