//! Scenario 1, the baseline: what a bare tonic echo costs over the same mTLS
//! setup, with the echo server in its own process so its memory and CPU are
//! its own. Round-trip latency on one stream, frames/s pipelined on one
//! stream, full mutual handshakes/s, server memory per idle connection, server
//! CPU while every connection sends a heartbeat-sized frame per heartbeat
//! interval, and round trips/s over 1,000 connections ping-ponging at once.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;

use super::Sizes;
use super::children::{EchoChild, Lab};
use super::echo::{self, EchoConn, frame};
use super::measure::{Latencies, cpu_percent, fmt_dur, fmt_int, fmt_rate, sample};
use super::report::Report;

const S: &str = "1 baseline";

/// The figures later scenarios are compared with.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub rtt_p50: Duration,
    pub rtt_p99: Duration,
    /// Server RSS per idle connection, KiB.
    pub kib_per_conn: f64,
    /// Connections the memory and heartbeat CPU figures were taken with.
    pub conns: u64,
    /// Server CPU (% of one core) with `conns` connections heartbeating.
    pub heartbeat_cpu: f64,
    /// Round trips/s with 1,000 connections ping-ponging.
    pub many_round_trips: f64,
}

pub async fn run(lab: &Lab, z: &Sizes, report: &mut Report) -> anyhow::Result<Baseline> {
    let server = EchoChild::start(lab).await?;
    let pid = server.pid()?;
    let id = lab.pki.agent_pem("echo-client");
    let ep = echo::endpoint(server.addr, &lab.pki.ca.cert, &id)?;
    let mut b = Baseline::default();

    // Ping-pong on one stream.
    let mut c = EchoConn::open(&ep).await?;
    for _ in 0..z.rtt_samples / 10 {
        c.round_trip().await?;
    }
    let mut rtt = Latencies::default();
    for _ in 0..z.rtt_samples {
        let t = Instant::now();
        c.round_trip().await?;
        rtt.push(t.elapsed());
    }
    (b.rtt_p50, b.rtt_p99) = (rtt.pct(50.0), rtt.pct(99.0));
    report.add(
        S,
        &format!("round trip, 1 stream ({} samples) p50 / p99", rtt.len()),
        format!("{} / {}", fmt_dur(b.rtt_p50), fmt_dur(b.rtt_p99)),
    );

    // Pipelined on one stream: a sender as fast as the window allows.
    let n = z.pipelined_frames;
    let tx = c.tx.clone();
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            tx.send(frame(i)).await?;
        }
        anyhow::Ok(())
    });
    for _ in 0..n {
        c.rx.message().await?.context("echo stream ended")?;
    }
    sender.await??;
    report.add(
        S,
        "frames pipelined on 1 stream",
        fmt_rate(n as f64 / t0.elapsed().as_secs_f64()),
    );
    drop(c);

    // New connections: TCP + mutual TLS + HTTP/2 + one round trip, 8 at a time.
    let deadline = Instant::now() + z.handshake_time;
    let t0 = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    drop(EchoConn::open(&ep).await?);
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut handshakes = 0;
    for w in workers {
        handshakes += w.await??;
    }
    report.add(
        S,
        "full mutual-TLS handshakes (+1 round trip), 8 dialers",
        fmt_rate(handshakes as f64 / t0.elapsed().as_secs_f64()),
    );

    // Idle connections, each with one open stream: server memory per connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample(pid)?;
    let mut conns: Vec<EchoConn> = futures::stream::iter(0..z.conns)
        .map(|_| {
            let ep = ep.clone();
            async move { EchoConn::open(&ep).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = sample(pid)?;
    b.conns = z.conns;
    b.kib_per_conn = after.rss_kib.saturating_sub(before.rss_kib) as f64 / z.conns as f64;
    report.add(
        S,
        &format!(
            "server RSS per idle mTLS stream ({} conns)",
            fmt_int(z.conns)
        ),
        format!(
            "{:.1} KiB ({} -> {} KiB)",
            b.kib_per_conn,
            fmt_int(before.rss_kib),
            fmt_int(after.rss_kib)
        ),
    );

    // Heartbeat-like traffic: one frame per connection per interval, spread evenly.
    let interval = echo::KEEPALIVE;
    let window = z.steady_window;
    let t0 = tokio::time::Instant::now();
    let count = conns.len() as u32;
    let tasks: Vec<_> = conns
        .drain(..)
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let mut next = t0 + interval * i as u32 / count.max(1);
                while next < t0 + window {
                    tokio::time::sleep_until(next).await;
                    c.round_trip().await?;
                    next += interval;
                }
                anyhow::Ok(c)
            })
        })
        .collect();
    let s0 = sample(pid)?;
    tokio::time::sleep_until(t0 + window).await;
    let s1 = sample(pid)?;
    for t in tasks {
        conns.push(t.await??);
    }
    b.heartbeat_cpu = cpu_percent(&s0, &s1);
    report.add(
        S,
        &format!(
            "server CPU, {} conns each echoing 1 frame / {}s",
            fmt_int(z.conns),
            interval.as_secs()
        ),
        format!("{:.2}% of a core", b.heartbeat_cpu),
    );

    // 1,000 connections ping-ponging at once.
    let many = conns.len().min(1000);
    let deadline = Instant::now() + z.many_time;
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .drain(..many)
        .map(|mut c| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    c.round_trip().await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut trips = 0;
    for t in tasks {
        trips += t.await??;
    }
    b.many_round_trips = trips as f64 / t0.elapsed().as_secs_f64();
    report.add(
        S,
        &format!("round trips, {many} connections ping-ponging"),
        fmt_rate(b.many_round_trips),
    );
    drop(conns);
    server.stop().await;
    Ok(b)
}
