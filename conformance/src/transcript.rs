//! The normalized frame transcript of a case: one line per frame the case
//! sent or consumed, with only the fields that matter and with what varies
//! from run to run replaced by placeholders — command ids become `<cmd-N>` in
//! order of first appearance, ports in URLs become `<port>`. Frames a case
//! does not consume are not written (heartbeats outside the heartbeat case,
//! statuses the case did not wait for), so independent frames whose order
//! legitimately varies do not make the transcript vary.

use std::collections::HashMap;

use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as FromAgent;
use streamspace::v1::command::Action;
use streamspace::v1::control_frame::Frame as ToAgent;

#[derive(Default)]
pub struct Transcript {
    lines: Vec<String>,
    ids: HashMap<String, String>,
    /// Written as `<agent-id>` (it is a flag of the kit).
    agent_id: String,
}

fn phase(p: i32) -> String {
    pb::SessionPhase::try_from(p)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("SESSION_PHASE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("phase({p})"))
}

fn reason(r: i32) -> String {
    pb::FailureReason::try_from(r)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("FAILURE_REASON_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("reason({r})"))
}

/// `http://127.0.0.1:8123/` -> `http://127.0.0.1:<port>/`.
pub fn url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{scheme}://{h}:<port>{path}")
        }
        _ => u.to_string(),
    }
}

/// One session status: phase, URL when running, reason when failed.
pub fn status(s: &pb::SessionStatus) -> String {
    let mut out = format!("{} {}", s.session_id, phase(s.phase));
    if !s.url.is_empty() {
        out += &format!(" url={}", url(&s.url));
    }
    if s.phase == pb::SessionPhase::Failed as i32 {
        out += &format!(" reason={}", reason(s.reason));
    }
    out
}

pub fn outcome(r: &pb::CommandResult) -> String {
    use pb::command_result::Outcome;
    match &r.outcome {
        Some(Outcome::Succeeded(_)) => "succeeded".into(),
        Some(Outcome::Failed(f)) => format!(
            "failed reason={} retryable={}",
            reason(f.reason),
            f.retryable
        ),
        None => "no outcome".into(),
    }
}

fn action(c: &pb::Command) -> &'static str {
    match c.action {
        Some(Action::Start(_)) => "start",
        Some(Action::Stop(_)) => "stop",
        Some(Action::Hibernate(_)) => "hibernate",
        Some(Action::Wake(_)) => "wake",
        None => "none",
    }
}

fn ms(d: &Option<prost_types::Duration>) -> String {
    d.map(|d| format!("{}ms", d.seconds * 1000 + i64::from(d.nanos) / 1_000_000))
        .unwrap_or_else(|| "unset".into())
}

impl Transcript {
    pub fn for_agent(agent_id: &str) -> Self {
        Self {
            agent_id: agent_id.to_string(),
            ..Default::default()
        }
    }

    /// The placeholder of a command id.
    pub fn id(&mut self, id: &str) -> String {
        let n = self.ids.len() + 1;
        self.ids
            .entry(id.to_string())
            .or_insert_with(|| format!("<cmd-{n}>"))
            .clone()
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    pub fn sent(&mut self, f: &ToAgent) {
        let line = match f {
            ToAgent::Welcome(w) => format!(
                "-> Welcome heartbeat_interval={} max_in_flight={} max_message_bytes={} protocol_version={}",
                ms(&w.heartbeat_interval),
                w.max_in_flight,
                w.max_message_bytes,
                w.protocol_version
            ),
            ToAgent::Command(c) => {
                format!(
                    "-> Command {} {} session={}",
                    self.id(&c.command_id),
                    action(c),
                    c.session_id
                )
            }
            ToAgent::Drain(d) => format!("-> Drain reconnect_after={}", ms(&d.reconnect_after)),
            ToAgent::HeartbeatAck(a) => format!("-> HeartbeatAck sequence={}", a.sequence),
        };
        self.lines.push(line);
    }

    pub fn received(&mut self, f: &FromAgent) {
        let line = match f {
            FromAgent::Hello(h) => {
                let mut inv: Vec<String> = h.inventory.iter().map(status).collect();
                inv.sort();
                format!(
                    "<- Hello agent_id={} platform={} protocol_version={} max_sessions={} inventory=[{}]",
                    if h.agent_id == self.agent_id {
                        "<agent-id>"
                    } else {
                        &h.agent_id
                    },
                    h.platform,
                    h.protocol_version,
                    h.capacity.map(|c| c.max_sessions).unwrap_or(0),
                    inv.join(", ")
                )
            }
            FromAgent::Heartbeat(h) => format!("<- Heartbeat sequence={}", h.sequence),
            FromAgent::Ack(a) => format!("<- Ack {}", self.id(&a.command_id)),
            FromAgent::Result(r) => format!("<- Result {} {}", self.id(&r.command_id), outcome(r)),
            FromAgent::Status(s) => format!("<- Status {}", status(s)),
        };
        self.lines.push(line);
    }

    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ids_become_placeholders() {
        assert_eq!(url("http://127.0.0.1:20417/"), "http://127.0.0.1:<port>/");
        assert_eq!(url("http://[::1]:80/x"), "http://[::1]:<port>/x");
        assert_eq!(url("http://host/"), "http://host/");
        let mut t = Transcript::default();
        assert_eq!(t.id("a"), "<cmd-1>");
        assert_eq!(t.id("b"), "<cmd-2>");
        assert_eq!(t.id("a"), "<cmd-1>");
    }
}
