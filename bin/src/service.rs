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
