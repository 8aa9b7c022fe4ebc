//! The `flotilla` binary: a node, a local cluster, the benchmark, status.
//!
//! Module ownership: `node`/`local`/`status`/`config`/`resp`/`service` are
//! the launcher, `http` the HTTP API, `bench` the benchmark driver.

mod bench;
mod http;

use clap::{Parser, Subcommand};

/// flotilla: a thread-per-core, shared-nothing multi-raft engine.
#[derive(Parser, Debug)]
#[command(name = "flotilla", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version.
    Version,
    /// Start a cluster in this process on loopback and measure it.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Version => {
            println!("flotilla {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
    };
    if let Err(message) = outcome {
        eprintln!("flotilla: {message}");
        std::process::exit(1);
    }
}
