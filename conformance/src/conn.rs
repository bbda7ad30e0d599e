//! One accepted agent stream, from the kit's side: sends control frames and
//! reads the agent's frames with deadlines. Every frame read is accounted for
//! (acks and results per command id in arrival order, the latest status per
//! session, heartbeats with their arrival time, frames larger than the
//! Welcome allows) whether or not the case waits for it; frames a case did
//! not wait for yet stay queued for a later wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as FromAgent;
use streamspace::v1::control_frame::Frame as ToAgent;
use tonic::{Status, Streaming};

use crate::error::{Result, broke};
use crate::server::{Attach, Outbound};
use crate::transcript::{self, Transcript};

pub enum Next {
    Frame(FromAgent),
    Timeout,
    /// The agent ended the stream (Ok(None)) or it broke (Err).
    Closed(String),
}

pub struct Conn {
    rule: &'static str,
    inbound: Streaming<pb::AgentFrame>,
    outbound: Outbound,
    log: Arc<Mutex<Transcript>>,
    pub at: Instant,
    pub peer_cert_matches: bool,
    /// Frames read but not yet consumed by a wait.
    queued: VecDeque<FromAgent>,
    /// Position of each frame read, for ordering checks.
    count: u64,
    pub acks: HashMap<String, Vec<u64>>,
    pub results: HashMap<String, Vec<(u64, pb::CommandResult)>>,
    pub latest: HashMap<String, pb::SessionStatus>,
    pub heartbeats: Vec<(Instant, u64)>,
    /// Welcome.max_message_bytes as sent, once sent.
    pub max_bytes: Option<u32>,
    /// (frame kind, encoded size) of every frame above `max_bytes`.
    pub oversized: Vec<(&'static str, usize)>,
    pub closed: Option<String>,
    /// Every frame read but heartbeats, in arrival order.
    pub seen: Vec<FromAgent>,
}

pub fn kind(f: &FromAgent) -> &'static str {
    match f {
        FromAgent::Hello(_) => "Hello",
        FromAgent::Heartbeat(_) => "Heartbeat",
        FromAgent::Ack(_) => "Ack",
        FromAgent::Result(_) => "Result",
        FromAgent::Status(_) => "Status",
    }
}

/// The kit's Welcome unless a case changes it.
pub fn welcome() -> pb::Welcome {
    pb::Welcome {
        heartbeat_interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        max_in_flight: 64,
        max_message_bytes: 4 << 20,
        protocol_version: streamspace::PROTOCOL_VERSION as i32,
        server_version: "streamspace-conformance".into(),
    }
}

pub fn duration_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl Conn {
    pub fn new(rule: &'static str, a: Attach, log: Arc<Mutex<Transcript>>) -> Self {
        Self {
            rule,
            inbound: a.inbound,
            outbound: a.outbound,
            log,
            at: a.at,
            peer_cert_matches: a.peer_cert_matches,
            queued: VecDeque::new(),
            count: 0,
            acks: HashMap::new(),
            results: HashMap::new(),
            latest: HashMap::new(),
            heartbeats: Vec::new(),
            max_bytes: None,
            oversized: Vec::new(),
            closed: None,
            seen: Vec::new(),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Transcript> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, message: impl Into<String>) -> crate::error::Error {
        broke(self.rule, message)
    }

    pub async fn send(&mut self, f: ToAgent) -> Result<()> {
        if let ToAgent::Welcome(w) = &f {
            self.max_bytes = Some(w.max_message_bytes);
        }
        self.log().sent(&f);
        self.outbound
            .send(Ok(pb::ControlFrame { frame: Some(f) }))
            .await
            .map_err(|_| self.fail("the agent's stream is gone: the kit cannot send to it"))
    }

    pub async fn command(&mut self, c: pb::Command) -> Result<()> {
        self.send(ToAgent::Command(c)).await
    }

    /// Ends the stream with `status` (as a control plane closing it).
    pub async fn close(&mut self, status: Status) {
        self.log()
            .note(format!("-> close stream with {:?}", status.code()));
        let _ = self.outbound.send(Err(status)).await;
    }

    /// The first frame, which must be Hello (within `within`).
    pub async fn hello(&mut self, within: Duration) -> Result<pb::Hello> {
        match tokio::time::timeout(within, self.inbound.message()).await {
            Err(_) => Err(self.fail(format!(
                "no first frame (Hello) within {within:?} of Attach"
            ))),
            Ok(Err(s)) => Err(self.fail(format!("the stream broke before Hello: {s}"))),
            Ok(Ok(None)) => Err(self.fail("the agent ended the stream before sending Hello")),
            Ok(Ok(Some(pb::AgentFrame { frame: None }))) => {
                Err(self.fail("the first frame is empty (no Hello)"))
            }
            Ok(Ok(Some(pb::AgentFrame {
                frame: Some(FromAgent::Hello(h)),
            }))) => {
                self.log().received(&FromAgent::Hello(h.clone()));
                Ok(h)
            }
            Ok(Ok(Some(pb::AgentFrame { frame: Some(f) }))) => {
                Err(self.fail(format!("the first frame must be Hello, got {}", kind(&f))))
            }
        }
    }

    /// Reads one frame from the wire and accounts for it.
    async fn read(&mut self, deadline: Instant) -> Next {
        if let Some(why) = &self.closed {
            return Next::Closed(why.clone());
        }
        // An empty AgentFrame carries nothing to check: skipped.
        let (size, f) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.inbound.message()).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(Some(m))) => {
                    let size = m.encoded_len();
                    match m.frame {
                        Some(f) => break (size, f),
                        None => continue,
                    }
                }
                Ok(Ok(None)) => {
                    let why = "the agent ended the stream".to_string();
                    self.closed = Some(why.clone());
                    return Next::Closed(why);
                }
                Ok(Err(s)) => {
                    let why = format!("the stream broke: {}", s.message());
                    self.closed = Some(why.clone());
                    return Next::Closed(why);
                }
            }
        };
        if let Some(max) = self.max_bytes
            && size > max as usize
        {
            self.oversized.push((kind(&f), size));
        }
        self.count += 1;
        if !matches!(f, FromAgent::Heartbeat(_)) {
            self.seen.push(f.clone());
        }
        match &f {
            FromAgent::Heartbeat(h) => self.heartbeats.push((Instant::now(), h.sequence)),
            FromAgent::Ack(a) => self
                .acks
                .entry(a.command_id.clone())
                .or_default()
                .push(self.count),
            FromAgent::Result(r) => self
                .results
                .entry(r.command_id.clone())
                .or_default()
                .push((self.count, r.clone())),
            FromAgent::Status(s) => {
                self.latest.insert(s.session_id.clone(), s.clone());
            }
            FromAgent::Hello(_) => {}
        }
        Next::Frame(f)
    }

    /// The next frame other than heartbeats and statuses (those are only
    /// accounted for), queued ones first.
    pub async fn next(&mut self, deadline: Instant) -> Next {
        if let Some(f) = self.queued.pop_front() {
            return Next::Frame(f);
        }
        loop {
            match self.read(deadline).await {
                Next::Frame(FromAgent::Heartbeat(_) | FromAgent::Status(_)) => continue,
                other => return other,
            }
        }
    }

    /// Reads (and accounts for) everything that arrives during `d`.
    pub async fn settle(&mut self, d: Duration) -> Option<String> {
        let deadline = Instant::now() + d;
        loop {
            match self.read(deadline).await {
                Next::Frame(FromAgent::Heartbeat(_) | FromAgent::Status(_)) => {}
                Next::Frame(f) => self.queued.push_back(f),
                Next::Timeout => return None,
                Next::Closed(why) => return Some(why),
            }
        }
    }

    /// Waits for the frame `want` picks, keeping the others queued in order.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut want: impl FnMut(&FromAgent) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        let mut keep = VecDeque::new();
        let found = loop {
            match self.next(deadline).await {
                Next::Frame(f) => match want(&f) {
                    Some(t) => {
                        self.log().received(&f);
                        break Ok(t);
                    }
                    None => keep.push_back(f),
                },
                Next::Timeout => break Err(self.fail(format!("no {what} within {within:?}"))),
                Next::Closed(why) => break Err(self.fail(format!("no {what}: {why}"))),
            }
        };
        keep.extend(self.queued.drain(..));
        self.queued = keep;
        found
    }

    pub async fn expect_ack(&mut self, id: &str, within: Duration) -> Result<()> {
        let tag = self.log().id(id);
        self.wait_for(&format!("Ack for {tag}"), within, |f| {
            matches!(f, FromAgent::Ack(a) if a.command_id == id).then_some(())
        })
        .await
    }

    pub async fn expect_result(&mut self, id: &str, within: Duration) -> Result<pb::CommandResult> {
        let tag = self.log().id(id);
        self.wait_for(&format!("Result for {tag}"), within, |f| match f {
            FromAgent::Result(r) if r.command_id == id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Ack, then result (the common case); returns the result.
    pub async fn ack_and_result(
        &mut self,
        id: &str,
        within: Duration,
    ) -> Result<pb::CommandResult> {
        // The ack comes at once, before the command is applied.
        self.expect_ack(id, within.min(Duration::from_secs(5)))
            .await?;
        self.expect_result(id, within).await
    }

    /// Waits until the latest status of `session` is in `phase`; records it.
    pub async fn await_phase(
        &mut self,
        session: &str,
        phase: pb::SessionPhase,
        within: Duration,
    ) -> Result<pb::SessionStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.latest.get(session)
                && s.phase == phase as i32
            {
                let s = s.clone();
                self.log().received(&FromAgent::Status(s.clone()));
                return Ok(s);
            }
            match self.read(deadline).await {
                Next::Frame(FromAgent::Heartbeat(_) | FromAgent::Status(_)) => {}
                Next::Frame(f) => self.queued.push_back(f),
                Next::Timeout | Next::Closed(_) => {
                    let last = self
                        .latest
                        .get(session)
                        .map(transcript::status)
                        .unwrap_or_else(|| "no status at all".into());
                    let why = self
                        .closed
                        .clone()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default();
                    return Err(self.fail(format!(
                        "session {session}: no status {} within {within:?}; last seen: {last}{why}",
                        phase.as_str_name()
                    )));
                }
            }
        }
    }

    /// Waits until the agent ends the stream; how long it took.
    pub async fn await_close(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Next::Frame(_) => {}
                Next::Timeout => return None,
                Next::Closed(why) => return Some(why),
            }
        }
    }

    pub fn note(&self, line: impl Into<String>) {
        self.log().note(line);
    }

    /// Whether a frame of this kind was read and is still queued.
    pub fn queued_kind(&self, k: &str) -> bool {
        self.queued.iter().any(|f| kind(f) == k)
    }
}

impl Conn {
    /// The next heartbeat (arrival time, sequence) before `deadline`; other
    /// frames are queued. None on timeout, Err when the stream ended.
    pub async fn heartbeat(&mut self, deadline: Instant) -> Result<Option<(Instant, u64)>, String> {
        loop {
            match self.read(deadline).await {
                Next::Frame(FromAgent::Heartbeat(h)) => {
                    return Ok(Some((Instant::now(), h.sequence)));
                }
                Next::Frame(FromAgent::Status(_)) => {}
                Next::Frame(f) => self.queued.push_back(f),
                Next::Timeout => return Ok(None),
                Next::Closed(why) => return Err(why),
            }
        }
    }
}
