//! `streamspace-conformance`: runs the conformance cases against an agent.
//! See the crate doc of `streamspace_conformance` and `--help`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use streamspace_conformance::{Golden, agent::ENV_DOC, cases, ctx::Settings, report, run_case};

#[derive(Debug, Parser)]
#[command(
    name = "streamspace-conformance",
    version,
    about = "Checks a StreamSpace agent against the agent protocol: plays the control plane over \
             mTLS on loopback, runs the agent and named cases (one rule each), prints TAP.",
    after_long_help = ENV_DOC
)]
struct Args {
    /// Shell command line that runs the agent under test (run with `sh -c`),
    /// e.g. 'target/debug/streamspace-agent'. Its settings come from the
    /// environment (see below).
    #[arg(long, env = "CONFORMANCE_AGENT_CMD", required_unless_present = "list")]
    agent_cmd: Option<String>,
    /// Agent id under test: in AGENT_ID and in the client certificate.
    #[arg(
        long,
        env = "CONFORMANCE_AGENT_ID",
        default_value = "conformance-agent"
    )]
    agent_id: String,
    /// Run only this case (repeatable); default: all.
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// List the cases with the rule each checks, and exit.
    #[arg(long)]
    list: bool,
    /// Also write a JUnit XML report to FILE.
    #[arg(long, env = "CONFORMANCE_JUNIT", value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Directory of the golden transcripts (<case>.txt).
    #[arg(long, env = "CONFORMANCE_GOLDEN_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/golden"))]
    golden_dir: PathBuf,
    /// Rewrite the golden transcripts of the cases that pass.
    #[arg(long, conflicts_with = "no_golden")]
    update_golden: bool,
    /// Do not compare transcripts with the golden files.
    #[arg(long)]
    no_golden: bool,
    /// First port of the 100-port SESSION_PORTS range (20000-29900); default:
    /// picked from the process id.
    #[arg(long, env = "CONFORMANCE_PORT_BASE")]
    port_base: Option<u16>,
    /// Keep each case's directory (PKI, data dir, agent.log) after the run.
    #[arg(long)]
    keep_dirs: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.list {
        for c in cases::CASES {
            println!("{:<28} {}", c.name, c.doc);
        }
        return ExitCode::SUCCESS;
    }
    let mut selected = Vec::new();
    for name in &args.cases {
        match cases::find(name) {
            Some(c) => selected.push(c),
            None => {
                let known: Vec<&str> = cases::CASES.iter().map(|c| c.name).collect();
                eprintln!("--case: unknown case {name:?}; known: {}", known.join(", "));
                return ExitCode::from(2);
            }
        }
    }
    if selected.is_empty() {
        selected = cases::CASES.iter().collect();
    }
    let port_base = match args.port_base {
        Some(p) if (20000..=29900).contains(&p) => p,
        Some(p) => {
            eprintln!("--port-base: expected 20000-29900, found {p}");
            return ExitCode::from(2);
        }
        None => 20000 + (std::process::id() % 100) as u16 * 100,
    };
    let settings = Settings {
        agent_cmd: args.agent_cmd.unwrap_or_default(),
        agent_id: args.agent_id,
        port_base,
        keep_dirs: args.keep_dirs,
    };
    let golden = if args.no_golden {
        Golden::Ignore
    } else if args.update_golden {
        Golden::Update(args.golden_dir)
    } else {
        Golden::Compare(args.golden_dir)
    };
    println!("{}", report::tap_plan(selected.len()));
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for (i, case) in selected.into_iter().enumerate() {
        let o = run_case(&settings, case, &golden).await;
        println!("{}", report::tap_line(i + 1, &o));
        outcomes.push(o);
    }
    let total = started.elapsed();
    println!("{}", report::summary(&outcomes, total));
    if let Some(path) = &args.junit
        && let Err(e) = report::write_junit(path, &outcomes, total)
    {
        eprintln!("--junit: {e}");
        return ExitCode::from(2);
    }
    if outcomes.iter().any(|o| o.failure.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
