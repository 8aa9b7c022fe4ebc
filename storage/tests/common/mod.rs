//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use flotilla_storage::{Entry, WalOptions};

/// The engine's executor watchdog (`flotilla::exec`), compiled into these
/// tests from the same file: this crate cannot depend on the engine.
#[path = "../../../engine/src/exec.rs"]
#[allow(dead_code)]
mod exec;

/// Runs `f` on a fresh glommio executor (small io_memory, 2 ms preempt timer)
/// and returns its result; a panic inside fails the test, and so does a test
/// still running after [`TEST_DEADLINE`] (rather than hanging the suite).
///
/// Two guards against glommio 0.9.0 bug 2 (an executor may park with
/// runnable work): the executor runs under the engine's watchdog
/// (`exec::spawn`: signalled out of a sleep when its heartbeat stops, the
/// only guard for an executor that parks before its first task ran, seen
/// here as a hung `seed()`), and a reserve of armed timers (one due every
/// 5 ms, 8 registered ahead).
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .preempt_timer(Duration::from_millis(2));
    // Tests care little for idle wake-ups: a quick heartbeat and limit.
    let (beat, stall) = (Duration::from_millis(20), Duration::from_millis(100));
    let handle = exec::spawn_watched(
        builder,
        "storage-test".into(),
        beat,
        stall,
        move || async move {
            let stop = std::rc::Rc::new(std::cell::Cell::new(false));
            let ticker =
                glommio::spawn_local(keep_timers_armed(Duration::from_millis(5), 8, stop.clone()));
            let out = f().await;
            stop.set(true);
            drop(ticker);
            out
        },
    )
    .expect("executor starts");
    let t0 = std::time::Instant::now();
    while !handle.is_finished() {
        assert!(
            t0.elapsed() < TEST_DEADLINE,
            "the test's executor did not finish within {TEST_DEADLINE:?}"
        );
        std::thread::park_timeout(Duration::from_millis(2));
    }
    handle.join().expect("executor finished without panicking")
}

/// How long one storage test may run before it fails as hung.
pub const TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Keeps `reserve` timers registered, due every `period`, until `stop`.
async fn keep_timers_armed(
    period: Duration,
    reserve: usize,
    stop: std::rc::Rc<std::cell::Cell<bool>>,
) {
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Instant;
    let mut armed: std::collections::VecDeque<glommio::timer::Timer> =
        std::collections::VecDeque::with_capacity(reserve);
    let mut last_due = Instant::now();
    while !stop.get() {
        let now = Instant::now();
        if last_due < now {
            last_due = now;
        }
        let mut fresh = Vec::new();
        while armed.len() + fresh.len() < reserve {
            last_due += period;
            fresh.push(glommio::timer::Timer::new(last_due - now));
        }
        // Register the new timers with this task's waker without waiting.
        std::future::poll_fn(|cx| {
            for t in fresh.iter_mut() {
                let _ = Pin::new(t).poll(cx);
            }
            Poll::Ready(())
        })
        .await;
        armed.extend(fresh);
        if let Some(front) = armed.front_mut() {
            front.await;
        }
        armed.pop_front();
    }
}

/// Small segments so that rolls, reclamation and recycling happen quickly.
pub fn small_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        frame_bytes_max: 32 * 1024,
        pending_bytes_max: 256 * 1024,
        cache_bytes_max: 64 * 1024,
        cache_group_bytes_max: 8 * 1024,
        recycle_segments: true,
        spare_segments_max: 2,
        prefill_segments: true,
        dsync_writes: true,
        recovery_read_bytes: 16 * 1024,
    }
}

/// Options that never cache durable payloads: every read goes to disk.
pub fn no_cache(mut o: WalOptions) -> WalOptions {
    o.cache_bytes_max = 0;
    o.cache_group_bytes_max = 0;
    o
}

/// A deterministic payload for (group, index, term).
pub fn payload(group: u64, index: u64, term: u64, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x =
        group.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(31) ^ term.rotate_left(17);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    Bytes::from(v)
}

pub fn entry(group: u64, index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        kind: (index % 3) as u8,
        payload: payload(group, index, term, len),
    }
}

/// Blocking file operations, run off the executor.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(f).await
}

/// Copies every file of `from` into the (new) directory `to`.
pub async fn copy_dir(from: &Path, to: &Path) {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    blocking(move || {
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    })
    .await
}

pub async fn read_file(p: &Path) -> Vec<u8> {
    let p = p.to_path_buf();
    blocking(move || std::fs::read(p).unwrap()).await
}

pub async fn write_file(p: &Path, data: Vec<u8>) {
    let p = p.to_path_buf();
    blocking(move || std::fs::write(p, data).unwrap()).await
}

pub fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// `path` (absolute) written relative to the working directory, through
/// `..` up to the root: what a caller passing `./data` hands the crate.
#[allow(dead_code)] // not every test binary uses it
pub fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.push(path.strip_prefix("/").unwrap());
    assert!(rel.is_relative());
    rel
}
