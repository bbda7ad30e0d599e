//! Jaeger in tests: the real all-in-one binary (`scripts/tools.sh install
//! jaeger` builds it once into the cache), receiving OTLP/gRPC on a free
//! port and answering its HTTP query API on another, traces in memory; and
//! a reader for the traces it returns.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::free_addr;
use crate::prom::{encode, require_with};

/// A running Jaeger; killed on drop.
pub struct Jaeger {
    child: Child,
    /// OTLP/gRPC receiver: pass `http://{otlp}` as `--otlp-endpoint`.
    pub otlp: SocketAddr,
    /// HTTP query API (`/api/traces/...`).
    pub query: SocketAddr,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jaeger {
    /// Starts Jaeger with its data in memory and its log in `dir`; None
    /// (a skip) when the binary is missing outside CI.
    pub async fn start(dir: &Path) -> Option<Self> {
        let bin = require_with("jaeger", "scripts/tools.sh install jaeger")?;
        std::fs::create_dir_all(dir).unwrap();
        let (otlp, query, query_grpc) = (free_addr(), free_addr(), free_addr());
        let config = dir.join("jaeger.yaml");
        std::fs::write(
            &config,
            format!(
                r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "{query}"
    grpc:
      endpoint: "{query_grpc}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "{otlp}"
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("jaeger.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start jaeger");
        let j = Jaeger { child, otlp, query };
        let log = dir.join("jaeger.log");
        crate::wait_for("Jaeger to answer its query API", 60, || {
            let (q, o) = (j.query, j.otlp);
            let log = log.clone();
            async move {
                let up = get(q, "/api/services").is_some_and(|(status, _)| status == 200)
                    && std::net::TcpStream::connect(o).is_ok();
                if !up {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(!text.contains("Error:"), "jaeger failed to start:\n{text}");
                }
                up.then_some(())
            }
        })
        .await;
        Some(j)
    }

    /// The trace `id` (32 hex digits) as Jaeger holds it now; None while
    /// it has no span of it.
    pub fn trace(&self, id: &str) -> Option<Trace> {
        let (status, body) = get(self.query, &format!("/api/traces/{id}"))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        Some(Trace::from_json(v["data"].as_array()?.first()?))
    }

    /// Ids of the traces with a span `operation` of `service` whose tags
    /// include `tags`.
    pub fn find(&self, service: &str, operation: &str, tags: &[(&str, &str)]) -> Vec<String> {
        let tags: serde_json::Map<String, serde_json::Value> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let path = format!(
            "/api/traces?service={}&operation={}&tags={}&limit=50&lookback=1h",
            encode(service),
            encode(operation),
            encode(&serde_json::Value::Object(tags).to_string())
        );
        let Some((200, body)) = get(self.query, &path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t["traceID"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One span of a trace.
#[derive(Debug, Clone)]
pub struct Span {
    pub id: String,
    pub name: String,
    /// The span it is a child of (CHILD_OF), if any.
    pub parent: Option<String>,
    pub service: String,
    pub tags: HashMap<String, String>,
}

/// A trace read back from Jaeger.
#[derive(Debug, Clone)]
pub struct Trace {
    pub spans: Vec<Span>,
}

impl Trace {
    fn from_json(t: &serde_json::Value) -> Self {
        let services: HashMap<String, String> = t["processes"]
            .as_object()
            .map(|ps| {
                ps.iter()
                    .map(|(k, p)| (k.clone(), p["serviceName"].as_str().unwrap_or("").into()))
                    .collect()
            })
            .unwrap_or_default();
        let spans = t["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Span {
                id: s["spanID"].as_str().unwrap_or("").into(),
                name: s["operationName"].as_str().unwrap_or("").into(),
                parent: s["references"].as_array().and_then(|rs| {
                    rs.iter()
                        .find(|r| r["refType"] == "CHILD_OF")
                        .and_then(|r| r["spanID"].as_str().map(str::to_string))
                }),
                service: services
                    .get(s["processID"].as_str().unwrap_or(""))
                    .cloned()
                    .unwrap_or_default(),
                tags: s["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let v = match &t["value"] {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (t["key"].as_str().unwrap_or("").to_string(), v)
                    })
                    .collect(),
            })
            .collect();
        Trace { spans }
    }

    /// The spans named `name`.
    pub fn named(&self, name: &str) -> Vec<&Span> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// The one span named `name` whose tags include `tag` (panics when
    /// there is none).
    pub fn one(&self, name: &str, tag: (&str, &str)) -> &Span {
        self.spans
            .iter()
            .find(|s| s.name == name && s.tags.get(tag.0).map(String::as_str) == Some(tag.1))
            .unwrap_or_else(|| {
                panic!(
                    "no span {name} with {}={} in\n{}",
                    tag.0,
                    tag.1,
                    self.tree()
                )
            })
    }

    pub fn by_id(&self, id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.id == id)
    }

    /// Whether `ancestor` is `span`'s parent, grandparent, ...
    pub fn descends(&self, span: &Span, ancestor: &Span) -> bool {
        let mut at = span.parent.clone();
        for _ in 0..64 {
            match at {
                Some(ref p) if *p == ancestor.id => return true,
                Some(ref p) => at = self.by_id(p).and_then(|s| s.parent.clone()),
                None => return false,
            }
        }
        false
    }

    /// The trace as an indented tree (`service: name`), for failures and
    /// for the documentation.
    pub fn tree(&self) -> String {
        let mut out = String::new();
        let roots: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.parent.as_ref().is_none_or(|p| self.by_id(p).is_none()))
            .collect();
        for r in roots {
            self.write(&mut out, r, 0);
        }
        out
    }

    fn write(&self, out: &mut String, s: &Span, depth: usize) {
        out.push_str(&format!(
            "{}{}: {}\n",
            "  ".repeat(depth),
            s.service,
            s.name
        ));
        for c in self
            .spans
            .iter()
            .filter(|c| c.parent.as_deref() == Some(&s.id))
        {
            self.write(out, c, depth + 1);
        }
    }
}

/// A plain HTTP/1.0 GET: (status, body); None when nothing listens.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
