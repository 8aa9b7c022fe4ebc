//! The `flotilla` binary: a node, a local cluster, the benchmark, status.
//!
//! Module ownership: `node`/`local`/`status`/`config`/`resp`/`service` are
//! the launcher, `http` the HTTP API, `bench` the benchmark driver.

mod bench;
mod config;
mod expiry;
mod http;
mod local;
mod node;
mod resp;
mod service;
mod status;

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
    /// Start one node (flags > FLOTILLA_* environment > --config file >
    /// defaults).
    Node(Box<config::NodeArgs>),
    /// Start a 3-node cluster in this process on loopback (Redis protocol
    /// on 127.0.0.1:6381..6383), data in ./flotilla-data; Ctrl-C stops.
    Local(local::LocalArgs),
    /// Show a running node's groups, leaders, terms, indexes and lag.
    Status(status::StatusArgs),
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
        Command::Node(args) => run_node(&args),
        Command::Local(args) => local::run(args),
        Command::Status(args) => status::run(args),
        Command::Bench(args) => bench::run(args),
    };
    if let Err(message) = outcome {
        eprintln!("flotilla: {message}");
        std::process::exit(1);
    }
}

/// `flotilla node`: resolve the config, start, serve until a signal.
fn run_node(args: &config::NodeArgs) -> Result<(), String> {
    let mut cfg = args.resolve().map_err(|e| e.to_string())?;
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    // Before any thread exists: every later thread inherits the mask.
    let signals = service::Signals::install()?;
    service::init_logging(cfg.log_format);
    cfg.max_clients = service::fit_max_clients(cfg.max_clients, 1);
    let node = node::start(&cfg).map_err(|e| e.to_string())?;
    let sig = signals.wait();
    tracing::info!(signal = sig, "stopping");
    node.stop();
    Ok(())
}
