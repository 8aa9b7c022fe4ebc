//! The values the WAL keeps: entries, hard state, snapshot markers, and the
//! batch that carries writes for many groups at once.

use bytes::Bytes;

/// Largest group metadata [`Batch::set_meta`] accepts (64 KiB).
pub const META_BYTES_MAX: usize = 64 * 1024;

/// Identifies one group (one replicated log) within a WAL. Opaque to storage.
pub type GroupId = u64;

/// One log entry of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based position in the group's log.
    pub index: u64,
    /// The term the entry was created in.
    pub term: u64,
    /// Opaque kind byte (normal, configuration change...), kept as is.
    pub kind: u8,
    /// Opaque payload; written and read back without interpretation.
    pub payload: Bytes,
}

/// The state a group must persist besides its entries: current term, vote
/// (0 = none) and commit index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Voted-for replica in `term`; 0 means none.
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// Compaction / snapshot marker: the group no longer needs entries at or below
/// `index`; `term` is the term of the entry at `index`.
///
/// Invariant (per group): the marker never moves backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotMarker {
    /// Last index covered by the snapshot (0 = none).
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
}

/// One operation inside a [`Batch`].
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Append {
        group: GroupId,
        entries: Vec<Entry>,
    },
    HardState {
        group: GroupId,
        state: HardState,
    },
    /// `drop_all` is decided when the batch is accepted and written to disk,
    /// so replay never depends on entries that may be gone.
    Snapshot {
        group: GroupId,
        marker: SnapshotMarker,
        drop_all: bool,
    },
    Remove {
        group: GroupId,
    },
    Meta {
        group: GroupId,
        meta: Bytes,
    },
}

impl Op {
    pub(crate) fn group(&self) -> GroupId {
        match self {
            Op::Append { group, .. }
            | Op::HardState { group, .. }
            | Op::Snapshot { group, .. }
            | Op::Remove { group }
            | Op::Meta { group, .. } => *group,
        }
    }
}

/// Writes for many groups that become durable together: one frame on disk,
/// one fdatasync (shared with whatever other batches are coalesced with it).
///
/// Operations apply in the order they were added. The whole batch is
/// validated before anything is applied: if one operation is invalid the
/// write fails and nothing of the batch is applied.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use flotilla_storage::{Batch, Entry, HardState, SnapshotMarker};
///
/// let mut batch = Batch::new();
/// batch.append(7, vec![Entry { index: 1, term: 1, kind: 0, payload: Bytes::from_static(b"x") }]);
/// batch.set_hard_state(7, HardState { term: 1, vote: 2, commit: 0 });
/// batch.set_snapshot(9, SnapshotMarker { index: 100, term: 3 });
/// batch.set_meta(7, Bytes::from_static(b"voters=1,2,3"));
/// batch.remove_group(11);
/// assert_eq!(batch.len(), 5);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    /// An empty batch. Writing it waits for every earlier write to be durable
    /// (a barrier) without a new fdatasync.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `ops` operations (an append of any
    /// number of entries to one group is one operation), so that building a
    /// large batch does not reallocate.
    ///
    /// # Examples
    /// ```
    /// use flotilla_storage::Batch;
    /// let batch = Batch::with_capacity(4096);
    /// assert!(batch.is_empty());
    /// ```
    pub fn with_capacity(ops: usize) -> Self {
        Self {
            ops: Vec::with_capacity(ops),
        }
    }

    /// Appends `entries` (consecutive indices) to `group`. An append starting
    /// at index `i` first removes the group's entries at `i` and above
    /// (conflict truncation).
    pub fn append(&mut self, group: GroupId, entries: Vec<Entry>) -> &mut Self {
        self.ops.push(Op::Append { group, entries });
        self
    }

    /// Records the group's hard state (replaces the previous one).
    pub fn set_hard_state(&mut self, group: GroupId, state: HardState) -> &mut Self {
        self.ops.push(Op::HardState { group, state });
        self
    }

    /// Records a snapshot / compaction marker. If the log holds an entry at
    /// `marker.index` with `marker.term`, entries above it are kept and those
    /// at or below it dropped; otherwise the whole log is dropped and the last
    /// index becomes `marker.index` (a snapshot install).
    pub fn set_snapshot(&mut self, group: GroupId, marker: SnapshotMarker) -> &mut Self {
        self.ops.push(Op::Snapshot {
            group,
            marker,
            drop_all: false,
        });
        self
    }

    /// Records the group's opaque metadata (the engine keeps its Raft
    /// membership there); the latest one wins. At most
    /// [`crate::META_BYTES_MAX`] bytes, else the batch is refused
    /// (`InvalidOp::MetaTooLarge`). Kept in memory; read it back with
    /// [`crate::Wal::meta`] and at recovery in [`crate::RecoveredGroup::meta`].
    pub fn set_meta(&mut self, group: GroupId, meta: Bytes) -> &mut Self {
        self.ops.push(Op::Meta { group, meta });
        self
    }

    /// Removes every trace of `group` (entries, hard state, marker, meta).
    pub fn remove_group(&mut self, group: GroupId) -> &mut Self {
        self.ops.push(Op::Remove { group });
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
