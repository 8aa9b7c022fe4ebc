//! The `flotilla` binary: node, local cluster, bench.

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
    /// Print the version and the crates this build contains.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("flotilla {}", env!("CARGO_PKG_VERSION")),
    }
}
