//! A single-threaded "wake everyone, they re-check" primitive for tasks of one
//! executor (group-commit waiters, back-pressure).

use std::cell::RefCell;
use std::task::{Poll, Waker};

#[derive(Default)]
pub(crate) struct Notify {
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every waiting task; each re-checks its condition.
    pub(crate) fn notify_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Resolves once `cond` holds (checked now and after every `notify_all`).
    pub(crate) async fn wait_until(&self, mut cond: impl FnMut() -> bool) {
        std::future::poll_fn(|cx| {
            if cond() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
