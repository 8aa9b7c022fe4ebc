//! The in-memory index: per group, its hard state, snapshot marker and, for
//! every live entry, its term, kind, where it lives on disk and (while cached)
//! its payload. The same `apply` serves live writes and recovery replay, so
//! recovery gives exactly the answer the live WAL gave.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

use crate::error::InvalidOp;
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
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub term: u64,
    pub kind: u8,
    /// Operation that wrote it (0 = recovered from disk).
    pub op_id: u64,
    /// `None` until its frame is encoded.
    pub loc: Option<Loc>,
    /// Cached payload; always `Some` until the entry is durable.
    pub payload: Option<Bytes>,
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
    /// Segment holding the latest hard-state record (once encoded).
    pub hs_seg: Option<u64>,
    pub hs_op: u64,
    /// Segment holding the latest snapshot record (once encoded).
    pub marker_seg: Option<u64>,
    pub marker_op: u64,
    /// Opaque metadata (latest wins), kept in memory.
    pub meta: Option<Bytes>,
    /// Segment holding the latest meta record (once encoded).
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
    /// Oldest segment holding a live record of this group.
    pub(crate) fn min_segment(&self) -> Option<u64> {
        let entry = self.slots.front().and_then(|s| s.loc).map(|l| l.segment);
        [entry, self.hs_seg, self.marker_seg, self.meta_seg]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A change to one group, as accepted from a batch or replayed from disk.
/// (Appends go through [`Index::append_entries`].)
pub(crate) enum Change {
    HardState {
        state: HardState,
        seg: Option<u64>,
    },
    Snapshot {
        marker: SnapshotMarker,
        seg: Option<u64>,
    },
    Meta {
        meta: Bytes,
        seg: Option<u64>,
    },
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
    Snapshot {
        group: GroupId,
        prev: SnapshotMarker,
        marker_op: u64,
        marker_seg: Option<u64>,
        last_op: u64,
        cached_bytes: u64,
        cache_lo: u64,
        dropped_front: VecDeque<Slot>,
        dropped_all: Option<VecDeque<Slot>>,
    },
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

/// Per-group state of every group of the WAL.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub groups: GroupMap<GroupState>,
    pub cached_bytes_total: u64,
}

fn slot_bytes(s: &Slot) -> u64 {
    s.payload.as_ref().map_or(0, |p| p.len() as u64)
}

impl Index {
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
        let pin_before = self.groups.get(&group).and_then(|g| g.min_segment());
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
            Change::HardState { state, seg } => {
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
                if seg.is_some() {
                    g.hs_seg = seg;
                }
                g.last_op = op_id;
            }
            Change::Meta { meta, seg } => {
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
                if seg.is_some() {
                    g.meta_seg = seg;
                }
                g.last_op = op_id;
            }
            Change::Snapshot { marker, seg } => {
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
                if seg.is_some() {
                    g.marker_seg = seg;
                }
                g.last_op = op_id;
                undo.push(Undo::Snapshot {
                    group,
                    prev,
                    marker_op,
                    marker_seg,
                    last_op,
                    cached_bytes,
                    cache_lo,
                    dropped_front,
                    dropped_all,
                });
            }
        }
        Ok((
            pin_before,
            self.groups.get(&group).and_then(|g| g.min_segment()),
        ))
    }

    /// Appends entries (the `apply` of an append): validates `entries`
    /// (consecutive, checked by the caller) against `group` (created if
    /// new), truncates the conflicting suffix and pushes one slot per entry
    /// with its payload cached, in one hash lookup and without an
    /// intermediate vector. Marks the group as queued for cache eviction;
    /// returns the pin move and whether it was not queued before (the
    /// caller then queues it). On `Err` nothing changed.
    pub(crate) fn append_entries(
        &mut self,
        group: GroupId,
        op_id: u64,
        entries: &[Entry],
        undo: &mut Vec<Undo>,
    ) -> Result<(PinMove, bool), InvalidOp> {
        let first_index = entries.first().map_or(0, |e| e.index);
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
        } else {
            undo.push(Undo::Created(group));
        }
        #[cfg(debug_assertions)]
        let dbg_before = if created { None } else { g.min_segment() };
        let keep = (first_index - g.first_index()) as usize;
        // Only a replaced front slot can move the group's oldest segment;
        // otherwise its slots and records are not even read (cache misses
        // with many groups).
        let pin_before = if keep == 0 && !created {
            Some(g.min_segment())
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
        g.slots.extend(entries.iter().map(|e| {
            added += e.payload.len() as u64;
            Slot {
                term: e.term,
                kind: e.kind,
                op_id,
                loc: None,
                payload: Some(e.payload.clone()),
            }
        }));
        g.cached_bytes = g.cached_bytes - cut + added;
        self.cached_bytes_total = self.cached_bytes_total - cut + added;
        g.last_op = op_id;
        let queue = !g.in_rr;
        g.in_rr = true;
        let pin = match pin_before {
            Some(before) => (before, g.min_segment()),
            None => (None, None),
        };
        #[cfg(debug_assertions)]
        if pin_before.is_none() {
            assert_eq!(
                dbg_before,
                g.min_segment(),
                "group {group}: oldest segment moved"
            );
        }
        Ok((pin, queue))
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
                Undo::Snapshot {
                    group,
                    prev,
                    marker_op,
                    marker_seg,
                    last_op,
                    cached_bytes,
                    cache_lo,
                    dropped_front,
                    dropped_all,
                } => {
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

    /// Records where the entries written by `op_id` landed (`locs[k]` is
    /// entry `first_index + k`), unless a later operation already replaced
    /// them. In the same lookup, drops the group's cached payloads that are
    /// durable (`op_id <= durable_op`) until it holds at most `keep_bytes`.
    pub(crate) fn set_locations(
        &mut self,
        group: GroupId,
        op_id: u64,
        first_index: u64,
        locs: &[Loc],
        durable_op: u64,
        keep_bytes: u64,
    ) -> PinMove {
        let Some(g) = self.groups.get_mut(&group) else {
            return (None, None);
        };
        #[cfg(debug_assertions)]
        let dbg_before = g.min_segment();
        // Entries compacted away since are skipped.
        let first = g.first_index();
        let skip = first.saturating_sub(first_index);
        let at = first_index.max(first) - first;
        let mut pin = (None, None);
        if skip < locs.len() as u64 && at < g.slots.len() as u64 {
            // Only the front slot getting its location can move the group's
            // oldest segment: skip the min computation (and its reads) else.
            let front = at == 0 && g.slots[0].op_id == op_id;
            let before = if front { g.min_segment() } else { None };
            for (s, loc) in g.slots.range_mut(at as usize..).zip(&locs[skip as usize..]) {
                if s.op_id == op_id {
                    debug_assert!(s.loc.is_none());
                    s.loc = Some(*loc);
                }
            }
            if front {
                pin = (before, g.min_segment());
            }
        }
        #[cfg(debug_assertions)]
        if pin == (None, None) {
            assert_eq!(
                dbg_before,
                g.min_segment(),
                "group {group}: oldest segment moved"
            );
        }
        if g.cached_bytes > keep_bytes {
            self.cached_bytes_total -= evict_group(g, durable_op, keep_bytes);
        }
        pin
    }

    /// Runs `f` on `group` (if it exists); returns how its oldest live
    /// segment moved. One hash lookup.
    fn update(&mut self, group: GroupId, f: impl FnOnce(&mut GroupState)) -> PinMove {
        let Some(g) = self.groups.get_mut(&group) else {
            return (None, None);
        };
        let before = g.min_segment();
        f(g);
        (before, g.min_segment())
    }

    pub(crate) fn set_hard_state_segment(
        &mut self,
        group: GroupId,
        op_id: u64,
        seg: u64,
    ) -> PinMove {
        self.update(group, |g| {
            if g.hs_op == op_id {
                g.hs_seg = Some(seg);
            }
        })
    }

    pub(crate) fn set_meta_segment(&mut self, group: GroupId, op_id: u64, seg: u64) -> PinMove {
        self.update(group, |g| {
            if g.meta_op == op_id {
                g.meta_seg = Some(seg);
            }
        })
    }

    pub(crate) fn set_marker_segment(&mut self, group: GroupId, op_id: u64, seg: u64) -> PinMove {
        self.update(group, |g| {
            if g.marker_op == op_id {
                g.marker_seg = Some(seg);
            }
        })
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
            if s.op_id > durable_op || s.loc.is_none() {
                break;
            }
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
        ix.append_entries(group, op_id, &entries(first, terms), undo)
            .map(|(pin, _)| pin)
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
                seg: None,
            },
            None,
        )
        .unwrap();
        ix.apply(
            1,
            1,
            Change::Meta {
                meta: Bytes::from_static(b"m1"),
                seg: None,
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
                seg: None,
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
                seg: None,
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
                seg: None,
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
                    meta: Bytes::from(vec![0u8; META_BYTES_MAX + 1]),
                    seg: None
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
            let locs: Vec<Loc> = (0..10)
                .map(|k| Loc {
                    segment: 1,
                    offset: 100 * k,
                    bytes: 4,
                    crc: 0,
                })
                .collect();
            // Durable and located: trimmed to 16 bytes, slots 1..=6 lose
            // their payload (cache_lo 7).
            ix.set_locations(1, 1, 1, &locs, 1, 16);
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
                    seg: None,
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
                seg: None,
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
                seg: None,
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
                    marker: SnapshotMarker { index: 1, term: 1 },
                    seg: None
                },
                None
            ),
            Err(InvalidOp::BelowSnapshot { .. })
        ));
    }
}
