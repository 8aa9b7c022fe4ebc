//! The executor watchdog (`flotilla::exec`): output, panics and names come
//! through, and a stalled heartbeat brings signals the executor survives.

use std::time::Duration;

use flotilla::exec::{spawn, spawn_watched};
use glommio::LocalExecutorBuilder;

fn builder() -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .preempt_timer(Duration::from_millis(2))
}

/// The executor's output comes back through `join`, its panic as an
/// error, and its thread has our name.
#[test]
fn runs_joins_and_reports_panics() {
    let h = spawn(builder(), "exec-test".into(), || async {
        glommio::timer::sleep(Duration::from_millis(1)).await;
        std::thread::current().name().map(str::to_string)
    })
    .unwrap();
    assert_eq!(h.join().unwrap().as_deref(), Some("exec-test"));
    let h = spawn(builder(), "exec-panic".into(), || async {
        panic!("on purpose");
    })
    .unwrap();
    let err = h.join().unwrap_err();
    assert!(err.contains("on purpose"), "{err}");
}

/// A heartbeat that stands still (here: the executor thread kept busy
/// on purpose, which is what a stuck one looks like from outside) brings
/// signals, which the thread survives.
#[test]
fn a_stalled_executor_is_signalled_and_survives() {
    const BEAT: Duration = Duration::from_millis(10);
    const STALL: Duration = Duration::from_millis(50);
    let h = spawn_watched(builder(), "exec-stall".into(), BEAT, STALL, || async {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < STALL * 6 {
            std::hint::spin_loop();
        }
        glommio::timer::sleep(BEAT).await;
        7
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    while !h.is_finished() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the executor hangs");
        std::thread::park_timeout(Duration::from_millis(5));
    }
    let kicks = h.kicks();
    assert_eq!(h.join(), Ok(7));
    assert!(kicks >= 1, "no signal during a stall");
}
