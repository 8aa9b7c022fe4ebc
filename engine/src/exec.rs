//! Starting a glommio executor with a watchdog.
//!
//! glommio 0.9.0 can park an executor that has runnable tasks (bug 2 in
//! GLOMMIO.md): after `poll_io` arms the preempt timer, if the thread is
//! descheduled for longer than that timer before it checks `need_preempt()`
//! (2 ms: common on a loaded 2-core machine), it runs nothing and goes to
//! sleep in `io_uring_enter`. Only an armed timer, an I/O completion or a
//! wake-up from another thread ends that sleep. If it happens before the
//! executor ran its first task, nothing is armed and nothing is in flight:
//! the executor sleeps for good (reproduced here: 6 hung runs in 97 of the
//! storage WAL tests, 4 copies in parallel beside 2 busy loops, the
//! executor thread in `io_cqring_wait` with 0 CPU, never having run its
//! task; with this module, 0 in 275).
//!
//! [`spawn`] closes that hole. The executor runs on a thread we start, so a
//! watchdog thread knows it before glommio's loop begins; a heartbeat task
//! on the executor counts every [`HEARTBEAT_PERIOD`]; when the count stops
//! moving for [`STALL_AFTER`], the watchdog sends the executor thread a
//! signal ([`KICK_SIGNAL`], with a handler that does nothing). A signal ends
//! `io_uring_enter` with `EINTR`, which glommio treats as a wake-up: it loops
//! and runs its task queues. An executor that is merely busy gets a signal it
//! does not notice (the handler is installed with `SA_RESTART`, so other
//! system calls resume).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

/// How often the heartbeat task of an executor counts. Rare on purpose:
/// each beat wakes an idle executor (10,000 idle groups on 3 nodes cost
/// about 300 wake-ups/s in all; this adds 4 per executor).
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(250);

/// How long a heartbeat may stand still before the watchdog signals the
/// executor thread (and again after each further `STALL_AFTER`).
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// The signal that wakes a stuck executor. Its default action is to be
/// ignored, which would not interrupt anything, so [`spawn`] installs a
/// handler that does nothing (unless the process installed its own).
pub const KICK_SIGNAL: libc::c_int = libc::SIGURG;

/// A running executor started by [`spawn`].
#[derive(Debug)]
pub struct ExecutorHandle<T> {
    thread: std::thread::JoinHandle<Result<T, String>>,
    kicks: Arc<AtomicU64>,
}

impl<T> ExecutorHandle<T> {
    /// Waits for the executor's future to finish and returns its output.
    ///
    /// # Errors
    /// The executor could not be created, or its future panicked.
    pub fn join(self) -> Result<T, String> {
        match self.thread.join() {
            Ok(r) => r,
            Err(panic) => Err(panic_message(&panic)),
        }
    }

    /// How many times its watchdog signalled the executor so far.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Whether the executor's thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

/// Starts a glommio executor configured by `builder` on a new thread named
/// `name`, running `fut_gen()`, guarded by a watchdog (see the module
/// documentation). Like `LocalExecutorBuilder::spawn`, which it replaces.
///
/// # Errors
/// The OS refused a thread. (An executor that cannot be created ends its
/// thread; [`ExecutorHandle::join`] reports why.)
pub fn spawn<G, F, T>(
    builder: LocalExecutorBuilder,
    name: String,
    fut_gen: G,
) -> std::io::Result<ExecutorHandle<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    spawn_watched(builder, name, HEARTBEAT_PERIOD, STALL_AFTER, fut_gen)
}

/// [`spawn`] with its own heartbeat period and stall limit (tests).
///
/// # Errors
/// As [`spawn`].
pub fn spawn_watched<G, F, T>(
    builder: LocalExecutorBuilder,
    name: String,
    heartbeat_period: Duration,
    stall_after: Duration,
    fut_gen: G,
) -> std::io::Result<ExecutorHandle<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    debug_assert!(!heartbeat_period.is_zero() && stall_after > heartbeat_period);
    install_handler();
    let kicks = Arc::new(AtomicU64::new(0));
    let counted = kicks.clone();
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let ex = builder.make().map_err(|e| format!("executor: {e}"))?;
        let dog = Watchdog::start(counted, stall_after);
        let beat = dog.beat.clone();
        let out = ex.run(async move {
            let heart = glommio::spawn_local(heartbeat(beat, heartbeat_period));
            let out = fut_gen().await;
            drop(heart);
            out
        });
        drop(dog);
        Ok(out)
    })?;
    Ok(ExecutorHandle { thread, kicks })
}

async fn heartbeat(beat: Arc<AtomicU64>, period: Duration) {
    loop {
        beat.fetch_add(1, Ordering::Relaxed);
        glommio::timer::sleep(period).await;
    }
}

/// Watches one executor thread (the one that starts it) from another thread.
struct Watchdog {
    stop: Arc<AtomicBool>,
    beat: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(kicks: Arc<AtomicU64>, stall_after: Duration) -> Watchdog {
        // SAFETY: returns the calling thread's handle; always succeeds.
        let target = unsafe { libc::pthread_self() };
        let stop = Arc::new(AtomicBool::new(false));
        let beat = Arc::new(AtomicU64::new(0));
        let (stopped, beats) = (stop.clone(), beat.clone());
        let thread = std::thread::Builder::new()
            .name("flotilla-watchdog".into())
            .spawn(move || {
                let mut last = beats.load(Ordering::Relaxed);
                let mut still = Duration::ZERO;
                let check = stall_after / 2;
                loop {
                    std::thread::park_timeout(check);
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    let now = beats.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        still = Duration::ZERO;
                        continue;
                    }
                    still += check;
                    if still >= stall_after {
                        still = Duration::ZERO;
                        kicks.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            executor = ?std::thread::current().name(),
                            "executor heartbeat stalled; signalling it"
                        );
                        // SAFETY: `target` runs until this thread is joined
                        // (`Drop` below, on that thread), so the handle is
                        // valid; the signal has a handler (`install_handler`).
                        unsafe {
                            libc::pthread_kill(target, KICK_SIGNAL);
                        }
                    }
                }
            })
            .expect("the OS starts a watchdog thread");
        Watchdog {
            stop,
            beat,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

extern "C" fn ignore_kick(_: libc::c_int) {}

/// Installs the do-nothing handler for [`KICK_SIGNAL`] once per process,
/// unless the signal already has a handler of someone else's.
fn install_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain sigaction calls on zero-initialised structs; the
        // handler is async-signal-safe (it does nothing).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(KICK_SIGNAL, std::ptr::null(), &mut old) != 0 {
                return;
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                return;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = ignore_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(KICK_SIGNAL, &act, std::ptr::null_mut());
        }
    });
}
