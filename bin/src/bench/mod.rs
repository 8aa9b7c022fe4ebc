//! `flotilla bench`: starts a cluster in this process and drives it.

/// Options of `flotilla bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
}

/// Runs the benchmark.
///
/// # Errors
/// A message for the user when the cluster cannot start.
pub fn run(args: BenchArgs) -> Result<(), String> {
    Err(format!(
        "bench is not built yet ({} nodes asked)",
        args.nodes
    ))
}
