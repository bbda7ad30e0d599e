//! Every name-like field, whatever it holds (dots, slashes, NUL, unicode,
//! up to 100 KiB), is either valid by its rule or refused at the edge with
//! INVALID_ARGUMENT naming the field, in a bounded message, with nothing
//! written and nothing on disk touched outside the agent's data root.
//!
//! The rules are restated here independently of the product's validators
//! (a test that asked the product what is valid could not fail). One control
//! plane and one process agent serve every generated case; the number of
//! cases is `PROPTEST_CASES` (default 24, each case calls every method).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use streamspace::v1 as pb;
use streamspace_control_plane::core::Caller;
use streamspace_control_plane::grpc::auth::Tokens;
use streamspace_control_plane::k8s::{convert, crd};
use streamspace_tests::procs::AgentProc;
use streamspace_tests::*;
use tonic::Code;

/// Longest error message any refusal may have.
const MAX_MESSAGE: usize = 512;

/// Strings that break paths, labels and messages.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("."),
        Just(".."),
        Just("/"),
        Just("\0"),
        Just("\\"),
        Just("a"),
        Just("Z"),
        Just("7"),
        Just("-"),
        Just("@"),
        Just("_"),
        Just("é"),
        Just("\u{202e}"),
        Just(" "),
        Just("%2e"),
    ];
    prop_oneof![
        // Near-valid: the alphabet of names with separators mixed in.
        "[a-zA-Z0-9._@/-]{0,70}",
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat()),
        any::<String>(),
        // Long: up to 100 KiB of one character.
        (any::<char>(), 0usize..=100 * 1024)
            .prop_map(|(c, bytes)| c.to_string().repeat(bytes / c.len_utf8())),
    ]
}

fn dns_label_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn user_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

fn short_text_ok(s: &str) -> bool {
    s.len() <= 63 && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn page_token_ok(s: &str) -> bool {
    s.is_empty()
        || s.split_once('/').is_some_and(|(ms, name)| {
            !ms.is_empty()
                && ms.len() <= 18
                && ms.bytes().all(|b| b.is_ascii_digit())
                && dns_label_ok(name, 53)
        })
}

/// Checks one answer: refused naming `field` when `valid` is false; in any
/// case a bounded message and none of the codes that would mean a crash.
fn check(
    what: &str,
    field: &str,
    valid: bool,
    r: Result<(), tonic::Status>,
) -> Result<(), TestCaseError> {
    let Err(e) = r else {
        prop_assert!(valid, "{what}: accepted an invalid {field}");
        return Ok(());
    };
    prop_assert!(
        e.message().len() <= MAX_MESSAGE,
        "{what}: {} byte message",
        e.message().len()
    );
    if valid {
        prop_assert!(
            !matches!(e.code(), Code::Internal | Code::Unknown | Code::Unavailable),
            "{what}: {e:?}"
        );
        // A valid template name may still name no template.
        let missing = field == "template" && e.message().contains("no template named");
        if e.code() == Code::InvalidArgument && !missing {
            prop_assert!(
                !e.message().starts_with(&format!("{field}:")),
                "{what}: refused a valid {field}: {}",
                e.message()
            );
        }
    } else {
        prop_assert_eq!(e.code(), Code::InvalidArgument, "{}: {:?}", what, e);
        prop_assert!(
            e.message().starts_with(&format!("{field}:")),
            "{what}: the message must name {field}: {}",
            e.message()
        );
    }
    Ok(())
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), tonic::Status> {
    r.map(|_| ())
}

/// Files that must survive whatever the cases do.
struct Sentinels(Vec<PathBuf>);

impl Sentinels {
    fn plant(tmp: &Path, agent_dir: &Path) -> Self {
        let files = vec![
            tmp.join("outside.txt"),
            agent_dir.join("sentinel.txt"),
            agent_dir.join("homes").join("alice").join("notes.txt"),
        ];
        for f in &files {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, "keep me").unwrap();
        }
        Self(files)
    }

    fn intact(&self, agent_dir: &Path) -> Result<(), TestCaseError> {
        for f in &self.0 {
            prop_assert!(f.exists(), "{} was deleted", f.display());
        }
        for sub in ["homes", "logs", "scratch", "sessions"] {
            prop_assert!(
                agent_dir.join(sub).is_dir(),
                "the agent's {sub} directory was deleted"
            );
        }
        Ok(())
    }
}

async fn counts(api: &mut Api) -> (usize, usize) {
    let sessions = api
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions
        .len();
    let templates = api
        .templates
        .list_templates(pb::ListTemplatesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .templates
        .len();
    (sessions, templates)
}

/// A create that no agent takes (its selector matches none), so invalid
/// fields are all that can stop it.
fn create(name: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        name: name.into(),
        template: "notebook-home".into(),
        user: "alice".into(),
        selector: Some(pb::AgentSelector {
            platform: "nowhere".into(),
            region: String::new(),
        }),
        ..Default::default()
    }
}

/// Every API method with `s` in each of its name-like fields.
async fn api_case(api: &mut Api, s: &str, n: usize) -> Result<(), TestCaseError> {
    let label53 = dns_label_ok(s, 53);
    let label63 = dns_label_ok(s, 63);
    let fresh = |f: &str| format!("p{n}-{f}");

    let mut to_delete = vec![];
    let mut created = |r: Result<tonic::Response<pb::Session>, tonic::Status>| {
        r.map(|s| to_delete.push(s.into_inner().name))
    };
    let r = created(api.sessions.create_session(create(s)).await);
    check("CreateSession", "name", label53, r)?;
    let mut c = create(&fresh("t"));
    c.template = s.into();
    let r = created(api.sessions.create_session(c).await);
    check("CreateSession", "template", label63, r)?;
    // A valid user reaches the agent: its home is made and deleted there.
    let mut c = create(&fresh("u"));
    c.user = s.into();
    c.selector = None;
    let r = created(api.sessions.create_session(c).await);
    check("CreateSession", "user", user_ok(s) || s.is_empty(), r)?;
    let mut c = create(&fresh("p"));
    c.selector.as_mut().unwrap().region = s.into();
    let r = created(api.sessions.create_session(c).await);
    check("CreateSession", "selector.region", short_text_ok(s), r)?;
    let mut c = create(&fresh("c"));
    c.resources = Some(pb::Resources {
        requests: Some(pb::ResourceList {
            cpu: s.into(),
            memory: String::new(),
        }),
        limits: None,
    });
    let r = created(api.sessions.create_session(c).await);
    // Quantity grammar is the product's; here only: refused ones name the field.
    if let Err(e) = &r {
        prop_assert!(e.message().len() <= MAX_MESSAGE);
        prop_assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e);
        prop_assert!(
            e.message().starts_with("resources.requests.cpu:"),
            "{}",
            e.message()
        );
    }
    for name in to_delete {
        api.sessions
            .delete_session(pb::DeleteSessionRequest {
                name,
                delete_home: true,
            })
            .await
            .unwrap();
    }

    let name = || s.to_string();
    let r = ok(api
        .sessions
        .get_session(pb::GetSessionRequest { name: name() })
        .await);
    check("GetSession", "name", label53, r)?;
    let r = ok(api
        .sessions
        .hibernate_session(pb::HibernateSessionRequest { name: name() })
        .await);
    check("HibernateSession", "name", label53, r)?;
    let r = ok(api
        .sessions
        .wake_session(pb::WakeSessionRequest { name: name() })
        .await);
    check("WakeSession", "name", label53, r)?;
    let r = ok(api
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            name: name(),
            delete_home: true,
        })
        .await);
    check("DeleteSession", "name", label53, r)?;
    let r = ok(api
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            user: name(),
            ..Default::default()
        })
        .await);
    check("ListSessions", "user", s.is_empty() || user_ok(s), r)?;
    let r = ok(api
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            page_token: name(),
            ..Default::default()
        })
        .await);
    check("ListSessions", "page_token", page_token_ok(s), r)?;
    let r = ok(api
        .sessions
        .watch_sessions(pb::WatchSessionsRequest {
            user: name(),
            ..Default::default()
        })
        .await);
    check("WatchSessions", "user", s.is_empty() || user_ok(s), r)?;

    let r = ok(api
        .templates
        .get_template(pb::GetTemplateRequest { name: name() })
        .await);
    check("GetTemplate", "name", label63, r)?;
    let r = ok(api
        .templates
        .delete_template(pb::DeleteTemplateRequest { name: name() })
        .await);
    // A valid name may be a real template: only probe invalid ones.
    if !label63 {
        check("DeleteTemplate", "name", false, r)?;
    }
    let mut t = streamspace_control_plane::grpc::convert::template_pb(
        &streamspace_control_plane::dev::dev_templates()[0],
    );
    t.name = fresh("tpl");
    t.ports[0].name = name();
    t.streaming_port = name();
    let r = ok(api
        .templates
        .put_template(pb::PutTemplateRequest { template: Some(t) })
        .await);
    check(
        "PutTemplate",
        "template.ports[0].name",
        dns_label_ok(s, 15),
        r,
    )?;
    let _ = api
        .templates
        .delete_template(pb::DeleteTemplateRequest { name: fresh("tpl") })
        .await;
    if !label63 {
        let mut t = streamspace_control_plane::grpc::convert::template_pb(
            &streamspace_control_plane::dev::dev_templates()[0],
        );
        t.name = name();
        let r = ok(api
            .templates
            .put_template(pb::PutTemplateRequest { template: Some(t) })
            .await);
        check("PutTemplate", "template.name", false, r)?;
    }

    let r = ok(api
        .admin
        .get_agent(pb::GetAgentRequest { id: name() })
        .await);
    check("GetAgent", "id", label63, r)?;
    let r = ok(api
        .admin
        .drain_agent(pb::DrainAgentRequest { id: name() })
        .await);
    if !label63 {
        check("DrainAgent", "id", false, r)?;
    }
    Ok(())
}

/// The Session object's fields reach the same validation as the API.
async fn object_case(
    lifecycle: &streamspace_control_plane::core::Lifecycle,
    s: &str,
    n: usize,
) -> Result<(), TestCaseError> {
    let admin = Caller::admin("admin");
    // (An empty user falls back to the caller here; the CRD schema refuses it.)
    for (field, valid) in [
        ("user", user_ok(s) || s.is_empty()),
        ("template", dns_label_ok(s, 63)),
    ] {
        let spec = crd::SessionSpec {
            user: if field == "user" {
                s.into()
            } else {
                "alice".into()
            },
            template: if field == "template" {
                s.into()
            } else {
                "notebook-home".into()
            },
            state: Default::default(),
            resources: None,
            persistent_home: false,
            idle_timeout: None,
            max_session_duration: None,
        };
        let obj = crd::Session::new(&format!("o{n}-{}", &field[..1]), spec);
        let mut new = convert::new_session(&obj);
        new.selector.platform = "nowhere".into();
        match lifecycle.create_session(&admin, new).await {
            Ok(created) => {
                prop_assert!(valid, "Session object: accepted {field} {s:?}");
                lifecycle
                    .set_desired(
                        &admin,
                        &created.name,
                        streamspace_control_plane::core::model::Desired::Terminated,
                        true,
                    )
                    .await
                    .unwrap();
            }
            Err(e) => {
                let m = e.to_string();
                prop_assert!(m.len() <= MAX_MESSAGE, "{} bytes", m.len());
                if !valid {
                    prop_assert!(m.starts_with(&format!("{field}:")), "{m}");
                }
            }
        }
    }
    Ok(())
}

/// The tokens file: a bad user name is refused naming its line, boundedly.
fn tokens_case(s: &str) -> Result<(), TestCaseError> {
    if s.contains(['\n', '\r', ',']) || s.trim() != s {
        // Not one field of one line: the line parser decides, not the user rule.
        return Ok(());
    }
    let text = format!("tok-0123456789abcdef,{s},user\n");
    match Tokens::parse(&text) {
        Ok(_) => prop_assert!(user_ok(s), "tokens file accepted user {s:?}"),
        Err(e) => {
            prop_assert!(!user_ok(s), "tokens file refused a valid user {s:?}: {e}");
            prop_assert!(e.len() <= MAX_MESSAGE, "{} bytes", e.len());
            prop_assert!(e.contains("line 1") && e.contains("user"), "{e}");
        }
    }
    Ok(())
}

#[test]
fn hostile_names_are_refused_at_every_edge() {
    init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let agent_dir = tmp.path().join("agent");
    let (cp, mut api, _agent) = rt.block_on(async {
        let db = database_url(tmp.path()).await;
        let cp = start_cp(&pki, &db, &CpOptions::default()).await;
        let agent = AgentProc::spawn(&pki, "names-agent", cp.agent_addr, &agent_dir);
        let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
        api.wait_agents(1, 30).await;
        // A real session with a persistent home next to the hostile ones.
        let mut c = create("alice-home");
        c.selector = None;
        api.sessions.create_session(c).await.unwrap();
        api.wait_phase("alice-home", pb::SessionPhase::Running, 60)
            .await;
        (cp, api, agent)
    });
    let sentinels = Sentinels::plant(tmp.path(), &agent_dir);
    let before = rt.block_on(counts(&mut api));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Cases share one control plane and agent: a failed case may leave
        // state behind, so shrinking would report a misleading input.
        max_shrink_iters: 0,
        ..Config::default()
    });
    // The runner takes a `Fn`: the case counter and the clients are cells.
    let n = std::cell::Cell::new(0usize);
    let api = std::cell::RefCell::new(api);
    let result = runner.run(&hostile(), |s| {
        n.set(n.get() + 1);
        tokens_case(&s)?;
        let mut api = api.borrow_mut();
        rt.block_on(async {
            api_case(&mut api, &s, n.get()).await?;
            object_case(&cp.lifecycle, &s, n.get()).await?;
            // Refused calls wrote nothing; accepted ones were undone.
            let now = wait_for("deleted sessions to go", 30, || {
                let mut api = api.clone();
                async move {
                    let c = counts(&mut api).await;
                    (c == before).then_some(c)
                }
            })
            .await;
            prop_assert_eq!(now, before);
            sentinels.intact(&agent_dir)
        })
    });
    println!("{} cases, every method and field each", n.get());
    rt.block_on(cp.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Numbers have bounds too: a CPU request of 10^20 cores used to be
/// accepted and written (memory was bounded, CPU was not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_have_upper_bounds() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let cp = start_cp(&pki, &database_url(tmp.path()).await, &CpOptions::default()).await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    for (field, cpu, memory) in [
        ("resources.requests.cpu", "99999999999999999999", ""),
        ("resources.requests.cpu", "1025", ""),
        ("resources.requests.memory", "", "17Ti"),
        ("resources.requests.memory", "", "99999999999999999999"),
    ] {
        let mut c = create("big");
        c.resources = Some(pb::Resources {
            requests: Some(pb::ResourceList {
                cpu: cpu.into(),
                memory: memory.into(),
            }),
            limits: None,
        });
        let e = api.sessions.create_session(c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message()
                .starts_with(&format!("{field}: must be at most")),
            "{e:?}"
        );
    }
    assert_eq!(counts(&mut api).await.0, 0, "nothing was written");
    cp.shutdown().await;
}
