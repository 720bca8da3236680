//! `switchboard-loadgen`: load generator and benchmark for switchboard-node.
//!
//! Starts a node (or targets a running one), drives one scenario against it
//! over loopback WebSockets and prints the figures. See `--help` and
//! `docs/benchmarks.md`.
#![allow(clippy::print_stdout)]

mod backend;
mod centrifugo;
mod client;
mod cluster;
mod idle;
mod proto;
mod report;
mod sys;
mod table;
mod target;
mod throughput;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::report::Out;

/// Load generator and benchmark for switchboard-node.
///
/// By default it starts `target/release/switchboard-node` on a free loopback
/// port with a rate limit high enough for load tests, raises its own
/// RLIMIT_NOFILE soft limit to the hard limit first (the node inherits it),
/// and kills the node at the end. Exit status: 0 when every check passed,
/// 1 when the run completed but something failed (connect failures, lost
/// messages, error frames), 2 on errors.
#[derive(Debug, Parser)]
#[command(name = "switchboard-loadgen", version, about)]
struct Cli {
    /// Print a JSON summary on stdout (the human-readable lines then go to
    /// stderr).
    #[arg(long, global = true)]
    json: bool,

    /// Worker threads of the loadgen's tokio runtime.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N idle connections; report the node's RSS per idle connection.
    Idle(idle::IdleArgs),
    /// Open-loop messages between sender/receiver pairs at a fixed total
    /// rate; report counts, losses, errors, latency percentiles and CPU.
    Throughput(throughput::ThroughputArgs),
    /// The cluster as other services see it over RocketMQ: request-response
    /// round trips and commands per second.
    Backend(backend::BackendArgs),
    /// Summarise a directory of `--json` run summaries (what `scripts/compare`
    /// collects) as one Markdown table and an SVG of latency against rate.
    Table(table::TableArgs),
}

impl Scenario {
    /// File descriptors the loadgen needs (connections plus slack).
    fn fds_needed(&self) -> u64 {
        let conns = match self {
            Self::Idle(a) => a.connections,
            Self::Throughput(a) => 2 * a.pairs,
            Self::Table(_) | Self::Backend(_) => 0,
        };
        conns as u64 + 64
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    match run(cli, out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, out: Out) -> anyhow::Result<bool> {
    let limit = sys::raise_nofile_limit()?;
    let need = cli.scenario.fds_needed();
    if limit.now < need {
        anyhow::bail!(
            "this run needs about {need} file descriptors but RLIMIT_NOFILE is {} (hard {}); raise the hard limit",
            limit.now,
            limit.hard
        );
    }
    if limit.before != limit.now {
        eprintln!(
            "raised RLIMIT_NOFILE soft limit from {} to {}",
            limit.before, limit.now
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let scenario = async {
            match cli.scenario {
                Scenario::Idle(a) => idle::run(a, out).await,
                Scenario::Throughput(a) => throughput::run(a, out).await,
                Scenario::Table(a) => table::run(a),
                Scenario::Backend(a) => backend::run(a, out).await,
            }
        };
        // Dropping the scenario on Ctrl-C kills a started node (kill_on_drop).
        tokio::select! {
            r = scenario => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })
}
