//! A single-threaded "something changed" signal for tasks of one shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every task waiting in [`Notify::notified`] when [`Notify::notify`]
/// is called. Use as: check the condition, and if it does not hold, await
/// `notified()` (no await in between, so no wake-up is lost on one thread).
///
/// Invariant: `waiters` holds exactly one entry per live, registered
/// [`Notified`] (a dropped one removes its entry), so it never outgrows the
/// number of futures currently waiting, however many tasks come and go.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    epoch: Cell<u64>,
    next_id: Cell<u64>,
    waiters: RefCell<Vec<(u64, Waker)>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// Completes after the next `notify()`.
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
            id: None,
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

pub(crate) struct Notified<'a> {
    notify: &'a Notify,
    epoch: u64,
    /// Our entry in `notify.waiters`, once registered.
    id: Option<u64>,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            self.id = None; // notify() took every entry
            return Poll::Ready(());
        }
        let notify = self.notify;
        let mut waiters = notify.waiters.borrow_mut();
        if let Some(id) = self.id {
            if let Some(entry) = waiters.iter_mut().find(|(i, _)| *i == id) {
                if !entry.1.will_wake(cx.waker()) {
                    entry.1 = cx.waker().clone();
                }
                return Poll::Pending;
            }
        }
        let id = notify.next_id.get();
        notify.next_id.set(id.wrapping_add(1));
        waiters.push((id, cx.waker().clone()));
        drop(waiters);
        self.id = Some(id);
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut waiters = self.notify.waiters.borrow_mut();
            if let Some(i) = waiters.iter().position(|(w, _)| *w == id) {
                waiters.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn dropped_waiters_leave_no_entry_and_notify_wakes_the_rest() {
        let n = Notify::default();
        for _ in 0..1000 {
            let mut f = Box::pin(n.notified());
            assert!(block_on(poll_once(&mut f)).is_none());
            drop(f);
        }
        assert_eq!(n.waiting(), 0, "abandoned waits must not accumulate");
        let mut a = Box::pin(n.notified());
        let mut b = Box::pin(n.notified());
        assert!(block_on(poll_once(&mut a)).is_none());
        assert!(block_on(poll_once(&mut b)).is_none());
        assert!(
            block_on(poll_once(&mut b)).is_none(),
            "re-poll keeps one entry"
        );
        assert_eq!(n.waiting(), 2);
        n.notify();
        assert_eq!(n.waiting(), 0);
        assert!(block_on(poll_once(&mut a)).is_some());
        assert!(block_on(poll_once(&mut b)).is_some());
        // A wait created after the notify waits for the next one.
        let mut c = Box::pin(n.notified());
        assert!(block_on(poll_once(&mut c)).is_none());
        drop(c);
        assert_eq!(n.waiting(), 0);
    }
}
