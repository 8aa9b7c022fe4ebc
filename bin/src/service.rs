//! Process-level plumbing shared by `node` and `local`: logging and
//! shutdown signals.
//!
//! Signals: [`Signals::install`] blocks SIGINT and SIGTERM in the calling
//! (main) thread *before any other thread exists*, so every thread spawned
//! later (shard and client executors) inherits the mask and no executor is
//! ever interrupted by them; one dedicated std thread takes them with
//! `sigwait` and forwards them on a channel. A second signal while the node
//! is stopping ends the process at once (exit code 130).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::LogFormat;

/// Installs the `tracing` subscriber: level from `RUST_LOG` (default
/// `info`), human-readable or JSON lines on stderr.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let (filter, bad) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        // glommio logs an expected probe failure at error level on every
        // start (the GLOMMIO.md bug 1 workaround); hidden unless asked for.
        Err(_) if std::env::var_os("RUST_LOG").is_none() => {
            (EnvFilter::new("info,glommio::reactor=off"), None)
        }
        Err(e) => (
            EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().map(|v| (v, e.to_string())),
        ),
    };
    // Colours only on a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        if let Some((value, error)) = bad {
            tracing::warn!(rust_log = %value, %error, "ignoring a malformed RUST_LOG; logging at info");
        }
    }
}

/// SIGINT/SIGTERM, delivered to one thread and forwarded.
pub struct Signals {
    rx: flume::Receiver<i32>,
}

impl Signals {
    /// Blocks SIGINT and SIGTERM in this thread (and so in every thread it
    /// spawns afterwards) and starts the thread that waits for them.
    ///
    /// # Errors
    /// A message if the signal mask cannot be set.
    pub fn install() -> Result<Signals, String> {
        // SAFETY: plain libc calls on a sigset_t we own; pthread_sigmask
        // only changes this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(format!("cannot block SIGINT/SIGTERM: error {rc}"));
            }
            set
        };
        let (tx, rx) = flume::bounded(4);
        let stopping = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("flotilla-signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid, initialized sigset_t.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                if stopping.swap(true, Ordering::SeqCst) {
                    tracing::warn!(signal = sig, "second signal while stopping: exiting now");
                    std::process::exit(130);
                }
                tracing::info!(signal = sig, "signal received: stopping");
                let _ = tx.try_send(sig);
            })
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
        Ok(Signals { rx })
    }

    /// Blocks until SIGINT or SIGTERM arrives; returns the signal.
    pub fn wait(&self) -> i32 {
        self.rx.recv().unwrap_or(libc::SIGTERM)
    }
}

/// What [`raise_fd_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit (the most an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises this process's soft limit on open files (`RLIMIT_NOFILE`) to at
/// least `wanted`, as far as the hard limit allows (the soft limit is
/// often 1024, far below the connections a node accepts: `max_clients`
/// per protocol, peers, WAL segments). Never lowers it. Called at start,
/// before any executor exists (it is one system call, not async).
///
/// # Errors
/// The system error when the limit cannot be read or set.
pub fn raise_fd_limit(wanted: u64) -> std::io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let target = wanted.min(lim.rlim_max);
    if target > before {
        lim.rlim_cur = target;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(FdLimit {
        before,
        now: before.max(target),
        hard: lim.rlim_max,
    })
}

/// Open files a node keeps besides its clients: listeners, raft
/// connections to its peers (per shard), WAL segments, snapshot files,
/// io_uring and eventfd descriptors of its executors.
const FDS_RESERVED_PER_NODE: u64 = 256;

/// Files `nodes` nodes may need open: two listeners' worth of clients
/// (Redis protocol and HTTP, `max_clients` each) plus their own.
pub fn fds_wanted(max_clients: usize, nodes: usize) -> u64 {
    (2 * max_clients as u64 + FDS_RESERVED_PER_NODE) * nodes.max(1) as u64
}

/// How many clients per node and protocol `limit` open files leave room
/// for (the inverse of [`fds_wanted`]), at least 1.
pub fn clients_within(limit: u64, nodes: usize) -> usize {
    let per_node = (limit / nodes.max(1) as u64).saturating_sub(FDS_RESERVED_PER_NODE) / 2;
    usize::try_from(per_node).unwrap_or(usize::MAX).max(1)
}

/// Raises the open-file limit for `nodes` nodes of `max_clients` clients
/// each (see [`raise_fd_limit`]) and returns the `max_clients` that fits
/// the limit reached: lowered, with a warning, when the hard limit is too
/// low (as Redis does), so that a client past it is refused at once with
/// `max number of clients reached` rather than left waiting to be
/// accepted while the process has no descriptor to give it.
pub fn fit_max_clients(max_clients: usize, nodes: usize) -> usize {
    let wanted = fds_wanted(max_clients, nodes);
    match raise_fd_limit(wanted) {
        Ok(l) if l.now < wanted => {
            let fits = clients_within(l.now, nodes).min(max_clients);
            tracing::warn!(
                soft = l.now,
                hard = l.hard,
                requested = max_clients,
                max_clients = fits,
                "max_clients lowered to fit the open-file limit; raise the hard limit (ulimit -Hn) to allow more"
            );
            fits
        }
        Ok(l) => {
            if l.now > l.before {
                tracing::info!(before = l.before, now = l.now, "raised the open-file limit");
            }
            max_clients
        }
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-file limit");
            max_clients
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_never_lowered_and_capped_by_the_hard_limit() {
        let first = raise_fd_limit(0).unwrap();
        assert_eq!(first.now, first.before, "0 wanted lowers nothing");
        let want = first.hard.min(first.before + 64);
        let l = raise_fd_limit(want).unwrap();
        assert!(l.now >= want.min(l.hard), "{l:?}");
        assert!(l.now <= l.hard, "{l:?}");
        let capped = raise_fd_limit(u64::MAX).unwrap();
        assert_eq!(capped.now, capped.hard, "capped by the hard limit");
        assert_eq!(raise_fd_limit(1).unwrap().now, capped.hard, "never lowered");
    }

    #[test]
    fn a_node_wants_room_for_both_protocols_clients() {
        assert_eq!(fds_wanted(10_000, 1), 20_256);
        assert_eq!(fds_wanted(10_000, 3), 60_768);
        assert!(fds_wanted(1, 0) >= 258);
        assert_eq!(clients_within(fds_wanted(10_000, 3), 3), 10_000);
        assert_eq!(clients_within(20_000, 3), 3_205);
        assert_eq!(clients_within(1024, 1), 384);
        assert_eq!(clients_within(100, 1), 1, "never 0");
    }

    #[test]
    fn max_clients_is_kept_when_the_limit_allows_it_and_lowered_when_not() {
        let hard = raise_fd_limit(u64::MAX).unwrap().hard;
        assert_eq!(fit_max_clients(10, 1), 10, "a few clients always fit");
        let too_many = usize::try_from(hard).unwrap();
        let fits = fit_max_clients(too_many, 1);
        assert!(fits < too_many, "{fits} of {too_many} with {hard} files");
        assert_eq!(fits, clients_within(hard, 1));
    }
}
