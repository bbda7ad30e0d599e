//! Bad input at every edge gets a clear status naming the field and the rule;
//! nothing is written; the server keeps serving.

use std::collections::HashMap;

use streamspace::v1 as pb;
use streamspace_tests::*;
use tokio::io::AsyncWriteExt;
use tonic::Code;

fn create(name: &str, template: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        name: name.into(),
        template: template.into(),
        ..Default::default()
    }
}

fn res(req_cpu: &str, req_mem: &str, lim_cpu: &str, lim_mem: &str) -> Option<pb::Resources> {
    Some(pb::Resources {
        requests: Some(pb::ResourceList {
            cpu: req_cpu.into(),
            memory: req_mem.into(),
        }),
        limits: Some(pb::ResourceList {
            cpu: lim_cpu.into(),
            memory: lim_mem.into(),
        }),
    })
}

fn template(f: impl FnOnce(&mut pb::Template)) -> pb::PutTemplateRequest {
    let mut t = pb::Template {
        name: "t1".into(),
        command: vec!["true".into()],
        ports: vec![pb::PortSpec {
            name: "http".into(),
            container_port: 8080,
        }],
        streaming_port: "http".into(),
        ..Default::default()
    };
    f(&mut t);
    pb::PutTemplateRequest { template: Some(t) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rejects_bad_input_naming_the_field() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let templates_before = api
        .templates
        .list_templates(pb::ListTemplatesRequest {})
        .await
        .unwrap()
        .into_inner()
        .templates;

    let mut cases: Vec<(&str, pb::CreateSessionRequest, Code, &str)> = vec![
        (
            "empty name",
            create("", "static-files"),
            Code::InvalidArgument,
            "name: is required",
        ),
        (
            "upper-case name",
            create("Alice_Files", "static-files"),
            Code::InvalidArgument,
            "name: must be a DNS-1123 label",
        ),
        (
            "name too long",
            create(&"a".repeat(54), "static-files"),
            Code::InvalidArgument,
            "name: must be at most 53",
        ),
        (
            "name ends with dash",
            create("files-", "static-files"),
            Code::InvalidArgument,
            "name: must be a DNS-1123",
        ),
        (
            "empty template",
            create("s1", ""),
            Code::InvalidArgument,
            "template: is required",
        ),
        (
            "unknown template",
            create("s1", "no-such-template"),
            Code::InvalidArgument,
            "template: no template named",
        ),
        (
            "oversized template name",
            create("s1", &"t".repeat(100)),
            Code::InvalidArgument,
            "template: must be at most 63",
        ),
    ];
    let mut more = |what, f: &dyn Fn(&mut pb::CreateSessionRequest), field| {
        let mut r = create("s1", "static-files");
        f(&mut r);
        cases.push((what, r, Code::InvalidArgument, field));
    };
    more(
        "negative cpu",
        &|r| r.resources = res("-1", "", "", ""),
        "resources.requests.cpu: \"-1\" is negative",
    );
    more(
        "malformed memory",
        &|r| r.resources = res("", "", "", "lots"),
        "resources.limits.memory: \"lots\" is not a quantity",
    );
    more(
        "malformed cpu unit",
        &|r| r.resources = res("2 cores", "", "", ""),
        "resources.requests.cpu",
    );
    more(
        "limit below request",
        &|r| r.resources = res("2", "", "1", ""),
        "resources.limits.cpu: must be >= requests.cpu",
    );
    more(
        "request above the template's default limit",
        &|r| r.resources = res("7", "", "", ""),
        "resources.requests.cpu: must be <= the template's default limits.cpu (1), got 7",
    );
    more(
        "invalid user",
        &|r| r.user = "bad user!".into(),
        "user: may contain only",
    );
    more(
        "oversized selector",
        &|r| {
            r.selector = Some(pb::AgentSelector {
                platform: "p".repeat(100),
                region: "".into(),
            })
        },
        "selector.platform: must be at most 63",
    );
    more(
        "negative timeout",
        &|r| {
            r.timeouts = Some(pb::Timeouts {
                idle_timeout: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                max_session_duration: None,
            })
        },
        "timeouts.idle_timeout: must not be negative",
    );
    more(
        "timeout too long",
        &|r| {
            r.timeouts = Some(pb::Timeouts {
                idle_timeout: None,
                max_session_duration: Some(prost_types::Duration {
                    seconds: 100 * 86400,
                    nanos: 0,
                }),
            })
        },
        "timeouts.max_session_duration: must be at most 30 days",
    );
    more(
        "terminated on create",
        &|r| r.desired_state = pb::DesiredState::Terminated as i32,
        "desired_state: must be RUNNING or HIBERNATED",
    );
    more(
        "unknown enum value",
        &|r| r.desired_state = 42,
        "desired_state: unknown desired state value 42",
    );

    for (what, req, code, want) in cases {
        let e = api.sessions.create_session(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(want),
            "{what}: message {:?} should contain {want:?}",
            e.message()
        );
    }

    // Other calls.
    let e = api
        .sessions
        .get_session(pb::GetSessionRequest { name: "".into() })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("name"),
        "{e:?}"
    );
    let e = api
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("page_token"),
        "{e:?}"
    );
    let e = api
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            phase: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("phase"),
        "{e:?}"
    );
    let e = api
        .sessions
        .hibernate_session(pb::HibernateSessionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let bad_templates: Vec<(&str, pb::PutTemplateRequest, &str)> = vec![
        (
            "missing template",
            pb::PutTemplateRequest { template: None },
            "template: is required",
        ),
        (
            "template bad name",
            template(|t| t.name = "Bad Name".into()),
            "template.name: must be a DNS-1123",
        ),
        (
            "template no image or command",
            template(|t| t.command.clear()),
            "template.image: an image",
        ),
        (
            "template env name",
            template(|t| {
                t.env = HashMap::from([("1BAD".to_string(), "x".to_string())]);
            }),
            "template.env",
        ),
        (
            "template streaming port",
            template(|t| t.streaming_port = "vnc".into()),
            "template.streaming_port: must name one of",
        ),
        (
            "template port zero",
            template(|t| t.ports[0].container_port = 0),
            "template.ports[0].container_port: must be 1-65535",
        ),
        (
            "template home size",
            template(|t| t.home_size = "big".into()),
            "template.home_size",
        ),
        (
            "template resources",
            template(|t| t.default_resources = res("1", "1Gi", "500m", "")),
            "template.default_resources.limits.cpu",
        ),
    ];
    for (what, req, want) in bad_templates {
        let e = api.templates.put_template(req).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains(want),
            "{what}: message {:?} should contain {want:?}",
            e.message()
        );
    }

    // A message over the size limit is refused by the server as a whole,
    // with the code gRPC clients expect for it.
    let e = api
        .sessions
        .create_session(create(&"x".repeat(2 << 20), "static-files"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Nothing was written.
    let all = api
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        all.sessions.is_empty(),
        "no session may be left behind: {:?}",
        all.sessions
    );
    let templates_after = api
        .templates
        .list_templates(pb::ListTemplatesRequest {})
        .await
        .unwrap()
        .into_inner()
        .templates;
    assert_eq!(templates_before, templates_after);
    // And the server keeps serving.
    api.create("fine", "static-files")
        .await
        .expect("a good request still works");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_port_rejects_bad_frames() {
    init();
    let pki = TestPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let db = database_url(tmp.path()).await;
    let cp = start_cp(&pki, &db, &CpOptions::default()).await;
    let pem = pki.agent_pem("agent-x");
    let heartbeat = pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Heartbeat(pb::Heartbeat {
            sequence: 1,
            in_use: None,
            active_sessions: vec![],
        })),
    };
    let mut bad_version = raw::hello("agent-x");
    if let Some(pb::agent_frame::Frame::Hello(h)) = &mut bad_version.frame {
        h.protocol_version = 0;
    }
    let mut bad_inventory = raw::hello("agent-x");
    if let Some(pb::agent_frame::Frame::Hello(h)) = &mut bad_inventory.frame {
        h.inventory.push(pb::SessionStatus {
            session_id: "NOT A NAME".into(),
            phase: pb::SessionPhase::Running as i32,
            ..Default::default()
        });
    }
    let mut future_only = raw::hello("agent-x");
    if let Some(pb::agent_frame::Frame::Hello(h)) = &mut future_only.frame {
        h.protocol_version = 7;
        h.supported_protocol_versions = vec![6, 7];
    }
    let mut long_platform = raw::hello("agent-x");
    if let Some(pb::agent_frame::Frame::Hello(h)) = &mut long_platform.frame {
        h.platform = "p".repeat(500);
    }
    let cases: Vec<(&str, Vec<pb::AgentFrame>, Code, &str)> = vec![
        (
            "heartbeat before hello",
            vec![heartbeat.clone()],
            Code::InvalidArgument,
            "frame: the first frame must be hello, got heartbeat",
        ),
        (
            "empty frame",
            vec![pb::AgentFrame { frame: None }],
            Code::InvalidArgument,
            "frame: is required",
        ),
        (
            "wrong protocol version",
            vec![bad_version],
            Code::FailedPrecondition,
            "hello.protocol_version",
        ),
        (
            "future-only protocol versions",
            vec![future_only],
            Code::FailedPrecondition,
            "no version in common; this control plane speaks 1 (PROTOCOL_VERSION_1), the agent offers [6, 7]",
        ),
        (
            "invalid inventory",
            vec![bad_inventory],
            Code::InvalidArgument,
            "hello.inventory[0].session_id",
        ),
        (
            "oversized platform",
            vec![long_platform],
            Code::InvalidArgument,
            "hello.platform: must be at most 63",
        ),
    ];
    for (what, frames, code, want) in cases {
        let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
            .await
            .unwrap();
        let e = raw::attach(&mut c, frames)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(want),
            "{what}: {:?} should contain {want:?}",
            e.message()
        );
    }

    // A newer agent that also speaks this control plane's version is
    // welcomed with it; one that predates the version list (raw::hello sends
    // only protocol_version) too.
    for (what, newest, also) in [("newer agent", 7, vec![1, 7]), ("older agent", 1, vec![])] {
        let mut hello = raw::hello("agent-x");
        if let Some(pb::agent_frame::Frame::Hello(h)) = &mut hello.frame {
            h.protocol_version = newest;
            h.supported_protocol_versions = also;
        }
        let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
            .await
            .unwrap();
        let s = raw::attach(&mut c, vec![hello])
            .await
            .unwrap_or_else(|e| panic!("{what}: refused: {e:?}"));
        assert_eq!(
            s.welcome.protocol_version,
            pb::ProtocolVersion::ProtocolVersion1 as i32,
            "{what}"
        );
        drop(s);
        let roster = cp.lifecycle.roster().clone();
        wait_for("the stream to be removed", 10, || {
            let r = roster.clone();
            async move { r.get("agent-x").is_none().then_some(()) }
        })
        .await;
    }

    // After Hello: a result for a command that was never sent, and a second Hello.
    for (what, frame, want) in [
        (
            "result for unknown command",
            pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Result(pb::CommandResult {
                    command_id: "no-such-command".into(),
                    outcome: Some(pb::command_result::Outcome::Succeeded(
                        pb::CommandSucceeded {},
                    )),
                })),
            },
            "command_id: no command \"no-such-command\"",
        ),
        (
            "second hello",
            raw::hello("agent-x"),
            "frame: hello may be sent only once",
        ),
        (
            "status for an invalid session",
            pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Status(pb::SessionStatus {
                    session_id: "".into(),
                    ..Default::default()
                })),
            },
            "status.session_id: is required",
        ),
    ] {
        let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
            .await
            .unwrap();
        let mut s = raw::attach(&mut c, vec![raw::hello("agent-x")])
            .await
            .expect("hello accepted");
        s.tx.send(frame).await.unwrap();
        let end = raw::end_status(&mut s.rx).await;
        assert_eq!(end.code(), Code::InvalidArgument, "{what}: {end:?}");
        assert!(
            end.message().contains(want),
            "{what}: {:?} should contain {want:?}",
            end.message()
        );
        drop(s);
        let roster = cp.lifecycle.roster().clone();
        wait_for("the stream to be removed", 10, || {
            let r = roster.clone();
            async move { r.get("agent-x").is_none().then_some(()) }
        })
        .await;
    }

    // Garbage bytes on the agent port: the handshake fails, the server goes on.
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 4096][..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(cp.agent_addr).await.unwrap();
        let _ = s.write_all(garbage).await;
        drop(s);
    }
    let mut c = raw::connect(&pki.ca.cert, cp.agent_addr, Some(&pem))
        .await
        .unwrap();
    raw::attach(&mut c, vec![raw::hello("agent-x")])
        .await
        .expect("still serving after garbage");

    // Nothing was written by the refused streams.
    let mut api = Api::connect(&pki, cp.api_addr, ADMIN_TOKEN).await;
    let sessions = api
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(sessions.sessions.is_empty());
    cp.shutdown().await;
}
