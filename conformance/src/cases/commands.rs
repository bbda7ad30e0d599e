//! Commands: acks, results, idempotence, de-duplication, the in-flight and
//! frame-size limits of Welcome.

use std::collections::HashSet;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace::v1::command::Action;
use streamspace::v1::command_result::Outcome;

use crate::conn::{Conn, welcome};
use crate::ctx::{self, Ctx};
use crate::error::Result;
use crate::transcript;

/// How long a command may take, as the kit waits for it.
const T: Duration = Duration::from_secs(30);
use pb::SessionPhase as P;

fn succeeded(c: &Ctx, what: &str, r: &pb::CommandResult) -> Result<()> {
    match r.outcome {
        Some(Outcome::Succeeded(_)) => Ok(()),
        _ => Err(c.fail(format!(
            "{what} must succeed, got {}",
            transcript::outcome(r)
        ))),
    }
}

/// Sends `cmd`, waits for its ack and result, and requires success.
pub async fn run_ok(c: &Ctx, conn: &mut Conn, cmd: pb::Command, what: &str) -> Result<()> {
    let id = cmd.command_id.clone();
    conn.command(cmd).await?;
    let r = conn.ack_and_result(&id, T).await?;
    succeeded(c, what, &r)
}

/// Starts `session` and waits until it is RUNNING; its URL.
pub async fn start_running(c: &Ctx, conn: &mut Conn, session: &str) -> Result<String> {
    run_ok(
        c,
        conn,
        c.start(session),
        &format!("the start of {session}"),
    )
    .await?;
    Ok(conn.await_phase(session, P::Running, T).await?.url)
}

/// Checks acks of `id`: `n` of them, the first before the first result.
fn check_acks(c: &Ctx, conn: &Conn, id: &str, n: usize) -> Result<()> {
    let acks = conn.acks.get(id).cloned().unwrap_or_default();
    let results = conn.results.get(id).cloned().unwrap_or_default();
    let id = c.tag(id);
    if acks.len() != n {
        return Err(c.fail(format!(
            "{} CommandAck(s) for {n} delivery(ies) of command {id}: exactly one per delivery",
            acks.len()
        )));
    }
    for (i, (a, (r, _))) in acks.iter().zip(&results).enumerate() {
        if r < a {
            return Err(c.fail(format!(
                "delivery {} of command {id}: the CommandResult came before the CommandAck",
                i + 1
            )));
        }
    }
    Ok(())
}

pub async fn ack_then_result(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-ack";
    let start = c.start(s);
    let id = start.command_id.clone();
    conn.command(start).await?;
    conn.ack_and_result(&id, T).await?;
    conn.settle(Duration::from_millis(500)).await;
    check_acks(c, &conn, &id, 1)?;
    let stop = ctx::stop(s);
    let id = stop.command_id.clone();
    conn.command(stop.clone()).await?;
    conn.ack_and_result(&id, T).await?;
    conn.settle(Duration::from_millis(300)).await;
    check_acks(c, &conn, &id, 1)?;
    conn.command(stop).await?;
    conn.ack_and_result(&id, T).await?;
    conn.settle(Duration::from_millis(500)).await;
    check_acks(c, &conn, &id, 2)
}

pub async fn no_unknown_ids(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-ids";
    let mut sent = HashSet::new();
    for cmd in [c.start(s), ctx::stop(s), ctx::stop("cf-ids-unknown")] {
        sent.insert(cmd.command_id.clone());
        let id = cmd.command_id.clone();
        conn.command(cmd).await?;
        conn.ack_and_result(&id, T).await?;
    }
    conn.settle(Duration::from_millis(500)).await;
    for (what, ids) in [
        ("CommandAck", conn.acks.keys().collect::<Vec<_>>()),
        ("CommandResult", conn.results.keys().collect()),
    ] {
        if let Some(id) = ids.into_iter().find(|id| !sent.contains(*id)) {
            return Err(c.fail(format!(
                "a {what} names command {id:?}, which the kit never sent"
            )));
        }
    }
    Ok(())
}

pub async fn status_after_result(c: &mut Ctx) -> Result<()> {
    use streamspace::v1::agent_frame::Frame as FromAgent;
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-follow";
    let up: &[P] = &[P::Provisioning, P::Running];
    let steps: [(&str, pb::Command, &[P], P); 4] = [
        ("start", c.start(s), up, P::Running),
        (
            "hibernate",
            ctx::hibernate(s),
            &[P::Hibernated],
            P::Hibernated,
        ),
        ("wake", ctx::wake(s), up, P::Running),
        ("stop", ctx::stop(s), &[P::Stopped], P::Stopped),
    ];
    for (what, cmd, allowed, settled) in steps {
        let id = cmd.command_id.clone();
        conn.command(cmd).await?;
        let r = conn.ack_and_result(&id, T).await?;
        succeeded(c, &format!("the {what}"), &r)?;
        conn.settle(Duration::from_millis(300)).await;
        let at = conn
            .seen
            .iter()
            .position(|f| matches!(f, FromAgent::Result(x) if x.command_id == id))
            .expect("the result was read");
        if settled == P::Stopped {
            // Nothing is observed after a stop's own STOPPED: that status
            // may come before the result as well as right after it.
            let stopped = |f: &FromAgent| matches!(f, FromAgent::Status(st) if st.session_id == s && st.phase == P::Stopped as i32);
            let before = conn.seen[..at]
                .iter()
                .rev()
                .take_while(|f| !matches!(f, FromAgent::Result(_)))
                .any(stopped);
            if !before && !conn.seen.get(at + 1).is_some_and(stopped) {
                return Err(c.fail(format!(
                    "no STOPPED status of {s} between the result of the command before and the one \
                     right after the result of the stop"
                )));
            }
            conn.await_phase(s, settled, T).await?;
            continue;
        }
        match conn.seen.get(at + 1) {
            Some(FromAgent::Status(st)) if st.session_id == s => {
                if !allowed.iter().any(|p| *p as i32 == st.phase) {
                    return Err(c.fail(format!(
                        "the status right after the result of the {what} says {}; expected {}",
                        transcript::status(st),
                        allowed
                            .iter()
                            .map(|p| p.as_str_name())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )));
                }
            }
            Some(FromAgent::Status(st)) => {
                return Err(c.fail(format!(
                    "the frame right after the result of the {what} is a status of another session ({})",
                    st.session_id
                )));
            }
            other => {
                return Err(c.fail(format!(
                    "no SessionStatus of {s} right after the result of the {what} (next frame: {})",
                    other.map(crate::conn::kind).unwrap_or("none within 300 ms")
                )));
            }
        }
        conn.await_phase(s, settled, T).await?;
    }
    Ok(())
}

pub async fn start_idempotent(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-idem";
    let first = start_running(c, &mut conn, s).await?;
    run_ok(
        c,
        &mut conn,
        c.start(s),
        "a second start (a new command id) of a running session",
    )
    .await?;
    let second = conn.await_phase(s, P::Running, T).await?.url;
    conn.settle(Duration::from_millis(500)).await;
    let n = c.workloads(s);
    if n != 1 {
        return Err(c.fail(format!(
            "the workload of {s} was started {n} times; a start of a running session must not start it again"
        )));
    }
    if first != second {
        return Err(c.fail(format!(
            "the URL of {s} changed from {first} to {second} after a second start"
        )));
    }
    run_ok(c, &mut conn, ctx::stop(s), "the stop").await?;
    conn.await_phase(s, P::Stopped, T).await?;
    Ok(())
}

pub async fn duplicate_delivery(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-dup";
    let start = c.start(s);
    let id = start.command_id.clone();
    conn.command(start.clone()).await?;
    let first = conn.ack_and_result(&id, T).await?;
    succeeded(c, "the start", &first)?;
    conn.await_phase(s, P::Running, T).await?;
    conn.command(start).await?;
    let again = conn.ack_and_result(&id, T).await?;
    if again.outcome != first.outcome {
        return Err(c.fail(format!(
            "the second delivery got {}, the first {}: a duplicate gets the same result",
            transcript::outcome(&again),
            transcript::outcome(&first)
        )));
    }
    conn.settle(Duration::from_millis(500)).await;
    let n = c.workloads(s);
    if n != 1 {
        return Err(c.fail(format!(
            "the workload of {s} was started {n} times after one start delivered twice"
        )));
    }
    run_ok(c, &mut conn, ctx::stop(s), "the stop").await?;
    conn.await_phase(s, P::Stopped, T).await?;
    Ok(())
}

pub async fn unknown_stop(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-never-started";
    run_ok(
        c,
        &mut conn,
        ctx::stop(s),
        "a stop of a session the agent does not know",
    )
    .await?;
    conn.await_phase(s, P::Stopped, Duration::from_secs(10))
        .await?;
    Ok(())
}

pub async fn unknown_hibernate(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-never-started";
    for (what, cmd) in [("hibernate", ctx::hibernate(s)), ("wake", ctx::wake(s))] {
        let id = cmd.command_id.clone();
        conn.command(cmd).await?;
        let r = conn.ack_and_result(&id, T).await?;
        let not_found = matches!(
            &r.outcome,
            Some(Outcome::Failed(f)) if f.reason == pb::FailureReason::NotFound as i32 && !f.retryable
        );
        if !not_found {
            return Err(c.fail(format!(
                "a {what} of a session the agent does not know must fail with NOT_FOUND, not \
                 retryable; got {}",
                transcript::outcome(&r)
            )));
        }
    }
    Ok(())
}

/// Reads `<marks>/<session>.log`: (SIGTERM received, exited) in ns.
fn term_exit(c: &Ctx, session: &str) -> Option<(u128, u128)> {
    let text = std::fs::read_to_string(c.marks.join(format!("{session}.log"))).ok()?;
    let at = |what: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(what)?.trim().parse::<u128>().ok())
    };
    Some((at("term ")?, at("exit ")?))
}

pub async fn max_in_flight(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let mut w = welcome();
    w.max_in_flight = 1;
    let (mut conn, _) = c.attach(w).await?;
    let (a, b) = ("cf-flight-a", "cf-flight-b");
    for s in [a, b] {
        run_ok(
            c,
            &mut conn,
            c.start_slow_exit(s),
            &format!("the start of {s}"),
        )
        .await?;
        conn.await_phase(s, P::Running, T).await?;
    }
    let (stop_a, stop_b) = (ctx::stop(a), ctx::stop(b));
    let (ia, ib) = (stop_a.command_id.clone(), stop_b.command_id.clone());
    conn.command(stop_a).await?;
    conn.command(stop_b).await?;
    conn.expect_ack(&ia, T).await?;
    conn.expect_ack(&ib, T).await?;
    for (id, s) in [(&ia, a), (&ib, b)] {
        let r = conn.expect_result(id, T).await?;
        succeeded(c, &format!("the stop of {s}"), &r)?;
    }
    let (Some((term_a, exit_a)), Some((term_b, exit_b))) = (term_exit(c, a), term_exit(c, b))
    else {
        return Err(c.fail(
            "a stopped workload did not record its SIGTERM and exit (was it sent SIGTERM?)",
        ));
    };
    let ((first, first_exit), (second, second_term)) = if term_a <= term_b {
        ((a, exit_a), (b, term_b))
    } else {
        ((b, exit_b), (a, term_a))
    };
    if second_term < first_exit {
        return Err(c.fail(format!(
            "two commands applied at once with Welcome.max_in_flight = 1: the workload of {second} got \
             SIGTERM {} ms before the stop of {first} finished",
            (first_exit - second_term) / 1_000_000
        )));
    }
    Ok(())
}

pub async fn oversized_frame(c: &mut Ctx) -> Result<()> {
    const MAX: u32 = 2048;
    c.start_agent()?;
    let mut w = welcome();
    w.max_message_bytes = MAX;
    let (mut conn, _) = c.attach(w).await?;
    let s = "cf-big";
    let mut start = c.start(s);
    let program = format!("/nonexistent/conformance-{}", "\u{1}".repeat(1500));
    if let Some(Action::Start(st)) = &mut start.action
        && let Some(w) = &mut st.workload
    {
        w.command = vec![program];
    }
    let id = start.command_id.clone();
    conn.command(start).await?;
    let r = conn.ack_and_result(&id, T).await?;
    conn.settle(Duration::from_millis(500)).await;
    if let Some((kind, size)) = conn.oversized.first() {
        return Err(c.fail(format!(
            "the agent sent a {kind} frame of {size} bytes; Welcome.max_message_bytes is {MAX} \
             (messages must be cut to fit)"
        )));
    }
    if matches!(r.outcome, Some(Outcome::Succeeded(_))) {
        return Err(c.fail("a start whose program does not exist succeeded"));
    }
    Ok(())
}
