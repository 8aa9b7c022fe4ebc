//! The in-memory index: per group, its hard state, snapshot marker and, for
//! every live entry, its term, kind, where it lives on disk and (while cached)
//! its payload. The same `apply` serves live writes and recovery replay, so
//! recovery gives exactly the answer the live WAL gave.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

use crate::error::InvalidOp;
use crate::format::{ENTRIES_FIXED_BYTES, ENTRY_META_BYTES};
use crate::types::{Entry, GroupId, HardState, SnapshotMarker, META_BYTES_MAX};

/// Where an entry's payload lives on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub bytes: u32,
    pub crc: u32,
}

/// One live entry.
///
/// Its location is known when it is accepted up to the place of its batch
/// in a frame: `offset` is then relative to the start of the batch's first
/// record (`segment == 0`) and [`Placements`] resolves it once the batch is
/// in a frame. So encoding a frame touches no slot (with thousands of
/// groups every slot touch is a cache miss). Recovered slots (`op_id` 0)
/// carry their segment.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub term: u64,
    /// Operation that wrote it (0 = recovered from disk).
    pub op_id: u64,
    /// Segment of the payload; 0: not recorded here, see [`Slot::loc`].
    /// (Segment sequence numbers start at 1.)
    pub segment: u64,
    /// Payload offset in `segment`, or (`segment == 0`) relative to the
    /// first record of the batch holding operation `op_id`.
    pub offset: u64,
    pub bytes: u32,
    pub crc: u32,
    pub kind: u8,
    /// Cached payload; always `Some` until the entry is durable.
    pub payload: Option<Bytes>,
}

impl Slot {
    /// Where the payload is on disk: `None` until its batch is in a frame.
    pub(crate) fn loc(&self, placements: &Placements) -> Option<Loc> {
        let (segment, offset) = if self.segment != 0 {
            (self.segment, self.offset)
        } else {
            let (segment, base) = placements.resolve(self.op_id)?;
            (segment, base + self.offset)
        };
        Some(Loc {
            segment,
            offset,
            bytes: self.bytes,
            crc: self.crc,
        })
    }
}

/// Where each batch's records went: one run per batch taken into a frame,
/// `(first op id, segment, offset of its first record)`, in op order. A
/// live record (entry, hard state, marker, meta) written since the WAL was
/// opened finds its segment (and an entry its payload offset) here by its
/// op id: one binary search when asked, instead of one index update per
/// record when its frame is encoded.
///
/// Invariants: runs are in increasing op and (segment, offset) order; every
/// op id `<= placed_op` belongs to a run (or to a batch whose records are
/// all gone); runs of reclaimed segments are dropped (no live record is
/// left in them: the segment was unpinned).
#[derive(Debug, Default)]
pub(crate) struct Placements {
    runs: VecDeque<(u64, u64, u64)>,
    placed_op: u64,
}

impl Placements {
    /// Records that the batch of ops `first_op..=last_op` starts at
    /// `offset` of `segment`.
    pub(crate) fn push(&mut self, first_op: u64, last_op: u64, segment: u64, offset: u64) {
        assert!(
            first_op == self.placed_op + 1 && last_op >= first_op,
            "batches placed out of order: {first_op}..={last_op} after {}",
            self.placed_op
        );
        debug_assert!(segment != 0);
        debug_assert!(self
            .runs
            .back()
            .is_none_or(|&(_, s, o)| (s, o) < (segment, offset)));
        self.runs.push_back((first_op, segment, offset));
        self.placed_op = last_op;
    }

    /// Every op id up to this one is placed.
    #[cfg(test)]
    pub(crate) fn placed_op(&self) -> u64 {
        self.placed_op
    }

    /// `(segment, offset of the batch's first record)` of op `op`, or
    /// `None` if it is not placed yet (or is 0: recovered).
    pub(crate) fn resolve(&self, op: u64) -> Option<(u64, u64)> {
        if op == 0 || op > self.placed_op {
            return None;
        }
        let i = self.runs.partition_point(|r| r.0 <= op);
        let r = self.runs.get(i.checked_sub(1)?);
        debug_assert!(r.is_some(), "op {op} placed but its run was dropped");
        r.map(|&(_, s, o)| (s, o))
    }

    /// The segment of op `op`'s record.
    pub(crate) fn segment(&self, op: u64) -> Option<u64> {
        self.resolve(op).map(|(s, _)| s)
    }

    /// Drops the runs of segments below `oldest` (reclaimed).
    pub(crate) fn trim(&mut self, oldest: u64) {
        while self.runs.front().is_some_and(|r| r.1 < oldest) {
            self.runs.pop_front();
        }
    }

    /// Number of runs kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }
}

/// Everything known about one group.
///
/// Invariant: `slots[i]` holds index `marker.index + 1 + i`.
///
/// `repr(C)` with the fields every append and every frame encoding read
/// first (one or two cache lines), the rarely written records after: with
/// thousands of groups each of those touches is a cache miss.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct GroupState {
    pub slots: VecDeque<Slot>,
    pub marker: SnapshotMarker,
    /// Operation that last changed this group.
    pub last_op: u64,
    /// Payload bytes cached for this group.
    pub cached_bytes: u64,
    /// Every slot below this index has no cached payload.
    pub cache_lo: u64,
    /// Queued in the WAL's cache eviction round robin.
    pub in_rr: bool,
    pub hard_state: Option<HardState>,
    /// Segment holding the latest hard-state record if it was recovered
    /// (`hs_op` 0); else `None` and [`Placements`] knows it by `hs_op`.
    pub hs_seg: Option<u64>,
    pub hs_op: u64,
    /// As `hs_seg`, for the latest snapshot record.
    pub marker_seg: Option<u64>,
    pub marker_op: u64,
    /// Opaque metadata (latest wins), kept in memory.
    pub meta: Option<Bytes>,
    /// As `hs_seg`, for the latest meta record.
    pub meta_seg: Option<u64>,
    pub meta_op: u64,
}

impl GroupState {
    pub(crate) fn first_index(&self) -> u64 {
        self.marker.index + 1
    }
    pub(crate) fn last_index(&self) -> u64 {
        self.marker.index + self.slots.len() as u64
    }
    pub(crate) fn slot(&self, index: u64) -> Option<&Slot> {
        let at = index.checked_sub(self.first_index())?;
        self.slots.get(usize::try_from(at).ok()?)
    }
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if index == self.marker.index {
            return Some(self.marker.term);
        }
        self.slot(index).map(|s| s.term)
    }
    /// Segment of the latest hard-state record (`None`: none, or not in a
    /// frame yet).
    pub(crate) fn hs_segment(&self, pl: &Placements) -> Option<u64> {
        self.hs_seg.or_else(|| pl.segment(self.hs_op))
    }
    /// Segment of the latest snapshot record.
    pub(crate) fn marker_segment(&self, pl: &Placements) -> Option<u64> {
        self.marker_seg.or_else(|| pl.segment(self.marker_op))
    }
    /// Segment of the latest meta record.
    pub(crate) fn meta_segment(&self, pl: &Placements) -> Option<u64> {
        self.meta_seg.or_else(|| pl.segment(self.meta_op))
    }
    /// Whether a snapshot record of this group is live (written or
    /// recovered), whether or not it is in a frame yet.
    pub(crate) fn has_marker_record(&self) -> bool {
        self.marker_seg.is_some() || self.marker_op != 0
    }
    /// Segment of the oldest live entry (`None`: no entry, or not in a frame yet).
    pub(crate) fn front_segment(&self, pl: &Placements) -> Option<u64> {
        let s = self.slots.front()?;
        if s.segment != 0 {
            Some(s.segment)
        } else {
            pl.segment(s.op_id)
        }
    }
    /// Oldest segment holding a live record of this group (records not in
    /// a frame yet hold none).
    pub(crate) fn min_segment(&self, pl: &Placements) -> Option<u64> {
        [
            self.front_segment(pl),
            self.hs_segment(pl),
            self.marker_segment(pl),
            self.meta_segment(pl),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// A change to one group, as accepted from a batch or replayed from disk.
/// (Appends go through [`Index::append_entries`].)
/// Its record's segment is found through [`Placements`] by op id.
pub(crate) enum Change {
    HardState { state: HardState },
    Snapshot { marker: SnapshotMarker },
    Meta { meta: Bytes },
    Remove,
}

/// How to revert one applied change.
pub(crate) enum Undo {
    Created(GroupId),
    Append {
        group: GroupId,
        appended: usize,
        truncated: VecDeque<Slot>,
        last_op: u64,
        cached_bytes: u64,
        /// `in_rr` before (a live append sets it).
        in_rr: bool,
        cache_lo: u64,
    },
    HardState {
        group: GroupId,
        prev: Option<HardState>,
        hs_op: u64,
        hs_seg: Option<u64>,
        last_op: u64,
    },
    /// Boxed: the largest variant by far, and rare (compactions, snapshot
    /// installs), while an append pushes one `Undo` per operation.
    Snapshot(Box<SnapshotUndo>),
    Meta {
        group: GroupId,
        prev: Option<Bytes>,
        meta_op: u64,
        meta_seg: Option<u64>,
        last_op: u64,
    },
    Remove {
        group: GroupId,
        state: Box<GroupState>,
    },
}

/// How to revert one applied snapshot marker (see [`Undo::Snapshot`]).
pub(crate) struct SnapshotUndo {
    group: GroupId,
    prev: SnapshotMarker,
    marker_op: u64,
    marker_seg: Option<u64>,
    last_op: u64,
    cached_bytes: u64,
    cache_lo: u64,
    dropped_front: VecDeque<Slot>,
    dropped_all: Option<VecDeque<Slot>>,
}

/// Hasher for `u64` group ids: a murmur3 finaliser (all bits mixed, a few
/// ns) instead of SipHash; group ids come from the engine, not from clients.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GroupHasher(u64);

impl Hasher for GroupHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let mut h = self.0.rotate_left(29) ^ x;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by group id.
pub(crate) type GroupMap<V> = HashMap<GroupId, V, BuildHasherDefault<GroupHasher>>;

/// How one change moved a group's oldest live segment: `(before, after)`.
pub(crate) type PinMove = (Option<u64>, Option<u64>);

/// Slot buffers with at least this capacity (160 KiB of slots, beyond
/// malloc's mmap threshold: regrowing one faults in fresh pages) are kept by
/// a compaction (see [`Index::commit_undo`]). Smaller ones are not: fresh
/// small buffers of many groups lie close together (fewer cache and TLB
/// misses with 10,000 groups, measured).
const SLOT_BUFFER_KEEP_MIN: usize = 2048;

/// Per-group state of every group of the WAL.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub groups: GroupMap<GroupState>,
    pub cached_bytes_total: u64,
    /// Where the batches accepted since the WAL was opened went.
    pub placements: Placements,
    /// Groups that may have no record in a frame yet (their pin is `None`):
    /// looked at again each time batches are placed. May hold duplicates
    /// and groups since removed.
    ///
    /// Invariant: every group whose `min_segment` is `None` while it has a
    /// record waiting for a frame is listed.
    pub unplaced: Vec<GroupId>,
}

/// What [`Index::append_entries`] trims a group's cache to first: its
/// durable payloads (`op_id <= durable_op`) until it holds at most
/// `keep_bytes` (`cache_group_bytes_max`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheTrim {
    pub durable_op: u64,
    pub keep_bytes: u64,
}

impl CacheTrim {
    /// No trimming.
    #[cfg(test)]
    pub(crate) const NONE: CacheTrim = CacheTrim {
        durable_op: 0,
        keep_bytes: u64::MAX,
    };
}

fn slot_bytes(s: &Slot) -> u64 {
    s.payload.as_ref().map_or(0, |p| p.len() as u64)
}

/// Hints the CPU to fetch the cache line holding `p` (a no-op on other
/// targets than x86_64).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address,
    // and changes nothing the program can observe.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl Index {
    /// Asks the CPU to fetch what [`Index::append_entries`] to `group` will
    /// touch: the group's state and the end of its slot buffer. With
    /// thousands of groups both are cache misses; fetched a few operations
    /// ahead they overlap instead of each stalling the accept loop in turn.
    /// One hash lookup; changes nothing.
    pub(crate) fn prefetch_append(&self, group: GroupId) {
        let Some(g) = self.groups.get(&group) else {
            return;
        };
        let state = (g as *const GroupState).cast::<u8>();
        prefetch(state.wrapping_add(64));
        let (front, back) = g.slots.as_slices();
        if let Some(last) = back.last().or(front.last()) {
            // The next slot goes right after the last one (unless the
            // buffer wraps or grows: then this is only a wasted hint).
            let at = (last as *const Slot).cast::<u8>();
            let slot = std::mem::size_of::<Slot>();
            prefetch(at.wrapping_add(slot));
            prefetch(at.wrapping_add(2 * slot - 1));
        }
    }

    /// Applies one change; on `Err` nothing changed. Pushes how to revert it
    /// onto `undo` when given.
    pub(crate) fn apply(
        &mut self,
        group: GroupId,
        op_id: u64,
        change: Change,
        undo: Option<&mut Vec<Undo>>,
    ) -> Result<PinMove, InvalidOp> {
        // Validate first, against the current state.
        if let Change::Meta { meta, .. } = &change {
            if meta.len() > META_BYTES_MAX {
                return Err(InvalidOp::MetaTooLarge {
                    bytes: meta.len() as u64,
                    limit: META_BYTES_MAX as u64,
                });
            }
        }
        let pl = &self.placements;
        let pin_before = self.groups.get(&group).and_then(|g| g.min_segment(pl));
        if let Some(g) = self.groups.get(&group) {
            match &change {
                Change::Snapshot { marker, .. } if marker.index < g.marker.index => {
                    return Err(InvalidOp::BelowSnapshot {
                        snapshot: g.marker.index,
                        index: marker.index,
                    })
                }
                _ => {}
            }
        } else {
            if let Change::Remove = &change {
                return Ok((None, None));
            }
        }
        let mut local = Vec::new();
        let undo = undo.unwrap_or(&mut local);
        if let std::collections::hash_map::Entry::Vacant(v) = self.groups.entry(group) {
            v.insert(GroupState::default());
            undo.push(Undo::Created(group));
        }
        let total = &mut self.cached_bytes_total;
        match change {
            Change::Remove => {
                let state = self.groups.remove(&group).expect("checked above");
                *total -= state.cached_bytes;
                undo.push(Undo::Remove {
                    group,
                    state: Box::new(state),
                });
            }
            Change::HardState { state } => {
                let g = self.groups.get_mut(&group).expect("inserted above");
                undo.push(Undo::HardState {
                    group,
                    prev: g.hard_state,
                    hs_op: g.hs_op,
                    hs_seg: g.hs_seg,
                    last_op: g.last_op,
                });
                g.hard_state = Some(state);
                g.hs_op = op_id;
                g.hs_seg = None;
                g.last_op = op_id;
            }
            Change::Meta { meta } => {
                let g = self.groups.get_mut(&group).expect("inserted above");
                undo.push(Undo::Meta {
                    group,
                    prev: g.meta.take(),
                    meta_op: g.meta_op,
                    meta_seg: g.meta_seg,
                    last_op: g.last_op,
                });
                g.meta = Some(meta);
                g.meta_op = op_id;
                g.meta_seg = None;
                g.last_op = op_id;
            }
            Change::Snapshot { marker } => {
                let g = self.groups.get_mut(&group).expect("inserted above");
                let prev = g.marker;
                let (marker_op, marker_seg, last_op, cached_bytes, cache_lo) = (
                    g.marker_op,
                    g.marker_seg,
                    g.last_op,
                    g.cached_bytes,
                    g.cache_lo,
                );
                let mut dropped_front = VecDeque::new();
                let mut dropped_all = None;
                if marker == prev {
                    // Idempotent: keeps every entry.
                } else if g.term(marker.index) == Some(marker.term)
                    && marker.index <= g.last_index()
                {
                    let k = (marker.index - g.marker.index) as usize;
                    // Move whichever side is shorter: a compaction usually
                    // drops almost everything and keeps a short suffix, so
                    // copying the dropped front (to be able to undo) would
                    // cost a copy of the whole log.
                    if k <= g.slots.len() / 2 {
                        dropped_front = g.slots.drain(..k).collect();
                    } else {
                        let kept = g.slots.split_off(k);
                        dropped_front = std::mem::replace(&mut g.slots, kept);
                    }
                } else {
                    dropped_all = Some(std::mem::take(&mut g.slots));
                }
                // Slots below `cache_lo` hold no payload: only the rest
                // of the dropped slots is read.
                let uncached = cache_lo.saturating_sub(prev.index + 1);
                let cached_part = |d: &VecDeque<Slot>| -> u64 {
                    let from = usize::try_from(uncached).unwrap_or(usize::MAX).min(d.len());
                    d.range(from..).map(slot_bytes).sum()
                };
                let cut: u64 =
                    cached_part(&dropped_front) + dropped_all.as_ref().map_or(0, cached_part);
                debug_assert_eq!(
                    cut,
                    dropped_front.iter().map(slot_bytes).sum::<u64>()
                        + dropped_all.iter().flatten().map(slot_bytes).sum::<u64>()
                );
                g.cached_bytes -= cut;
                *total -= cut;
                g.marker = marker;
                g.cache_lo = g.cache_lo.max(g.first_index());
                g.marker_op = op_id;
                g.marker_seg = None;
                g.last_op = op_id;
                undo.push(Undo::Snapshot(Box::new(SnapshotUndo {
                    group,
                    prev,
                    marker_op,
                    marker_seg,
                    last_op,
                    cached_bytes,
                    cache_lo,
                    dropped_front,
                    dropped_all,
                })));
            }
        }
        let pl = &self.placements;
        Ok((
            pin_before,
            self.groups.get(&group).and_then(|g| g.min_segment(pl)),
        ))
    }

    /// Appends entries (the `apply` of an append): validates `entries`
    /// (consecutive, checked by the caller) against `group` (created if
    /// new), truncates the conflicting suffix and pushes one slot per entry
    /// with its payload cached, in one hash lookup and without an
    /// intermediate vector.
    ///
    /// `record_at` is the offset of this append's record from the first
    /// record of its batch: each slot gets its payload offset relative to
    /// that batch (resolved through [`Placements`] once the batch is in a
    /// frame) and its payload CRC, also pushed onto `crcs` for the encoder.
    /// Before appending, the group's durable cached payloads are trimmed to
    /// `keep_bytes` (same lookup; not undone by a refused batch, which is
    /// harmless: they are on disk).
    ///
    /// Marks the group as queued for cache eviction. Returns the pin move,
    /// whether the group was not queued before (the caller then queues it)
    /// and whether the group now has no record in a frame (the caller lists
    /// it in `unplaced`). On `Err` nothing changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_entries(
        &mut self,
        group: GroupId,
        op_id: u64,
        entries: &[Entry],
        record_at: u64,
        crcs: &mut Vec<u32>,
        cache: CacheTrim,
        undo: &mut Vec<Undo>,
    ) -> Result<(PinMove, bool, bool), InvalidOp> {
        let first_index = entries.first().map_or(0, |e| e.index);
        let pl = &self.placements;
        let (g, created) = match self.groups.entry(group) {
            std::collections::hash_map::Entry::Occupied(o) => (o.into_mut(), false),
            std::collections::hash_map::Entry::Vacant(v) => {
                // Validate before creating anything.
                check_append(&GroupState::default(), first_index, entries.len())?;
                (v.insert(GroupState::default()), true)
            }
        };
        if !created {
            check_append(g, first_index, entries.len())?;
            if g.cached_bytes > cache.keep_bytes {
                self.cached_bytes_total -= evict_group(g, cache.durable_op, cache.keep_bytes);
            }
        } else {
            undo.push(Undo::Created(group));
        }
        #[cfg(debug_assertions)]
        let dbg_before = if created { None } else { g.min_segment(pl) };
        let keep = (first_index - g.first_index()) as usize;
        // Only a replaced front slot can move the group's oldest segment;
        // otherwise its slots and records are not even read (cache misses
        // with many groups).
        let pin_before = if keep == 0 && !created {
            Some(g.min_segment(pl))
        } else {
            None
        };
        let truncated = g.slots.split_off(keep);
        let cut: u64 = truncated.iter().map(slot_bytes).sum();
        let mut added = 0u64;
        undo.push(Undo::Append {
            group,
            appended: entries.len(),
            truncated,
            last_op: g.last_op,
            cached_bytes: g.cached_bytes,
            in_rr: g.in_rr,
            cache_lo: g.cache_lo,
        });
        // The new slots hold payloads: `cache_lo` stays a lower bound.
        g.cache_lo = g.cache_lo.min(first_index);
        // Payloads follow the entry metas, in order (see `format::encode_record`).
        let mut offset =
            record_at + (ENTRIES_FIXED_BYTES + ENTRY_META_BYTES * entries.len()) as u64;
        // One CPU-feature probe per record, not per entry.
        let crc_proto = crc32fast::Hasher::new();
        g.slots.extend(entries.iter().map(|e| {
            let bytes = e.payload.len();
            let mut h = crc_proto.clone();
            h.update(&e.payload);
            let crc = h.finalize();
            crcs.push(crc);
            let slot = Slot {
                term: e.term,
                op_id,
                segment: 0,
                offset,
                bytes: bytes as u32,
                crc,
                kind: e.kind,
                payload: Some(e.payload.clone()),
            };
            offset += bytes as u64;
            added += bytes as u64;
            slot
        }));
        g.cached_bytes = g.cached_bytes - cut + added;
        self.cached_bytes_total = self.cached_bytes_total - cut + added;
        g.last_op = op_id;
        let queue = !g.in_rr;
        g.in_rr = true;
        let pin = match pin_before {
            Some(before) => (before, g.min_segment(pl)),
            None => (None, None),
        };
        // A new group's only records are these; after a replaced front,
        // `pin.1` says.
        let unplaced = created || (pin_before.is_some() && pin.1.is_none());
        #[cfg(debug_assertions)]
        {
            if pin_before.is_none() {
                assert_eq!(
                    dbg_before,
                    g.min_segment(pl),
                    "group {group}: oldest segment moved"
                );
            }
            assert_eq!(
                unplaced,
                created || (g.min_segment(pl).is_none() && keep == 0)
            );
        }
        Ok((pin, queue, unplaced))
    }

    /// Whether a snapshot record with `marker` drops every entry of `group`
    /// (a snapshot install) rather than only those at or below its index (a
    /// compaction); mirrors `apply` and is written to disk with the record.
    pub(crate) fn snapshot_drops_all(&self, group: GroupId, marker: SnapshotMarker) -> bool {
        match self.groups.get(&group) {
            None => true,
            Some(g) => {
                !(marker == g.marker
                    || (g.term(marker.index) == Some(marker.term)
                        && marker.index <= g.last_index()))
            }
        }
    }

    /// Forgets the undo records of an accepted batch. A compaction that
    /// kept a short suffix of a long log moved the suffix into a new buffer
    /// (so that undo could keep the dropped front cheaply): the suffix goes
    /// back into the old, larger buffer, so a busy group does not regrow
    /// (reallocate and fault in) its slot buffer after every compaction.
    /// A group's slot buffer thus keeps the capacity of its longest log
    /// until the group is removed, as a `Vec` would.
    pub(crate) fn commit_undo(&mut self, undo: &mut Vec<Undo>) {
        for u in undo.drain(..) {
            let Undo::Snapshot(u) = u else {
                continue;
            };
            let SnapshotUndo {
                group,
                dropped_front,
                dropped_all,
                ..
            } = *u;
            // A snapshot install dropped the whole log: same thing.
            let mut dropped_front = match dropped_all {
                Some(all) if all.capacity() > dropped_front.capacity() => all,
                _ => dropped_front,
            };
            if dropped_front.capacity() < SLOT_BUFFER_KEEP_MIN {
                continue;
            }
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            if dropped_front.capacity() > g.slots.capacity() {
                dropped_front.clear();
                dropped_front.extend(g.slots.drain(..));
                std::mem::swap(&mut g.slots, &mut dropped_front);
            }
        }
    }

    /// Reverts changes, newest first.
    pub(crate) fn revert(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Created(group) => {
                    if let Some(g) = self.groups.remove(&group) {
                        self.cached_bytes_total -= g.cached_bytes;
                    }
                }
                Undo::Remove { group, state } => {
                    self.cached_bytes_total += state.cached_bytes;
                    self.groups.insert(group, *state);
                }
                Undo::Append {
                    group,
                    appended,
                    truncated,
                    last_op,
                    cached_bytes,
                    in_rr,
                    cache_lo,
                } => {
                    let g = self.groups.get_mut(&group).expect("undo of a live group");
                    g.in_rr = in_rr;
                    g.cache_lo = cache_lo;
                    let keep = g.slots.len() - appended;
                    g.slots.truncate(keep);
                    g.slots.extend(truncated);
                    self.cached_bytes_total =
                        self.cached_bytes_total - g.cached_bytes + cached_bytes;
                    g.cached_bytes = cached_bytes;
                    g.last_op = last_op;
                }
                Undo::HardState {
                    group,
                    prev,
                    hs_op,
                    hs_seg,
                    last_op,
                } => {
                    let g = self.groups.get_mut(&group).expect("undo of a live group");
                    g.hard_state = prev;
                    g.hs_op = hs_op;
                    g.hs_seg = hs_seg;
                    g.last_op = last_op;
                }
                Undo::Meta {
                    group,
                    prev,
                    meta_op,
                    meta_seg,
                    last_op,
                } => {
                    let g = self.groups.get_mut(&group).expect("undo of a live group");
                    g.meta = prev;
                    g.meta_op = meta_op;
                    g.meta_seg = meta_seg;
                    g.last_op = last_op;
                }
                Undo::Snapshot(u) => {
                    let SnapshotUndo {
                        group,
                        prev,
                        marker_op,
                        marker_seg,
                        last_op,
                        cached_bytes,
                        cache_lo,
                        dropped_front,
                        dropped_all,
                    } = *u;
                    let g = self.groups.get_mut(&group).expect("undo of a live group");
                    g.cache_lo = cache_lo;
                    if let Some(all) = dropped_all {
                        g.slots = all;
                    }
                    for s in dropped_front.into_iter().rev() {
                        g.slots.push_front(s);
                    }
                    g.marker = prev;
                    g.marker_op = marker_op;
                    g.marker_seg = marker_seg;
                    g.last_op = last_op;
                    self.cached_bytes_total =
                        self.cached_bytes_total - g.cached_bytes + cached_bytes;
                    g.cached_bytes = cached_bytes;
                }
            }
        }
    }

    /// Records that the batch of ops `first_op..=last_op` went to `segment`
    /// at `offset` (its first record). Touches no group: slots and records
    /// find their place by op id.
    pub(crate) fn place(&mut self, first_op: u64, last_op: u64, segment: u64, offset: u64) {
        self.placements.push(first_op, last_op, segment, offset);
    }

    /// Looks again at the groups that had no record in a frame (see
    /// `unplaced`) after batches were placed: pushes the pin move of each
    /// that has one now, and keeps listed those that still have none.
    pub(crate) fn repin_unplaced(&mut self, moves: &mut Vec<PinMove>) {
        if self.unplaced.is_empty() {
            return;
        }
        // A group may have been listed more than once: move its pin once.
        self.unplaced.sort_unstable();
        self.unplaced.dedup();
        let (groups, pl) = (&self.groups, &self.placements);
        self.unplaced.retain(|g| {
            let Some(state) = groups.get(g) else {
                return false; // removed
            };
            match state.min_segment(pl) {
                Some(seg) => {
                    moves.push((None, Some(seg)));
                    false
                }
                None => true,
            }
        });
    }

    /// Drops cached payloads of `group`, oldest first, until the group holds at
    /// most `keep_bytes`. Only durable entries (`op_id <= durable_op`, with a
    /// location) are dropped. Returns the bytes freed.
    pub(crate) fn evict(&mut self, group: GroupId, durable_op: u64, keep_bytes: u64) -> u64 {
        let Some(g) = self.groups.get_mut(&group) else {
            return 0;
        };
        let freed = evict_group(g, durable_op, keep_bytes);
        self.cached_bytes_total -= freed;
        freed
    }
}

/// [`Index::evict`] on one group's state; returns the bytes freed (the
/// caller adjusts the total).
fn evict_group(g: &mut GroupState, durable_op: u64, keep_bytes: u64) -> u64 {
    let mut freed = 0;
    let mut index = g.cache_lo.max(g.first_index());
    while g.cached_bytes > keep_bytes {
        let first = g.first_index();
        let Some(s) = g.slots.get_mut((index - first) as usize) else {
            break;
        };
        if let Some(p) = &s.payload {
            if s.op_id > durable_op {
                break;
            }
            // Durable, so in a frame (or recovered): it has a location.
            let n = p.len() as u64;
            s.payload = None;
            g.cached_bytes -= n;
            freed += n;
        }
        index += 1;
    }
    g.cache_lo = index;
    freed
}

fn check_append(g: &GroupState, first_index: u64, count: usize) -> Result<(), InvalidOp> {
    if count == 0 {
        return Err(InvalidOp::EmptyAppend);
    }
    if first_index == 0 {
        return Err(InvalidOp::ZeroIndex);
    }
    if first_index <= g.marker.index {
        return Err(InvalidOp::BelowSnapshot {
            snapshot: g.marker.index,
            index: first_index,
        });
    }
    if first_index > g.last_index() + 1 {
        return Err(InvalidOp::Gap {
            last: g.last_index(),
            first: first_index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first: u64, terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(k, &term)| Entry {
                index: first + k as u64,
                term,
                kind: 0,
                payload: Bytes::from_static(b"abcd"),
            })
            .collect()
    }

    fn append(
        ix: &mut Index,
        group: GroupId,
        op_id: u64,
        first: u64,
        terms: &[u64],
        undo: Option<&mut Vec<Undo>>,
    ) -> Result<PinMove, InvalidOp> {
        let mut local = Vec::new();
        let undo = undo.unwrap_or(&mut local);
        let mut crcs = Vec::new();
        ix.append_entries(
            group,
            op_id,
            &entries(first, terms),
            0,
            &mut crcs,
            CacheTrim::NONE,
            undo,
        )
        .map(|(pin, _, _)| pin)
    }

    #[test]
    fn failed_batch_reverts_to_the_exact_previous_state() {
        let mut ix = Index::default();
        append(&mut ix, 1, 1, 1, &[1, 1, 2], None).unwrap();
        ix.apply(
            1,
            1,
            Change::HardState {
                state: HardState {
                    term: 2,
                    vote: 3,
                    commit: 1,
                },
            },
            None,
        )
        .unwrap();
        ix.apply(
            1,
            1,
            Change::Meta {
                meta: Bytes::from_static(b"m1"),
            },
            None,
        )
        .unwrap();
        let before = format!("{:?}", ix.groups.get(&1));
        let total = ix.cached_bytes_total;
        let mut undo = Vec::new();
        append(&mut ix, 1, 2, 2, &[3, 3], Some(&mut undo)).unwrap();
        ix.apply(
            1,
            2,
            Change::Snapshot {
                marker: SnapshotMarker { index: 2, term: 3 },
            },
            Some(&mut undo),
        )
        .unwrap();
        ix.apply(
            1,
            2,
            Change::HardState {
                state: HardState {
                    term: 9,
                    vote: 0,
                    commit: 2,
                },
            },
            Some(&mut undo),
        )
        .unwrap();
        append(&mut ix, 2, 2, 1, &[1], Some(&mut undo)).unwrap();
        ix.apply(
            1,
            2,
            Change::Meta {
                meta: Bytes::from_static(b"m2"),
            },
            Some(&mut undo),
        )
        .unwrap();
        assert_eq!(ix.groups[&1].meta, Some(Bytes::from_static(b"m2")));
        ix.apply(1, 2, Change::Remove, Some(&mut undo)).unwrap();
        assert_eq!(
            append(&mut ix, 1, 2, 5, &[1], Some(&mut undo)),
            Err(InvalidOp::Gap { last: 0, first: 5 })
        );
        assert_eq!(
            ix.apply(
                3,
                2,
                Change::Meta {
                    meta: Bytes::from(vec![0u8; META_BYTES_MAX + 1])
                },
                Some(&mut undo)
            ),
            Err(InvalidOp::MetaTooLarge {
                bytes: META_BYTES_MAX as u64 + 1,
                limit: META_BYTES_MAX as u64
            })
        );
        assert!(!ix.groups.contains_key(&3));
        ix.revert(undo);
        assert_eq!(format!("{:?}", ix.groups.get(&1)), before);
        assert_eq!(ix.groups[&1].meta, Some(Bytes::from_static(b"m1")));
        assert!(!ix.groups.contains_key(&2));
        assert_eq!(ix.cached_bytes_total, total);
    }

    /// A compaction moves the shorter side of the log into its undo record
    /// (the dropped front, or the kept suffix): either way a failed batch
    /// restores the exact state, and the cached byte counts stay right.
    #[test]
    fn compaction_undo_restores_either_side() {
        let cases = [
            (3u64, 0u64),
            (8, 0),
            (3, 9),
            (8, 9),
            (10, 0),
            (3, 5),
            (8, 5),
        ];
        for (marker_index, conflict_at) in cases {
            let mut ix = Index::default();
            append(&mut ix, 1, 1, 1, &[1; 10], None).unwrap();
            // Durable and placed: trimmed to 16 bytes, slots 1..=6 lose
            // their payload (cache_lo 7).
            ix.place(1, 1, 1, 4096);
            ix.evict(1, 1, 16);
            assert_eq!((ix.groups[&1].cache_lo, ix.cached_bytes_total), (7, 16));
            if conflict_at > 0 {
                append(&mut ix, 1, 2, conflict_at, &[2; 6], None).unwrap();
            }
            let before = format!("{:?}", ix.groups.get(&1));
            let total = ix.cached_bytes_total;
            let mut undo = Vec::new();
            let term = ix.groups[&1].term(marker_index).unwrap();
            ix.apply(
                1,
                3,
                Change::Snapshot {
                    marker: SnapshotMarker {
                        index: marker_index,
                        term,
                    },
                },
                Some(&mut undo),
            )
            .unwrap();
            let g = &ix.groups[&1];
            assert_eq!(g.first_index(), marker_index + 1);
            let cached: u64 = g.slots.iter().map(slot_bytes).sum();
            assert_eq!((g.cached_bytes, ix.cached_bytes_total), (cached, cached));
            ix.revert(undo);
            assert_eq!(format!("{:?}", ix.groups.get(&1)), before);
            assert_eq!(ix.cached_bytes_total, total);
        }
    }

    #[test]
    fn snapshot_keeps_matching_suffix_or_drops_all() {
        let mut ix = Index::default();
        append(&mut ix, 1, 1, 1, &[1, 1, 2, 2], None).unwrap();
        ix.apply(
            1,
            2,
            Change::Snapshot {
                marker: SnapshotMarker { index: 2, term: 1 },
            },
            None,
        )
        .unwrap();
        let g = &ix.groups[&1];
        assert_eq!(
            (g.first_index(), g.last_index(), g.term(2), g.term(3)),
            (3, 4, Some(1), Some(2))
        );
        ix.apply(
            1,
            3,
            Change::Snapshot {
                marker: SnapshotMarker { index: 3, term: 7 },
            },
            None,
        )
        .unwrap();
        let g = &ix.groups[&1];
        assert_eq!(
            (g.first_index(), g.last_index(), g.term(3)),
            (4, 3, Some(7))
        );
        assert_eq!(ix.cached_bytes_total, 0);
        assert!(matches!(
            ix.apply(
                1,
                4,
                Change::Snapshot {
                    marker: SnapshotMarker { index: 1, term: 1 }
                },
                None
            ),
            Err(InvalidOp::BelowSnapshot { .. })
        ));
    }

    #[test]
    fn placements_resolve_by_op_and_forget_reclaimed_segments() {
        let mut pl = Placements::default();
        assert_eq!(pl.resolve(1), None);
        pl.push(1, 3, 1, 4096); // ops 1..=3 at segment 1, offset 4096
        pl.push(4, 4, 1, 8192);
        pl.push(5, 9, 2, 4096);
        assert_eq!(pl.placed_op(), 9);
        assert_eq!(pl.resolve(0), None, "op 0 is a recovered record");
        assert_eq!(pl.resolve(1), Some((1, 4096)));
        assert_eq!(pl.resolve(3), Some((1, 4096)));
        assert_eq!(pl.resolve(4), Some((1, 8192)));
        assert_eq!(pl.resolve(5), Some((2, 4096)));
        assert_eq!(pl.resolve(9), Some((2, 4096)));
        assert_eq!(pl.resolve(10), None, "not placed yet");
        pl.trim(2);
        assert_eq!(pl.len(), 1);
        assert_eq!(pl.resolve(7), Some((2, 4096)));
        pl.push(10, 10, 3, 4096);
        assert_eq!(pl.segment(10), Some(3));
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn placements_refuse_a_gap() {
        let mut pl = Placements::default();
        pl.push(1, 3, 1, 4096);
        pl.push(5, 6, 1, 8192);
    }

    /// The payload offsets a slot gets when its batch is accepted (relative
    /// to the batch) are where the encoder puts the payloads once the batch
    /// is placed in a frame, for every record kind mixed in.
    #[test]
    fn slot_locations_match_the_encoded_frame() {
        use crate::format::{encode_frame_header, encode_record, record_bytes, FRAME_HEADER_BYTES};
        use crate::types::Op;
        let payload =
            |n: usize, seed: u8| Bytes::from((0..n).map(|i| seed ^ i as u8).collect::<Vec<u8>>());
        let ent = |index: u64, n: usize, seed: u8| Entry {
            index,
            term: 3,
            kind: seed,
            payload: payload(n, seed),
        };
        let ops = vec![
            Op::HardState {
                group: 1,
                state: HardState {
                    term: 3,
                    vote: 1,
                    commit: 0,
                },
            },
            Op::Append {
                group: 1,
                entries: vec![ent(1, 5, 1), ent(2, 0, 2), ent(3, 17, 3)],
            },
            Op::Meta {
                group: 2,
                meta: Bytes::from_static(b"voters"),
            },
            Op::Append {
                group: 2,
                entries: vec![ent(1, 9, 4)],
            },
            Op::Append {
                group: 1,
                entries: vec![ent(4, 1, 5), ent(5, 300, 6)],
            },
            Op::Snapshot {
                group: 3,
                marker: SnapshotMarker { index: 7, term: 1 },
                drop_all: true,
            },
            Op::Append {
                group: 3,
                entries: vec![ent(8, 33, 7)],
            },
        ];
        // Two batches: ops 1..=3 and 4..=7, the second placed after the first.
        let mut ix = Index::default();
        let mut crcs = [Vec::new(), Vec::new()];
        let mut undo = Vec::new();
        let mut record_at = 0;
        for (k, op) in ops.iter().enumerate() {
            let (op_id, batch) = (k as u64 + 1, usize::from(k >= 3));
            if k == 3 {
                record_at = 0;
            }
            let change = match op {
                Op::Append { group, entries } => {
                    ix.append_entries(
                        *group,
                        op_id,
                        entries,
                        record_at,
                        &mut crcs[batch],
                        CacheTrim::NONE,
                        &mut undo,
                    )
                    .unwrap();
                    None
                }
                Op::HardState { state, .. } => Some(Change::HardState { state: *state }),
                Op::Meta { meta, .. } => Some(Change::Meta { meta: meta.clone() }),
                Op::Snapshot { marker, .. } => Some(Change::Snapshot { marker: *marker }),
                Op::Remove { .. } => unreachable!(),
            };
            if let Some(c) = change {
                ix.apply(op.group(), op_id, c, None).unwrap();
            }
            record_at += record_bytes(op);
        }
        // Nothing is placed: no location, no segment.
        assert!(ix
            .groups
            .values()
            .all(|g| g.min_segment(&ix.placements).is_none()));
        assert!(ix.groups[&1].slots[0].loc(&ix.placements).is_none());
        // One frame at offset 12288 of segment 5 holding both batches.
        let (seg, frame_at) = (5u64, 12288u64);
        let body: u64 = ops.iter().map(record_bytes).sum();
        let mut frame = vec![0u8; FRAME_HEADER_BYTES + body as usize];
        encode_frame_header(&mut frame, body as u32, seg, 1);
        let mut at = FRAME_HEADER_BYTES;
        let mut crc_at = [0usize, 0usize];
        for (k, op) in ops.iter().enumerate() {
            let batch = usize::from(k >= 3);
            if k == 0 || k == 3 {
                ix.place(
                    k as u64 + 1,
                    if k == 0 { 3 } else { 7 },
                    seg,
                    frame_at + at as u64,
                );
            }
            let n = match op {
                Op::Append { entries, .. } => entries.len(),
                _ => 0,
            };
            let mine = &crcs[batch][crc_at[batch]..crc_at[batch] + n];
            crc_at[batch] += n;
            at += encode_record(&mut frame[at..], seg, 1, op, mine);
        }
        // Same bytes as an encoding that computes its own CRCs.
        let mut again = vec![0u8; frame.len()];
        encode_frame_header(&mut again, body as u32, seg, 1);
        let mut at2 = FRAME_HEADER_BYTES;
        for op in &ops {
            at2 += encode_record(&mut again[at2..], seg, 1, op, &[]);
        }
        assert_eq!(frame, again);
        let mut checked = 0;
        for (group, g) in &ix.groups {
            for (i, s) in g.slots.iter().enumerate() {
                let loc = s.loc(&ix.placements).expect("placed");
                assert_eq!(loc.segment, seg);
                let off = (loc.offset - frame_at) as usize;
                let bytes = &frame[off..off + loc.bytes as usize];
                assert_eq!(
                    bytes,
                    &s.payload.as_ref().unwrap()[..],
                    "group {group} slot {i}"
                );
                assert_eq!(loc.crc, crc32fast::hash(bytes));
                checked += 1;
            }
            assert_eq!(g.min_segment(&ix.placements), Some(seg));
        }
        assert_eq!(checked, 7);
        assert_eq!(ix.groups[&1].hs_segment(&ix.placements), Some(seg));
        assert_eq!(ix.groups[&2].meta_segment(&ix.placements), Some(seg));
        assert_eq!(ix.groups[&3].marker_segment(&ix.placements), Some(seg));
    }

    /// A group with no record in a frame is pinned once its batch is
    /// placed, exactly once however often it was listed; removed groups and
    /// groups still waiting stay out of the pins.
    #[test]
    fn unplaced_groups_are_pinned_once_placed() {
        let mut ix = Index::default();
        append(&mut ix, 1, 1, 1, &[1, 1], None).unwrap();
        append(&mut ix, 2, 2, 1, &[1], None).unwrap();
        ix.unplaced.extend([1, 2, 1, 9]);
        ix.place(1, 1, 4, 4096);
        let mut moves = Vec::new();
        ix.repin_unplaced(&mut moves);
        assert_eq!(moves, vec![(None, Some(4))]);
        assert_eq!(
            ix.unplaced,
            vec![2],
            "group 2 waits for op 2; group 9 does not exist"
        );
        moves.clear();
        ix.repin_unplaced(&mut moves);
        assert!(moves.is_empty());
        ix.apply(2, 3, Change::Remove, None).unwrap();
        ix.place(2, 3, 4, 8192);
        ix.repin_unplaced(&mut moves);
        assert!(moves.is_empty() && ix.unplaced.is_empty());
        // A compaction of group 1 past its entries: its marker (op 4) is
        // its only record, placed in segment 5.
        let (before, after) = ix
            .apply(
                1,
                4,
                Change::Snapshot {
                    marker: SnapshotMarker { index: 2, term: 1 },
                },
                None,
            )
            .unwrap();
        assert_eq!((before, after), (Some(4), None));
        ix.unplaced.push(1);
        ix.place(4, 4, 5, 4096);
        ix.repin_unplaced(&mut moves);
        assert_eq!(moves, vec![(None, Some(5))]);
    }

    /// A compaction that keeps a short suffix (and a snapshot install that
    /// drops everything) leaves the group's log in its old, larger buffer
    /// once the batch is accepted, with exactly the same slots.
    #[test]
    fn accepted_compactions_keep_the_slot_buffer() {
        for (marker_index, marker_term) in [(3990u64, 1u64), (4000, 1), (4050, 9)] {
            let mut ix = Index::default();
            append(&mut ix, 1, 1, 1, &[1; 4000], None).unwrap();
            let cap = ix.groups[&1].slots.capacity();
            assert!(cap >= SLOT_BUFFER_KEEP_MIN);
            let mut undo = Vec::new();
            let marker = SnapshotMarker {
                index: marker_index,
                term: marker_term,
            };
            ix.apply(1, 2, Change::Snapshot { marker }, Some(&mut undo))
                .unwrap();
            append(&mut ix, 1, 3, marker_index + 1, &[2, 2], Some(&mut undo)).unwrap();
            let before = format!("{:?}", ix.groups[&1].slots);
            assert!(ix.groups[&1].slots.capacity() < cap, "the suffix moved out");
            ix.commit_undo(&mut undo);
            assert!(undo.is_empty());
            let g = &ix.groups[&1];
            assert_eq!(g.slots.capacity(), cap, "marker {marker_index}");
            assert_eq!(format!("{:?}", g.slots), before);
            assert_eq!(
                (g.first_index(), g.last_index()),
                (marker_index + 1, marker_index + 2)
            );
        }
    }

    /// Every accepted operation pushes one `Undo` (4096 per batch of 4096
    /// appends over as many groups): the rare snapshot variant is boxed so
    /// that the common ones set the size (was 144 bytes).
    #[test]
    fn undo_records_stay_small() {
        let size = std::mem::size_of::<Undo>();
        assert!(size <= 80, "Undo is {size} bytes");
    }

    /// `prefetch_append` is only a hint: for a missing group, an empty log
    /// and a wrapped slot buffer it changes nothing.
    #[test]
    fn prefetch_append_changes_nothing() {
        let mut ix = Index::default();
        append(&mut ix, 1, 1, 1, &[1; 8], None).unwrap();
        ix.apply(
            2,
            2,
            Change::HardState {
                state: HardState::default(),
            },
            None,
        )
        .unwrap();
        // Wrap group 1's buffer: drop its front, append past the end.
        let g = ix.groups.get_mut(&1).unwrap();
        let cap = g.slots.capacity();
        g.slots.drain(..6);
        g.marker = SnapshotMarker { index: 6, term: 1 };
        g.cache_lo = 7;
        let terms = vec![2; cap - 3];
        append(&mut ix, 1, 3, 9, &terms, None).unwrap();
        assert!(!ix.groups[&1].slots.as_slices().1.is_empty(), "wrapped");
        let before = format!("{:?}", ix.groups);
        for g in [1, 2, 3] {
            ix.prefetch_append(g);
        }
        assert_eq!(format!("{:?}", ix.groups), before);
    }
}
