//! Output: TAP on stdout (one `ok N - case` line per case, a YAML block
//! under a failure), optional JUnit XML, and a one-line summary.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// How one case ended.
pub struct Outcome {
    pub case: &'static str,
    pub duration: Duration,
    /// None when it passed; else the message (starts with `rule <name>:`).
    pub failure: Option<String>,
    /// Shown under a failure: the agent's last log lines.
    pub detail: String,
}

pub fn tap_plan(n: usize) -> String {
    format!("TAP version 13\n1..{n}")
}

pub fn tap_line(i: usize, o: &Outcome) -> String {
    let mut s = match &o.failure {
        None => format!("ok {i} - {}", o.case),
        Some(_) => format!("not ok {i} - {}", o.case),
    };
    let _ = write!(s, " # {:.1} s", o.duration.as_secs_f64());
    if let Some(f) = &o.failure {
        s += "\n  ---\n  message: |\n";
        for l in f.lines() {
            let _ = writeln!(s, "    {l}");
        }
        if !o.detail.is_empty() {
            s += "  agent_log: |\n";
            for l in o.detail.lines() {
                let _ = writeln!(s, "    {l}");
            }
        }
        s += "  ...";
    }
    s
}

pub fn summary(outcomes: &[Outcome], total: Duration) -> String {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.case)
        .collect();
    let passed = outcomes.len() - failed.len();
    let mut s = format!(
        "# streamspace-conformance: {passed} passed, {} failed in {:.1} s",
        failed.len(),
        total.as_secs_f64()
    );
    if !failed.is_empty() {
        let _ = write!(s, " (failed: {})", failed.join(", "));
    }
    s
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

pub fn junit(outcomes: &[Outcome], total: Duration) -> String {
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites><testsuite name=\"streamspace-conformance\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        outcomes.len(),
        total.as_secs_f64()
    );
    for o in outcomes {
        let _ = write!(
            s,
            "  <testcase classname=\"streamspace-conformance\" name=\"{}\" time=\"{:.3}\"",
            xml(o.case),
            o.duration.as_secs_f64()
        );
        match &o.failure {
            None => s += "/>\n",
            Some(f) => {
                let first = f.lines().next().unwrap_or_default();
                let _ = writeln!(
                    s,
                    ">\n    <failure message=\"{}\">{}\n\nagent log:\n{}</failure>\n  </testcase>",
                    xml(first),
                    xml(f),
                    xml(&o.detail)
                );
            }
        }
    }
    s += "</testsuite></testsuites>\n";
    s
}

pub fn write_junit(path: &Path, outcomes: &[Outcome], total: Duration) -> Result<()> {
    std::fs::write(path, junit(outcomes, total)).map_err(|e| Error::io("writing", path, e))
}
