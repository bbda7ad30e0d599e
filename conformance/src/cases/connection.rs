//! The stream's end: reconnects with backoff, refusals, Drain.

use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use streamspace::v1::control_frame::Frame as ToAgent;
use tonic::Status;

use crate::conn::{duration_pb, welcome};
use crate::ctx::Ctx;
use crate::error::Result;

pub async fn reconnect_backoff(c: &mut Ctx) -> Result<()> {
    let (base, cap) = (Duration::from_millis(100), Duration::from_millis(1000));
    c.launch
        .set("BACKOFF_BASE_MS", base.as_millis().to_string());
    c.launch.set("BACKOFF_MAX_MS", cap.as_millis().to_string());
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let first = conn.at;
    conn.close(Status::unavailable("conformance: stream cut"))
        .await;
    let mut cut = Instant::now();
    let mut attaches = vec![first];
    let mut gaps = Vec::new();
    // Only the first cut goes into the transcript: how many follow varies.
    let transcript = std::mem::take(&mut c.transcript);
    let result = async {
        while first.elapsed() < Duration::from_secs(8) {
            let mut conn = c.accept(cap + Duration::from_secs(5)).await.map_err(|_| {
                c.fail(format!(
                    "no reconnect within BACKOFF_MAX_MS + 5 s after cut {} (UNAVAILABLE)",
                    attaches.len()
                ))
            })?;
            gaps.push(conn.at - cut);
            attaches.push(conn.at);
            conn.hello(Duration::from_secs(10)).await?;
            conn.send(ToAgent::Welcome(welcome())).await?;
            conn.close(Status::unavailable("conformance: stream cut"))
                .await;
            cut = Instant::now();
        }
        Ok::<(), crate::error::Error>(())
    }
    .await;
    c.transcript = transcript;
    result?;
    c.note(".. every cut was followed by a reconnect");
    let late = &gaps[gaps.len().min(5)..];
    if late.len() < 3 {
        return Err(c.fail(format!(
            "only {} reconnects in 8 s: the waits are longer than BACKOFF_MAX_MS ({cap:?}) allows: {gaps:?}",
            gaps.len()
        )));
    }
    let mean = late.iter().sum::<Duration>() / late.len() as u32;
    if mean < base * 2 {
        return Err(c.fail(format!(
            "the waits do not grow: from the 6th reconnect on they average {mean:?}, less than \
             2 x BACKOFF_BASE_MS ({base:?}); waits: {gaps:?}"
        )));
    }
    let from = attaches[4];
    let storm = attaches
        .iter()
        .filter(|t| **t >= from && **t < from + Duration::from_secs(5))
        .count();
    if storm > 20 {
        return Err(c.fail(format!(
            "{storm} attaches in 5 s after the 5th: a reconnect storm (at most 20)"
        )));
    }
    Ok(())
}

pub async fn refusal_not_retried_tightly(c: &mut Ctx) -> Result<()> {
    c.launch.set("BACKOFF_BASE_MS", "250");
    c.launch.set("BACKOFF_MAX_MS", "30000");
    c.server.refuse(Some(Status::permission_denied(
        "conformance: this agent is refused (PERMISSION_DENIED)",
    )));
    c.note("-> every Attach answered with PermissionDenied");
    c.start_agent()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        if let Some(t) = c.server.attempts().first() {
            break *t;
        }
        if Instant::now() > deadline {
            return Err(c.fail("the agent never called Attach within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let window = Duration::from_secs(5);
    tokio::time::sleep_until((first + window).into()).await;
    let attempts: Vec<Duration> = c
        .server
        .attempts()
        .iter()
        .filter(|t| **t < first + window)
        .map(|t| *t - first)
        .collect();
    if attempts.len() > 4 {
        return Err(c.fail(format!(
            "{} Attach attempts within {window:?} of the first PERMISSION_DENIED (at {attempts:?}); \
             at most 4: a refusal is retried after a delay jittered up to BACKOFF_MAX_MS, not from \
             BACKOFF_BASE_MS",
            attempts.len()
        )));
    }
    c.note(".. at most 4 attempts in 5 s");
    Ok(())
}

pub async fn drain(c: &mut Ctx) -> Result<()> {
    let after = Duration::from_millis(1500);
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    conn.settle(Duration::from_millis(200)).await;
    let sent = Instant::now();
    conn.send(ToAgent::Drain(pb::Drain {
        reason: "conformance: control plane going away".into(),
        reconnect_after: Some(duration_pb(after)),
    }))
    .await?;
    // Either order is allowed: close, then attach again (break before
    // make), or attach again and close the drained stream once the new one
    // is welcomed (make before break).
    let first = tokio::select! {
        closed = conn.await_close(Duration::from_secs(5)) => Err(closed),
        next = c.accept(after + Duration::from_secs(6)) => Ok(next),
    };
    let before_break = match first {
        Err(None) => {
            return Err(
                c.fail("the agent kept the stream open 5 s after Drain without attaching again")
            );
        }
        Err(Some(_)) => None,
        Ok(next) => Some(next?),
    };
    let made_first = before_break.is_some();
    let mut next = match before_break {
        Some(next) => next,
        None => c.accept(after + Duration::from_secs(6)).await?,
    };
    let waited = next.at - sent;
    if waited < after {
        return Err(c.fail(format!(
            "attached again {waited:?} after Drain, before reconnect_after ({after:?})"
        )));
    }
    next.hello(Duration::from_secs(10)).await?;
    next.send(ToAgent::Welcome(welcome())).await?;
    if made_first && conn.await_close(Duration::from_secs(5)).await.is_none() {
        return Err(c.fail(
            "attached again, but kept the drained stream open 5 s after the new one was welcomed",
        ));
    }
    // One transcript for either order: the note comes last.
    conn.note(".. the agent ended the drained stream");
    Ok(())
}
