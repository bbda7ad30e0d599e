//! Just enough HTTP to tell whether a session's URL answers: one
//! `GET / HTTP/1.0` with short timeouts, 2xx or not.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a GET on `url` gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx status line.
    Ok,
    /// Connected, but no 2xx answer in time (a stopped process, another server).
    Silent,
    /// Nothing listens (connection refused or timed out).
    Refused,
}

pub async fn get(url: &str, wait: Duration) -> Answer {
    let Some(rest) = url.strip_prefix("http://") else {
        return Answer::Refused;
    };
    let hostport = rest.split('/').next().unwrap_or_default().to_string();
    let Ok(Ok(mut s)) = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&hostport)).await
    else {
        return Answer::Refused;
    };
    let req = format!("GET / HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Answer::Silent;
    }
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let head = String::from_utf8_lossy(&buf[..n]);
            if head.starts_with("HTTP/1.0 2") || head.starts_with("HTTP/1.1 2") {
                Answer::Ok
            } else {
                Answer::Silent
            }
        }
        _ => Answer::Silent,
    }
}

/// Polls until `url` gives `want` or `within` passes; the last answer.
pub async fn until(url: &str, want: Answer, within: Duration) -> Answer {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let a = get(url, Duration::from_millis(700)).await;
        if a == want || tokio::time::Instant::now() >= deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
