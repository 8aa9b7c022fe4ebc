//! Where a request's answer goes: its own oneshot channel, or a slot of a
//! batch that is answered in one message.
//!
//! ```text
//!  NodeHost::propose        ──► Reply::Alone(oneshot) ──────────────► caller
//!  NodeHost::propose_batch  ──► Reply::InBatch{batch, slot} × n ─┐
//!                               each send fills its slot          │ last Reply dropped
//!                               BatchAnswer (Rc, one shard) ──────┴─► one Vec to the caller
//! ```
//!
//! A request forwarded here by another node answers through a hook
//! ([`Reply::hook`]) that queues the answer in the driver, which sends it
//! in the same turn as the apply that produced it (no task, no channel per
//! request; the answer travels in the frame of the turn's other messages).
//!
//! A batch of n proposals costs one mailbox message, one channel and one
//! cross-thread wake-up of the caller, instead of n of each. Each proposal is
//! still decided on its own (its slot holds its own result); the answer goes
//! back when the last slot's `Reply` is dropped, answered or not. A slot
//! dropped unanswered (the shard stopped) stays `None`, which the caller
//! reads as [`crate::HostError::ShuttingDown`], as it reads a dropped
//! oneshot sender.

use std::cell::RefCell;
use std::rc::Rc;

use futures_channel::oneshot;

use crate::error::RequestError;

/// The sending end a caller gives a shard for one request.
pub(crate) type ReplyTx<T> = oneshot::Sender<Result<T, RequestError>>;

/// The answers of a batch, in request order (`None`: not answered).
pub(crate) type BatchResults<T> = Vec<Option<Result<T, RequestError>>>;

/// The sending end a caller gives a shard for a batch.
pub(crate) type BatchTx<T> = oneshot::Sender<BatchResults<T>>;

/// Where the answer of one request goes.
pub(crate) struct Reply<T>(Route<T>);

enum Route<T> {
    Alone(ReplyTx<T>),
    InBatch {
        batch: Rc<BatchAnswer<T>>,
        slot: u32,
    },
    Hook(Hook<T>),
}

/// What a hook is called with: the answer, or `None` when its `Reply` is
/// dropped unanswered (the group or the shard stopped).
type HookFn<T> = Box<dyn FnOnce(Option<Result<T, RequestError>>)>;

/// Calls its function exactly once: with the answer, or with `None` when
/// dropped unanswered.
struct Hook<T>(Option<HookFn<T>>);

impl<T> Drop for Hook<T> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(None);
        }
    }
}

/// The shared state of a batch on its shard: the answers so far and the
/// caller's channel, sent to when the last `Reply` of the batch is dropped.
pub(crate) struct BatchAnswer<T> {
    results: RefCell<BatchResults<T>>,
    tx: RefCell<Option<BatchTx<T>>>,
}

impl<T> BatchAnswer<T> {
    /// A batch of `len` requests answered on `tx`. Hand out one
    /// [`Reply::in_batch`] per slot, then drop this `Rc`.
    pub(crate) fn new(len: usize, tx: BatchTx<T>) -> Rc<Self> {
        Rc::new(BatchAnswer {
            results: RefCell::new((0..len).map(|_| None).collect()),
            tx: RefCell::new(Some(tx)),
        })
    }
}

impl<T> Drop for BatchAnswer<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.get_mut().take() {
            // The caller may have given up (deadline): nothing to do then.
            let _ = tx.send(std::mem::take(self.results.get_mut()));
        }
    }
}

impl<T> Reply<T> {
    /// Slot `slot` of `batch`.
    ///
    /// # Panics
    /// If `slot` is outside the batch.
    pub(crate) fn in_batch(batch: &Rc<BatchAnswer<T>>, slot: usize) -> Self {
        assert!(
            slot < batch.results.borrow().len(),
            "slot {slot} outside a batch of {}",
            batch.results.borrow().len()
        );
        Reply(Route::InBatch {
            batch: batch.clone(),
            slot: slot as u32,
        })
    }

    /// A reply that calls `f` exactly once, on this shard: with
    /// `Some(answer)` when answered, with `None` when dropped unanswered.
    /// `f` runs inside whatever answers the request (usually while the
    /// shard's driver is borrowed): it must only record the answer.
    pub(crate) fn hook(f: impl FnOnce(Option<Result<T, RequestError>>) + 'static) -> Self {
        Reply(Route::Hook(Hook(Some(Box::new(f)))))
    }

    /// Answers the request. `Err` gives the answer back when nobody waits
    /// for it any more; a batch's slot always takes it (and drops it with
    /// the batch if its caller gave up).
    pub(crate) fn send(
        self,
        answer: Result<T, RequestError>,
    ) -> Result<(), Result<T, RequestError>> {
        match self.0 {
            Route::Alone(tx) => tx.send(answer),
            Route::InBatch { batch, slot } => {
                let mut results = batch.results.borrow_mut();
                let cell = &mut results[slot as usize];
                debug_assert!(cell.is_none(), "slot {slot} answered twice");
                *cell = Some(answer);
                Ok(())
            }
            Route::Hook(mut hook) => {
                let f = hook.0.take().expect("a hook is called once");
                f(Some(answer));
                Ok(())
            }
        }
    }

    /// Whether the caller has given up waiting (dropped its receiver: its
    /// deadline passed), so the request need not be served.
    pub(crate) fn is_canceled(&self) -> bool {
        match &self.0 {
            Route::Alone(tx) => tx.is_canceled(),
            Route::InBatch { batch, .. } => {
                batch.tx.borrow().as_ref().is_none_or(|tx| tx.is_canceled())
            }
            // Another node waits for it: it has its own deadline.
            Route::Hook(_) => false,
        }
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Route::Alone(_) => f.write_str("Reply::Alone"),
            Route::InBatch { slot, .. } => write!(f, "Reply::InBatch({slot})"),
            Route::Hook(_) => f.write_str("Reply::Hook"),
        }
    }
}

impl<T> From<ReplyTx<T>> for Reply<T> {
    fn from(tx: ReplyTx<T>) -> Self {
        Reply(Route::Alone(tx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::GroupId;
    use futures_lite::future::block_on;

    /// Each slot keeps its own answer, in request order whatever the order
    /// of the answers; the batch goes back once, when its last reply is
    /// gone; a reply dropped unanswered leaves its slot empty.
    #[test]
    fn a_batch_answers_once_with_every_slot_in_order() {
        let (tx, mut rx) = oneshot::channel();
        let batch = BatchAnswer::<u32>::new(3, tx);
        let replies: Vec<Reply<u32>> = (0..3).map(|i| Reply::in_batch(&batch, i)).collect();
        drop(batch);
        let mut replies = replies.into_iter();
        let (r0, r1, r2) = (
            replies.next().unwrap(),
            replies.next().unwrap(),
            replies.next().unwrap(),
        );
        assert!(!r0.is_canceled());
        r2.send(Err(RequestError::GroupNotFound { group: GroupId(9) }))
            .unwrap();
        r0.send(Ok(7)).unwrap();
        assert!(
            rx.try_recv().unwrap().is_none(),
            "answered before its last reply was gone"
        );
        drop(r1);
        let answers = block_on(rx).expect("the batch is answered");
        assert_eq!(answers.len(), 3);
        assert!(matches!(answers[0], Some(Ok(7))));
        assert!(answers[1].is_none(), "a dropped reply answered something");
        assert!(matches!(
            answers[2],
            Some(Err(RequestError::GroupNotFound { group: GroupId(9) }))
        ));
    }

    /// A caller that gave up shows as canceled on every slot, and answering
    /// a slot then is harmless.
    #[test]
    fn a_batch_whose_caller_gave_up_is_canceled() {
        let (tx, rx) = oneshot::channel();
        let batch = BatchAnswer::<u32>::new(2, tx);
        let r0 = Reply::in_batch(&batch, 0);
        let r1 = Reply::in_batch(&batch, 1);
        drop(batch);
        drop(rx);
        assert!(r0.is_canceled() && r1.is_canceled());
        r0.send(Ok(1)).unwrap();
        drop(r1);
        let (tx, rx) = oneshot::channel::<Result<u32, RequestError>>();
        let alone = Reply::from(tx);
        assert!(!alone.is_canceled());
        drop(rx);
        assert!(alone.is_canceled());
    }

    /// A hook is called exactly once: with the answer, or with `None` when
    /// its reply is dropped unanswered.
    #[test]
    fn a_hook_is_called_once_with_the_answer_or_none() {
        type Seen = Rc<RefCell<Vec<Option<Result<u32, RequestError>>>>>;
        let seen: Seen = Rc::default();
        let hooked = |seen: &Seen| {
            let seen = seen.clone();
            Reply::hook(move |a| seen.borrow_mut().push(a))
        };
        let answered = hooked(&seen);
        assert!(!answered.is_canceled());
        answered.send(Ok(5)).unwrap();
        drop(hooked(&seen));
        let seen = seen.borrow();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(matches!(seen[0], Some(Ok(5))));
        assert!(seen[1].is_none(), "a dropped hook answered something");
    }
}
