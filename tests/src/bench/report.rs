//! The results: figures per scenario and the targets, each a ratio to the
//! baseline measured in the same run (or an absolute bound), printed as
//! Markdown tables so a run can be pasted into docs/BENCHMARKS.md.

use std::fmt::Write as _;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub scenario: String,
    pub metric: String,
    pub value: String,
}

/// A target: what was measured against what bound.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub bound: String,
    /// Measured divided by the baseline figure it is compared with, if any.
    pub ratio: Option<f64>,
    /// None: not measured in this run.
    pub pass: Option<bool>,
    pub note: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
}

impl Report {
    /// Records a figure and prints it at once (runs are long; show progress).
    pub fn add(&mut self, scenario: &str, metric: &str, value: impl Into<String>) {
        let value = value.into();
        eprintln!("[bench] {scenario}: {metric} = {value}");
        self.figures.push(Figure {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
        });
    }

    pub fn target(&mut self, t: Target) {
        self.targets.push(t);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| scenario | metric | value |");
        let _ = writeln!(s, "|---|---|---|");
        for f in &self.figures {
            let _ = writeln!(s, "| {} | {} | {} |", f.scenario, f.metric, f.value);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| target | measured | bound | ratio | result |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for t in &self.targets {
            let ratio = t
                .ratio
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".into());
            let result = match t.pass {
                Some(true) => "PASS".to_string(),
                Some(false) => "MISS".to_string(),
                None => "not measured".to_string(),
            };
            let result = if t.note.is_empty() {
                result
            } else {
                format!("{result} ({})", t.note)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                t.name, t.measured, t.bound, ratio, result
            );
        }
        s
    }
}
