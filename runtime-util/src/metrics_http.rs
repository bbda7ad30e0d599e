//! The Prometheus endpoint both binaries serve: `/metrics` on a plain-HTTP/1
//! listener of its own (`--metrics-addr`), beside TLS-only listeners. The
//! caller renders its registry at scrape time (a closure), so it can read
//! what *is* into gauges just before they are encoded.
//!
//! The text is OpenMetrics (what `prometheus-client` encodes); a client that
//! does not ask for it by `Accept` (curl, `promtool check metrics`) gets the
//! classic Prometheus text instead (see [`prometheus_text`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Upper bounds of latency histograms, in seconds: 1 ms to about 2 minutes
/// (the default command timeout), roughly x2.5 per bucket.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> Result<String, String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).map_err(|e| e.to_string())?;
    Ok(text)
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text, for
/// clients that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): a counter's family is named with its `_total` suffix, the
/// `# UNIT` and `# EOF` lines go, and an empty label set (`name{} 1`, how a
/// family without labels encodes) is written without its braces.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        let line = renamed.as_deref().unwrap_or(line);
        match line.split_once("{} ") {
            Some((name, value)) if !line.starts_with('#') => {
                out.push_str(name);
                out.push(' ');
                out.push_str(value);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The answer to one request: `render`'s text in the format the client
/// asked for, 404 off `/metrics` (nothing rendered), 503 when rendering
/// failed.
async fn answer<R, F>(
    req: hyper::Request<hyper::body::Incoming>,
    render: Arc<R>,
) -> Result<Response<Full<Bytes>>, hyper::http::Error>
where
    R: Fn() -> F,
    F: Future<Output = Result<String, String>>,
{
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        );
    }
    let openmetrics = req.headers().get_all("accept").iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    match render().await {
        Ok(text) if openmetrics => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Ok(text) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(&text),
        ),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("metrics unavailable: {e}\n"),
        ),
    }
}

/// Binds `addr` and serves `/metrics` until `shutdown` resolves; each scrape
/// calls `render` for the OpenMetrics text. Returns the bound address (the
/// port is known even when asked for port 0) and the accept loop's task.
pub async fn serve<R, F>(
    addr: SocketAddr,
    render: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)>
where
    R: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = Result<String, String>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let render = Arc::new(render);
    let task = tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            let conn = tokio::select! {
                _ = &mut shutdown => return,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(req, render.clone()));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    tracing::info!(addr = %bound, "metrics listener (plain HTTP, /metrics only)");
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_classic_format_names_counters_with_total() {
        let om = "# HELP s_commands_accepted Commands.\n# TYPE s_commands_accepted counter\n\
                  s_commands_accepted_total 3\n# HELP s_up Up.\n# TYPE s_up gauge\n# UNIT s_up seconds\n\
                  s_up 1\n# HELP s_on On.\n# TYPE s_on gauge\ns_on{} 0\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP s_commands_accepted_total Commands.\n# TYPE s_commands_accepted_total counter\n\
             s_commands_accepted_total 3\n# HELP s_up Up.\n# TYPE s_up gauge\ns_up 1\n\
             # HELP s_on On.\n# TYPE s_on gauge\ns_on 0\n"
        );
    }

    /// A blocking HTTP/1.0 GET with extra header lines; (status line, body).
    fn get(addr: SocketAddr, path: &str, headers: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    /// The text is rendered at each scrape, in the format asked for; other
    /// paths are 404, a failed render 503; shutdown closes the listener.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_what_render_says_at_each_scrape() {
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let n = scrapes.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            move || {
                let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move {
                    match n {
                        3 => Err("store down".to_string()),
                        n => Ok(format!(
                            "# HELP s_scrapes Scrapes.\n# TYPE s_scrapes counter\ns_scrapes_total {n}\n# EOF\n"
                        )),
                    }
                }
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        let (head, body) = tokio::task::spawn_blocking(move || {
            let first = get(addr, "/metrics", "");
            let second = get(
                addr,
                "/metrics",
                "Accept: application/openmetrics-text; version=1.0.0\r\n",
            );
            let failed = get(addr, "/metrics", "");
            let missing = get(addr, "/other", "");
            (
                [&first.0, &second.0, &failed.0, &missing.0].map(|h| h.clone()),
                [first.1, second.1, failed.1, missing.1],
            )
        })
        .await
        .unwrap();
        assert!(
            head[0].contains(" 200 ") && head[0].contains("version=0.0.4"),
            "{}",
            head[0]
        );
        assert!(
            body[0].contains("# TYPE s_scrapes_total counter\ns_scrapes_total 1\n"),
            "{}",
            body[0]
        );
        assert!(
            head[1].contains("application/openmetrics-text"),
            "{}",
            head[1]
        );
        assert!(
            body[1].ends_with("s_scrapes_total 2\n# EOF\n"),
            "{}",
            body[1]
        );
        assert!(head[2].contains(" 503 "), "{}", head[2]);
        assert_eq!(body[2], "metrics unavailable: store down\n");
        assert!(head[3].contains(" 404 "), "{}", head[3]);
        assert_eq!(
            scrapes.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "a 404 renders nothing"
        );
        stop.send(()).unwrap();
        task.await.unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the listener is closed"
        );
    }
}
