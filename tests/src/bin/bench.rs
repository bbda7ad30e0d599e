//! `streamspace-bench`: the benchmark tool (not a test). It runs the real
//! control plane and simulated agents over real mTLS on loopback and prints
//! a table of figures and targets; see docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/streamspace-bench run --quick
//! ```
#![forbid(unsafe_code)]

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    bench::main()
}
