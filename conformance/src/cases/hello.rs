//! The opening of a stream: Hello and Welcome, then heartbeats.

use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use streamspace::v1::control_frame::Frame as ToAgent;

use crate::conn::{duration_pb, welcome};
use crate::ctx::{Ctx, MAX_SESSIONS};
use crate::error::Result;
use crate::transcript;

pub async fn hello_welcome(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let mut conn = c.accept(Duration::from_secs(15)).await?;
    let hello = conn.hello(Duration::from_secs(10)).await?;
    if !conn.peer_cert_matches {
        return Err(c.fail(
            "the client certificate is not the one the kit made for the agent (AGENT_TLS_CERT)",
        ));
    }
    if hello.agent_id != c.agent_id {
        return Err(c.fail(format!(
            "Hello.agent_id is {:?}, the client certificate names {:?}",
            hello.agent_id, c.agent_id
        )));
    }
    let v1 = pb::ProtocolVersion::ProtocolVersion1 as i32;
    if hello.protocol_version != v1 && !hello.supported_protocol_versions.contains(&v1) {
        return Err(c.fail(format!(
            "Hello offers no PROTOCOL_VERSION_1: protocol_version {}, supported_protocol_versions {:?}",
            hello.protocol_version, hello.supported_protocol_versions
        )));
    }
    if hello.platform != "process" {
        return Err(c.fail(format!(
            "Hello.platform is {:?}, PLATFORM is \"process\"",
            hello.platform
        )));
    }
    let max = hello.capacity.map(|c| c.max_sessions).unwrap_or(0);
    if max != MAX_SESSIONS {
        return Err(c.fail(format!(
            "Hello.capacity.max_sessions is {max}, MAX_SESSIONS is {MAX_SESSIONS}"
        )));
    }
    if !hello.inventory.is_empty() {
        let listed: Vec<String> = hello.inventory.iter().map(transcript::status).collect();
        return Err(c.fail(format!(
            "Hello.inventory lists {} session(s) on a fresh AGENT_DATA_DIR: {}",
            listed.len(),
            listed.join(", ")
        )));
    }
    conn.send(ToAgent::Welcome(welcome())).await?;
    if let Some(why) = conn.settle(Duration::from_millis(1500)).await {
        return Err(c.fail(format!("the stream ended within 1.5 s of Welcome: {why}")));
    }
    if conn.queued_kind("Hello") {
        return Err(c.fail("a second Hello on the same stream"));
    }
    Ok(())
}

pub async fn heartbeat_interval(c: &mut Ctx) -> Result<()> {
    let interval = Duration::from_millis(300);
    c.start_agent()?;
    let mut w = welcome();
    w.heartbeat_interval = Some(duration_pb(interval));
    let (mut conn, _) = c.attach(w).await?;
    let welcomed = Instant::now();
    let mut beats: Vec<(Instant, u64)> = Vec::new();
    while beats.len() < 6 {
        let (prev, limit, what) = match beats.last() {
            None => (
                welcomed,
                interval + Duration::from_millis(200),
                "of Welcome (one interval + 200 ms of slack)",
            ),
            Some((t, _)) => (*t, interval * 3, "of the previous one (3 intervals)"),
        };
        match conn.heartbeat(prev + limit).await {
            Ok(Some(b)) => beats.push(b),
            Ok(None) => {
                return Err(c.fail(format!(
                    "no Heartbeat within {limit:?} {what}; Welcome.heartbeat_interval is {interval:?} \
                     ({} heartbeat(s) before)",
                    beats.len()
                )));
            }
            Err(why) => return Err(c.fail(format!("no Heartbeat: {why}"))),
        }
    }
    let seqs: Vec<u64> = beats.iter().map(|b| b.1).collect();
    if seqs != [1, 2, 3, 4, 5, 6] {
        return Err(c.fail(format!(
            "Heartbeat.sequence must be 1, 2, 3... on a new stream, got {seqs:?}"
        )));
    }
    let span = beats[5].0 - beats[0].0;
    if span < interval * 5 / 2 {
        return Err(c.fail(format!(
            "6 heartbeats in {span:?}: more often than every half interval ({interval:?})"
        )));
    }
    for s in &seqs[..5] {
        conn.note(format!("<- Heartbeat sequence={s}"));
    }
    Ok(())
}

pub async fn welcome_version(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let mut w = welcome();
    w.protocol_version = 99;
    let (mut conn, _) = c.attach(w).await?;
    match conn.await_close(Duration::from_secs(5)).await {
        None => Err(c.fail(
            "the agent kept the stream open 5 s after a Welcome with protocol_version 99, \
             which it does not speak",
        )),
        Some(_) if !conn.acks.is_empty() || !conn.results.is_empty() || !conn.latest.is_empty() => {
            Err(c
                .fail("the agent sent acks, results or statuses on a stream of an unknown version"))
        }
        Some(_) => {
            conn.note(".. the agent ended the stream");
            Ok(())
        }
    }
}
