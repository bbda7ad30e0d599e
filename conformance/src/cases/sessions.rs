//! A session's workload through its phases, and across an agent crash.

use std::time::Duration;

use streamspace::v1 as pb;

use super::commands::{run_ok, start_running};
use crate::conn::welcome;
use crate::ctx::{self, Ctx};
use crate::error::Result;
use crate::http::{self, Answer};
use crate::transcript;

use pb::SessionPhase as P;

const T: Duration = Duration::from_secs(30);

pub async fn lifecycle(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-life";
    let url = start_running(c, &mut conn, s).await?;
    let a = http::until(&url, Answer::Ok, Duration::from_secs(5)).await;
    if a != Answer::Ok {
        return Err(c.fail(format!(
            "RUNNING, but {url} does not answer HTTP 2xx ({a:?})"
        )));
    }
    run_ok(c, &mut conn, ctx::hibernate(s), "the hibernate").await?;
    conn.await_phase(s, P::Hibernated, T).await?;
    let a = http::get(&url, Duration::from_millis(700)).await;
    if a == Answer::Ok {
        return Err(c.fail(format!("HIBERNATED, but {url} still answers HTTP")));
    }
    run_ok(c, &mut conn, ctx::wake(s), "the wake").await?;
    let woken = conn.await_phase(s, P::Running, T).await?;
    let a = http::until(&woken.url, Answer::Ok, Duration::from_secs(5)).await;
    if a != Answer::Ok {
        return Err(c.fail(format!(
            "RUNNING after wake, but {} does not answer HTTP 2xx ({a:?})",
            woken.url
        )));
    }
    run_ok(c, &mut conn, ctx::stop(s), "the stop").await?;
    conn.await_phase(s, P::Stopped, T).await?;
    let a = http::until(&url, Answer::Refused, Duration::from_secs(5)).await;
    if a != Answer::Refused {
        return Err(c.fail(format!(
            "STOPPED, but something still listens on {url} ({a:?})"
        )));
    }
    Ok(())
}

pub async fn inventory_after_restart(c: &mut Ctx) -> Result<()> {
    c.start_agent()?;
    let (mut conn, _) = c.attach(welcome()).await?;
    let s = "cf-inv";
    let url = start_running(c, &mut conn, s).await?;
    c.kill_agent().await;
    drop(conn);
    c.start_agent()?;
    let (mut conn, hello) = c.attach(welcome()).await?;
    let listed: Vec<String> = hello.inventory.iter().map(transcript::status).collect();
    match hello.inventory.iter().find(|x| x.session_id == s) {
        Some(x) if x.phase == P::Running as i32 && x.url == url => {}
        _ => {
            return Err(c.fail(format!(
                "after a restart on the same AGENT_DATA_DIR, Hello.inventory must list {s} RUNNING at \
                 {url}; it lists [{}]",
                listed.join(", ")
            )));
        }
    }
    let n = c.workloads(s);
    if n != 1 {
        return Err(c.fail(format!(
            "the workload of {s} was started {n} times: a restarted agent adopts it"
        )));
    }
    run_ok(c, &mut conn, ctx::stop(s), "the stop after the restart").await?;
    conn.await_phase(s, P::Stopped, T).await?;
    Ok(())
}
