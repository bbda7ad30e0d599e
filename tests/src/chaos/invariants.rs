//! What must hold once a crash has been recovered from, checked against the
//! ground truth a user could see: the sessions the API reports, the processes
//! alive on the machine (found by the `SESSION_ID` and `PORT` the process
//! runtime puts in their environment), and whether their URLs answer.
//!
//! One call to [`check`] looks at one moment; callers retry until every rule
//! holds at once or a deadline passes, because right after a crash some
//! sessions are legitimately on their way somewhere. A session still on its
//! way when the deadline passes breaks a rule of its own (see `settled`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use streamspace::v1 as pb;

use pb::SessionPhase as P;

use crate::Sessions;

/// A live (not zombie) process that belongs to a session of this run.
#[derive(Debug, Clone)]
pub struct LiveProcess {
    pub pid: i32,
    pub session: String,
    /// `PORT` from its environment.
    pub port: Option<u16>,
    /// State letter from /proc (R, S, T, ...).
    pub state: char,
    /// Process group: a session's processes are its leader's group.
    pub pgid: i32,
}

/// (state, process group) from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = s[s.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgid = fields.nth(1)?.parse().ok()?;
    Some((state, pgid))
}

/// Every live process whose `SESSION_ID` starts with `prefix`, read from /proc once.
pub fn live_session_processes(prefix: &str) -> Vec<LiveProcess> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut session, mut port) = (None, None);
        for kv in env.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some(v) = kv.strip_prefix("SESSION_ID=") {
                session = Some(v.to_string());
            } else if let Some(v) = kv.strip_prefix("PORT=") {
                port = v.parse().ok();
            }
        }
        let Some(session) = session.filter(|s| s.starts_with(prefix)) else {
            continue;
        };
        match stat(pid) {
            Some((state, pgid)) if state != 'Z' && state != 'X' => out.push(LiveProcess {
                pid,
                session,
                port,
                state,
                pgid,
            }),
            _ => {}
        }
    }
    out
}

/// Every session the admin can see, following page tokens.
pub async fn list_all(sessions: &mut Sessions) -> Result<Vec<pb::Session>, tonic::Status> {
    let mut all = vec![];
    let mut page_token = String::new();
    loop {
        let r = sessions
            .list_sessions(pb::ListSessionsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        all.extend(r.sessions);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = r.next_page_token;
    }
}

/// What the test did, so the check knows what must and must not exist.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    /// Sessions whose CreateSession answered OK.
    pub created: BTreeSet<String>,
    /// Sessions whose DeleteSession answered OK: must be gone.
    pub deleted: BTreeSet<String>,
    /// Sessions a DeleteSession was sent for, answered or not: may be gone.
    pub delete_sent: BTreeSet<String>,
    /// max_sessions per agent id.
    pub capacity: HashMap<String, u32>,
    /// Template whose process never exits on its own: its sessions have no
    /// reason to fail.
    pub lasting_template: String,
}

/// One broken rule, in words that say what was expected and what was found.
#[derive(Debug, Clone)]
pub enum Violation {
    Lost {
        name: String,
    },
    NotDeleted {
        name: String,
        phase: String,
    },
    NoProcess {
        name: String,
        phase: String,
        message: String,
    },
    ProcessCount {
        name: String,
        phase: String,
        workload: String,
        pids: Vec<i32>,
    },
    NotAnswering {
        name: String,
        url: String,
    },
    NotSuspended {
        name: String,
        pids: Vec<(i32, char)>,
    },
    ProcessWithoutWorkload {
        name: String,
        phase: String,
        pids: Vec<i32>,
    },
    LastingFailed {
        name: String,
        reason: String,
        message: String,
    },
    OverCapacity {
        agent: String,
        placed: usize,
        max: u32,
    },
    SharedPort {
        port: u16,
        sessions: Vec<String>,
    },
    Orphan {
        session: String,
        pids: Vec<i32>,
    },
    Unsettled {
        name: String,
        desired: String,
        phase: String,
        agent: String,
    },
}

/// At most this many characters of a message a session carries.
const MESSAGE_PREFIX: usize = 160;

fn short(s: &str) -> String {
    s.chars().take(MESSAGE_PREFIX).collect()
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { name } => write!(
                f,
                "{name}: CreateSession answered OK and it was never deleted, but the session does not exist"
            ),
            Violation::NotDeleted { name, phase } => write!(
                f,
                "{name}: DeleteSession answered OK, but the session still exists in {phase}"
            ),
            Violation::NoProcess {
                name,
                phase,
                message,
            } => write!(
                f,
                "{name}: phase {phase} needs a live process, found none (message: {:?})",
                short(message)
            ),
            Violation::ProcessCount {
                name,
                phase,
                workload,
                pids,
            } => write!(
                f,
                "{name}: phase {phase} with workload {workload:?} needs exactly that process (HIBERNATED: only its own process group), found {pids:?}"
            ),
            Violation::NotAnswering { name, url } => {
                write!(f, "{name}: RUNNING, but its URL {url} does not answer")
            }
            Violation::NotSuspended { name, pids } => write!(
                f,
                "{name}: HIBERNATED needs its processes stopped (state T), found (pid, state) {pids:?}"
            ),
            Violation::ProcessWithoutWorkload { name, phase, pids } => {
                write!(f, "{name}: phase {phase} means no process, found {pids:?}")
            }
            Violation::LastingFailed {
                name,
                reason,
                message,
            } => write!(
                f,
                "{name}: its process never exits on its own, yet it is FAILED ({reason}: {:?})",
                short(message)
            ),
            Violation::OverCapacity { agent, placed, max } => write!(
                f,
                "agent {agent}: {placed} sessions placed on it, max_sessions is {max}"
            ),
            Violation::SharedPort { port, sessions } => write!(
                f,
                "port {port}: used by live processes of more than one session: {sessions:?}"
            ),
            Violation::Unsettled {
                name,
                desired,
                phase,
                agent,
            } => write!(
                f,
                "{name}: wants {desired}, is still {phase} (agent {agent:?}): expected {desired}, FAILED, or PENDING with no agent"
            ),
            Violation::Orphan { session, pids } => write!(
                f,
                "{session}: processes {pids:?} run for a session that does not exist"
            ),
        }
    }
}

fn phase_name(s: &pb::Session) -> String {
    P::try_from(s.phase)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("SESSION_PHASE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("phase {}", s.phase))
}

fn desired_name(s: &pb::Session) -> String {
    pb::DesiredState::try_from(s.desired_state)
        .map(|d| {
            d.as_str_name()
                .trim_start_matches("DESIRED_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("desired state {}", s.desired_state))
}

/// Whether `s` has arrived where it is going: its desired phase, FAILED
/// (failures wait for the user), or waiting for an agent with none assigned.
/// Anything else (PROVISIONING, a placed PENDING, a pending hibernate, a
/// delete not yet finished) is on its way and must not stay so.
fn settled(s: &pb::Session) -> bool {
    use pb::DesiredState as D;
    let phase = P::try_from(s.phase).unwrap_or(P::Unspecified);
    let unplaced_wait = phase == P::Pending && s.agent_id.is_empty();
    match D::try_from(s.desired_state).unwrap_or(D::Unspecified) {
        D::Running => matches!(phase, P::Running | P::Failed) || unplaced_wait,
        D::Hibernated => matches!(phase, P::Hibernated | P::Failed) || unplaced_wait,
        _ => false,
    }
}

fn workload_pid(s: &pb::Session) -> Option<i32> {
    s.workload.strip_prefix("pid ")?.parse().ok()
}

fn url_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    hostport.rsplit_once(':')?.1.parse().ok()
}

/// What one look found: the sessions, and the rules they break.
pub struct Snapshot {
    pub sessions: Vec<pb::Session>,
    pub processes: Vec<LiveProcess>,
    pub violations: Vec<Violation>,
}

impl Snapshot {
    /// The sessions named in a violation, one line each, for a failure report.
    pub fn offenders(&self) -> Vec<String> {
        let named: BTreeSet<String> = self
            .violations
            .iter()
            .filter_map(|v| match v {
                Violation::Lost { name }
                | Violation::NotDeleted { name, .. }
                | Violation::NoProcess { name, .. }
                | Violation::ProcessCount { name, .. }
                | Violation::NotAnswering { name, .. }
                | Violation::NotSuspended { name, .. }
                | Violation::ProcessWithoutWorkload { name, .. }
                | Violation::LastingFailed { name, .. }
                | Violation::Unsettled { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        self.sessions
            .iter()
            .filter(|s| named.contains(&s.name))
            .map(|s| {
                format!(
                    "{} template={} desired={} phase={} agent={:?} workload={:?} url={:?} reason={} message={:?}",
                    s.name,
                    s.template,
                    s.desired_state,
                    phase_name(s),
                    s.agent_id,
                    s.workload,
                    s.url,
                    s.failure_reason,
                    short(&s.message),
                )
            })
            .collect()
    }
}

/// Looks once. Sessions and processes of other runs are ignored: only names
/// starting with `prefix` are this run's.
pub async fn check(
    sessions: &mut Sessions,
    prefix: &str,
    expect: &Expect,
) -> Result<Snapshot, tonic::Status> {
    let listed: Vec<pb::Session> = list_all(sessions)
        .await?
        .into_iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect();
    let processes = live_session_processes(prefix);
    let mut v = vec![];

    let by_name: BTreeMap<&str, &pb::Session> =
        listed.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut pids_of: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for p in &processes {
        pids_of.entry(p.session.as_str()).or_default().push(p.pid);
    }

    for name in &expect.created {
        if !by_name.contains_key(name.as_str()) && !expect.delete_sent.contains(name) {
            v.push(Violation::Lost { name: name.clone() });
        }
    }
    for name in &expect.deleted {
        if let Some(s) = by_name.get(name.as_str()) {
            v.push(Violation::NotDeleted {
                name: name.clone(),
                phase: phase_name(s),
            });
        }
    }

    let mut answering = vec![];
    for s in &listed {
        let pids = pids_of.get(s.name.as_str()).cloned().unwrap_or_default();
        let phase = P::try_from(s.phase).unwrap_or(P::Unspecified);
        match phase {
            P::Running | P::Provisioning | P::Hibernated if pids.is_empty() => {
                v.push(Violation::NoProcess {
                    name: s.name.clone(),
                    phase: phase_name(s),
                    message: s.message.clone(),
                })
            }
            P::Running => {
                if pids.len() != 1 || workload_pid(s) != Some(pids[0]) {
                    v.push(Violation::ProcessCount {
                        name: s.name.clone(),
                        phase: phase_name(s),
                        workload: s.workload.clone(),
                        pids: pids.clone(),
                    });
                } else {
                    answering.push((s.name.clone(), s.url.clone()));
                }
            }
            P::Hibernated => {
                // Suspended as a group: a start still inside a wrapper (a
                // shell that has not exec'd yet) is frozen with its children,
                // so more than one process is fine as long as all of them
                // are the session's one group, led by its pid, and stopped.
                let group: Vec<&LiveProcess> =
                    processes.iter().filter(|p| p.session == s.name).collect();
                let leader = workload_pid(s);
                if leader.is_none_or(|l| !pids.contains(&l))
                    || group.iter().any(|p| Some(p.pgid) != leader)
                {
                    v.push(Violation::ProcessCount {
                        name: s.name.clone(),
                        phase: phase_name(s),
                        workload: s.workload.clone(),
                        pids: pids.clone(),
                    });
                } else if group.iter().any(|p| p.state != 'T') {
                    v.push(Violation::NotSuspended {
                        name: s.name.clone(),
                        pids: group.iter().map(|p| (p.pid, p.state)).collect(),
                    });
                }
            }
            P::Provisioning => {}
            _ if !pids.is_empty() => v.push(Violation::ProcessWithoutWorkload {
                name: s.name.clone(),
                phase: phase_name(s),
                pids,
            }),
            _ => {}
        }
        if !settled(s) {
            v.push(Violation::Unsettled {
                name: s.name.clone(),
                desired: desired_name(s),
                phase: phase_name(s),
                agent: s.agent_id.clone(),
            });
        }
        if phase == P::Failed && s.template == expect.lasting_template {
            v.push(Violation::LastingFailed {
                name: s.name.clone(),
                reason: pb::FailureReason::try_from(s.failure_reason)
                    .map(|r| r.as_str_name().to_string())
                    .unwrap_or_default(),
                message: s.message.clone(),
            });
        }
    }
    let checks = answering.iter().map(|(name, url)| async move {
        (!crate::http_ok(url).await).then(|| Violation::NotAnswering {
            name: name.clone(),
            url: url.clone(),
        })
    });
    v.extend(
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten(),
    );

    let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
    for s in listed.iter().filter(|s| !s.agent_id.is_empty()) {
        *placed.entry(s.agent_id.as_str()).or_default() += 1;
    }
    for (agent, n) in placed {
        let max = expect.capacity.get(agent).copied().unwrap_or(0);
        if max > 0 && n > max as usize {
            v.push(Violation::OverCapacity {
                agent: agent.into(),
                placed: n,
                max,
            });
        }
    }

    let mut on_port: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for p in &processes {
        if let Some(port) = p.port {
            on_port.entry(port).or_default().insert(p.session.clone());
        }
    }
    for s in listed.iter().filter(|s| s.phase == P::Running as i32) {
        if let Some(port) = url_port(&s.url) {
            on_port.entry(port).or_default().insert(s.name.clone());
        }
    }
    for (port, users) in on_port {
        if users.len() > 1 {
            v.push(Violation::SharedPort {
                port,
                sessions: users.into_iter().collect(),
            });
        }
    }

    for (session, pids) in &pids_of {
        if !by_name.contains_key(session) {
            v.push(Violation::Orphan {
                session: session.to_string(),
                pids: pids.clone(),
            });
        }
    }

    Ok(Snapshot {
        sessions: listed,
        processes,
        violations: v,
    })
}
