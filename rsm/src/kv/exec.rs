//! Execution of the typed commands and queries against the store.
//!
//! A write finds its key's collection (creating it if the command may),
//! checks the type, and changes the collection in place: `Rc::make_mut`
//! copies it first if a snapshot view still shares it. A collection left
//! empty is removed (streams excepted). Every result obeys
//! [`RESULT_BYTES_MAX`] and [`ITEMS_PER_RESULT_MAX`].

use std::rc::Rc;

use bytes::Bytes;

use super::collection::{
    format_incr_float, format_score, normalize_index, normalize_range, parse_float,
    stream_entry_bytes, Collection, Elem, Kind, LexBound, Picker, Score, ScoreRange, Set, StreamId,
};
use super::command::{
    parse_i64, KvError, KvResult, StreamTrim, TrimThreshold, TypedCommand, TypedQuery, XAddId,
    ZAddCompare, ZAddCondition, ITEMS_PER_RESULT_MAX, RESULT_BYTES_MAX,
};
use super::key::Key;
use super::value::Value;
use super::{check_key, KvStore};

/// Collects the items of a result within the result bounds.
struct Items {
    items: Vec<Bytes>,
    bytes: usize,
}

impl Items {
    fn with_capacity(n: usize) -> Self {
        Items {
            items: Vec::with_capacity(n.min(1 << 16)),
            bytes: 0,
        }
    }

    fn push(&mut self, b: Bytes) -> Result<(), KvError> {
        self.bytes += b.len() + 4;
        if self.bytes > RESULT_BYTES_MAX || self.items.len() >= ITEMS_PER_RESULT_MAX as usize {
            return Err(KvError::ResultTooLarge);
        }
        self.items.push(b);
        Ok(())
    }

    fn done(self) -> KvResult {
        KvResult::Items(self.items)
    }
}

fn items<'a>(it: impl Iterator<Item = &'a Elem>, n: usize) -> KvResult {
    let mut out = Items::with_capacity(n);
    for e in it {
        if let Err(e) = out.push(e.to_bytes()) {
            return KvResult::Error(e);
        }
    }
    out.done()
}

fn check_elems<'a>(mut it: impl Iterator<Item = &'a Bytes>) -> Result<(), KvError> {
    match it.find(|e| e.len() > super::VALUE_BYTES_MAX) {
        Some(_) => Err(KvError::ValueTooLarge),
        None => Ok(()),
    }
}

macro_rules! kind {
    ($c:expr, $variant:ident) => {
        match $c {
            Collection::$variant(x) => x,
            _ => unreachable!("kind checked before"),
        }
    };
}

impl KvStore {
    /// Replaces `key` (whatever it held, its deadline dropped) by a sorted
    /// set of `members` (distinct), or deletes it if there are none.
    /// Result `Count` of members stored.
    fn store_zset(
        &mut self,
        key: &[u8],
        members: Vec<(Score, Bytes)>,
    ) -> Result<KvResult, KvError> {
        if !members.is_empty() {
            check_key(key).map_or(Ok(()), Err)?;
        }
        self.remove_key(key);
        let n = members.len();
        if n > 0 {
            self.coll_mut(key, Kind::ZSet, true, |c| {
                let z = kind!(c, ZSet);
                for (s, m) in &members {
                    let new = z.set(m, *s);
                    debug_assert!(new, "stored members are distinct");
                }
            })?;
        }
        Ok(KvResult::Count(n as u64))
    }

    /// The collection of `key` if it is of `kind`; `Ok(None)` if absent.
    fn coll(&self, key: &[u8], kind: Kind) -> Result<Option<&Collection>, KvError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) if v.is_typed() => {
                let c = self
                    .typed
                    .get(&Key::new(key))
                    .expect("a marked key has a collection");
                if c.kind() == kind {
                    Ok(Some(c))
                } else {
                    Err(KvError::WrongType)
                }
            }
            Some(_) => Err(KvError::WrongType),
        }
    }

    /// The collection of `key` whatever its kind.
    pub(crate) fn collection(&self, key: &[u8]) -> Option<&Collection> {
        self.typed.get(&Key::new(key)).map(|c| &**c)
    }

    /// Runs `f` on the collection of `key` (of `kind`), creating an empty
    /// one first if absent and `create`; removes it if `f` leaves it empty.
    /// `Ok(None)` if absent and not created.
    fn coll_mut<R>(
        &mut self,
        key: &[u8],
        kind: Kind,
        create: bool,
        f: impl FnOnce(&mut Collection) -> R,
    ) -> Result<Option<R>, KvError> {
        let exists = self.coll(key, kind)?.is_some();
        let k = Key::new(key);
        if !exists {
            if !create {
                return Ok(None);
            }
            check_key(key).map_or(Ok(()), Err)?;
            self.map.upsert(key, |_| (Some(Value::typed_marker()), ()));
            self.typed.insert(k.clone(), Rc::new(Collection::new(kind)));
        }
        let rc = self
            .typed
            .get_mut(&k)
            .expect("a marked key has a collection");
        let c = Rc::make_mut(rc);
        let before = c.bytes() as u64;
        let r = f(c);
        if cfg!(debug_assertions) {
            c.check_invariants();
        }
        self.typed_bytes = self.typed_bytes - before + c.bytes() as u64;
        if c.vanishes() {
            self.map.remove(key);
            self.typed.remove(&k);
            self.deadlines.clear(key);
        }
        Ok(Some(r))
    }

    /// Executes a typed write.
    ///
    /// Kept out of line: the string commands' paths stay small.
    #[inline(never)]
    pub(crate) fn execute_typed(&mut self, cmd: &TypedCommand) -> KvResult {
        match self.try_execute_typed(cmd) {
            Ok(r) => r,
            Err(e) => KvResult::Error(e),
        }
    }

    fn try_execute_typed(&mut self, cmd: &TypedCommand) -> Result<KvResult, KvError> {
        Ok(match cmd {
            TypedCommand::ListPush {
                key,
                left,
                only_existing,
                values,
            } => {
                check_elems(values.iter())?;
                let n = self.coll_mut(key, Kind::List, !only_existing, |c| {
                    let l = kind!(c, List);
                    for v in values {
                        l.push(v, *left);
                    }
                    l.items.len()
                })?;
                KvResult::Len(n.unwrap_or(0) as u64)
            }
            TypedCommand::ListPop { key, left, count } => {
                if let Some(c) = self.coll(key, Kind::List)? {
                    // Check the result's size first: an error pops nothing.
                    let l = kind!(c, List);
                    let n = count.unwrap_or(1).min(l.items.len() as u64) as usize;
                    let sizes = l.items.iter().map(|e| e.len() + 4);
                    let bytes: usize = if *left {
                        sizes.take(n).sum()
                    } else {
                        sizes.rev().take(n).sum()
                    };
                    fits(bytes, n)?;
                }
                let popped = self.coll_mut(key, Kind::List, false, |c| {
                    let l = kind!(c, List);
                    let n = count.unwrap_or(1).min(l.items.len() as u64) as usize;
                    (0..n)
                        .map(|_| l.pop(*left).expect("counted").to_bytes())
                        .collect::<Vec<_>>()
                })?;
                match (popped, count) {
                    (None, None) => KvResult::Value(None),
                    (None, Some(_)) => KvResult::Value(None),
                    (Some(items), None) => KvResult::Value(items.into_iter().next()),
                    (Some(items), Some(_)) => KvResult::Items(items),
                }
            }
            TypedCommand::ListSet { key, index, value } => {
                check_elems(std::iter::once(value))?;
                let r = self.coll_mut(key, Kind::List, false, |c| {
                    let l = kind!(c, List);
                    let i =
                        normalize_index(*index, l.items.len()).ok_or(KvError::IndexOutOfRange)?;
                    l.bytes = l.bytes + value.len() - l.items[i].len();
                    l.items[i] = Elem::new(value);
                    Ok(KvResult::Ok)
                })?;
                r.unwrap_or(Err(KvError::NoSuchKey))?
            }
            TypedCommand::ListRem { key, count, value } => {
                let n = self.coll_mut(key, Kind::List, false, |c| {
                    let l = kind!(c, List);
                    let limit = if *count == 0 {
                        usize::MAX
                    } else {
                        count.unsigned_abs().min(usize::MAX as u64) as usize
                    };
                    let mut removed = 0usize;
                    let old = std::mem::take(&mut l.items);
                    let mut kept: Vec<Elem> = Vec::with_capacity(old.len());
                    let matches = |e: &Elem| e.as_slice() == &value[..];
                    if *count >= 0 {
                        for e in old {
                            if removed < limit && matches(&e) {
                                removed += 1;
                            } else {
                                kept.push(e);
                            }
                        }
                    } else {
                        for e in old.into_iter().rev() {
                            if removed < limit && matches(&e) {
                                removed += 1;
                            } else {
                                kept.push(e);
                            }
                        }
                        kept.reverse();
                    }
                    l.bytes -= removed * value.len();
                    l.items = kept.into();
                    removed
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::ListTrim { key, start, stop } => {
                self.coll_mut(key, Kind::List, false, |c| {
                    let l = kind!(c, List);
                    match normalize_range(*start, *stop, l.items.len()) {
                        None => {
                            l.items.clear();
                            l.bytes = 0;
                        }
                        Some((a, b)) => {
                            l.items.truncate(b + 1);
                            l.items.drain(..a);
                            l.bytes = l.items.iter().map(Elem::len).sum();
                        }
                    }
                })?;
                KvResult::Ok
            }
            TypedCommand::ListInsert {
                key,
                after,
                pivot,
                value,
            } => {
                check_elems(std::iter::once(value))?;
                let n = self.coll_mut(key, Kind::List, false, |c| {
                    let l = kind!(c, List);
                    match l.items.iter().position(|e| e.as_slice() == &pivot[..]) {
                        None => -1,
                        Some(i) => {
                            l.items
                                .insert(if *after { i + 1 } else { i }, Elem::new(value));
                            l.bytes += value.len();
                            l.items.len() as i64
                        }
                    }
                })?;
                KvResult::Int(n.unwrap_or(0))
            }
            TypedCommand::ListMove {
                key,
                dst,
                from_left,
                to_left,
            } => {
                // Every check first: an error moves nothing.
                if self.coll(key, Kind::List)?.is_none() {
                    return Ok(KvResult::Value(None));
                }
                if self.coll(dst, Kind::List)?.is_none() {
                    check_key(dst).map_or(Ok(()), Err)?;
                }
                // A stored list is never empty; were one, nothing moves.
                if key == dst {
                    let moved = self.coll_mut(key, Kind::List, false, |c| {
                        let l = kind!(c, List);
                        let e = l.pop(*from_left)?;
                        l.push(e.as_slice(), *to_left);
                        Some(e.to_bytes())
                    })?;
                    return Ok(KvResult::Value(moved.flatten()));
                }
                let popped =
                    self.coll_mut(key, Kind::List, false, |c| kind!(c, List).pop(*from_left))?;
                let Some(e) = popped.flatten() else {
                    return Ok(KvResult::Value(None));
                };
                self.coll_mut(dst, Kind::List, true, |c| {
                    kind!(c, List).push(e.as_slice(), *to_left)
                })?;
                KvResult::Value(Some(e.to_bytes()))
            }
            TypedCommand::SetMove { key, dst, member } => {
                // As Redis: an absent source answers 0 before the
                // destination's type is looked at.
                let Some(c) = self.coll(key, Kind::Set)? else {
                    return Ok(KvResult::Count(0));
                };
                let present = kind!(c, Set).index.contains_key(&member[..]);
                if self.coll(dst, Kind::Set)?.is_none() {
                    check_key(dst).map_or(Ok(()), Err)?;
                }
                if key == dst || !present {
                    return Ok(KvResult::Count(u64::from(present)));
                }
                self.coll_mut(key, Kind::Set, false, |c| kind!(c, Set).remove(member))?;
                self.coll_mut(dst, Kind::Set, true, |c| kind!(c, Set).add(member))?;
                KvResult::Count(1)
            }
            TypedCommand::SetInterStore { key, sources }
            | TypedCommand::SetUnionStore { key, sources }
            | TypedCommand::SetDiffStore { key, sources } => {
                let op = match cmd {
                    TypedCommand::SetInterStore { .. } => SetOp::Inter,
                    TypedCommand::SetUnionStore { .. } => SetOp::Union,
                    _ => SetOp::Diff,
                };
                let members: Vec<Elem> = self
                    .combine(op, sources.iter(), usize::MAX)?
                    .into_iter()
                    .cloned()
                    .collect();
                if !members.is_empty() {
                    check_key(key).map_or(Ok(()), Err)?;
                }
                // The destination is replaced whatever it held (its
                // deadline goes with it), as Redis' STORE forms do.
                self.remove_key(key);
                let n = members.len();
                if n > 0 {
                    self.coll_mut(key, Kind::Set, true, |c| {
                        let s = kind!(c, Set);
                        for m in &members {
                            let new = s.add(m.as_slice());
                            debug_assert!(new, "combined members are distinct");
                        }
                    })?;
                }
                KvResult::Count(n as u64)
            }
            TypedCommand::SetAdd { key, members } => {
                check_elems(members.iter())?;
                let n = self.coll_mut(key, Kind::Set, true, |c| {
                    let s = kind!(c, Set);
                    members.iter().filter(|m| s.add(m)).count()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::SetRem { key, members } => {
                let n = self.coll_mut(key, Kind::Set, false, |c| {
                    let s = kind!(c, Set);
                    members.iter().filter(|m| s.remove(m)).count()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::SetPop { key, count, seed } => {
                let pop = |s: &mut super::collection::Set| {
                    let n = count.unwrap_or(1).min(s.members.len() as u64) as usize;
                    let mut picker = Picker::new(*seed);
                    let mut out = Items::with_capacity(n);
                    for _ in 0..n {
                        let i = picker.below(s.members.len());
                        out.push(s.remove_at(i).to_bytes())?;
                    }
                    Ok::<_, KvError>(out.items)
                };
                if let Some(c) = self.coll(key, Kind::Set)? {
                    // The result may be too large only if the set is: then
                    // pop from a copy first, so that an error pops nothing.
                    let s = kind!(c, Set);
                    let n = count.unwrap_or(1).min(s.members.len() as u64) as usize;
                    if fits(s.bytes + 4 * n, n).is_err() {
                        pop(&mut s.clone())?;
                    }
                }
                let popped = self.coll_mut(key, Kind::Set, false, |c| pop(kind!(c, Set)))?;
                match (popped, count) {
                    (None, None) => KvResult::Value(None),
                    (None, Some(_)) => KvResult::Items(Vec::new()),
                    (Some(items), None) => KvResult::Value(items?.into_iter().next()),
                    (Some(items), Some(_)) => KvResult::Items(items?),
                }
            }
            TypedCommand::HashSet {
                key,
                only_new,
                pairs,
            } => {
                check_elems(pairs.iter().flat_map(|(f, v)| [f, v]))?;
                let n = self.coll_mut(key, Kind::Hash, true, |c| {
                    let h = kind!(c, Hash);
                    let mut added = 0;
                    for (f, v) in pairs {
                        if *only_new && h.map.contains_key(&f[..]) {
                            continue;
                        }
                        added += usize::from(h.set(f, v));
                    }
                    added
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::HashDel { key, fields } => {
                let n = self.coll_mut(key, Kind::Hash, false, |c| {
                    let h = kind!(c, Hash);
                    fields.iter().filter(|f| h.remove(f)).count()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::HashIncrBy { key, field, delta } => {
                check_elems(std::iter::once(field))?;
                // Check before creating anything: an error leaves no trace.
                if let Some(c) = self.coll(key, Kind::Hash)? {
                    let h = kind!(c, Hash);
                    if let Some(v) = h.map.get(&field[..]) {
                        let cur = parse_i64(v.as_slice()).ok_or(KvError::HashNotInteger)?;
                        cur.checked_add(*delta).ok_or(KvError::Overflow)?;
                    }
                }
                let n = self.coll_mut(key, Kind::Hash, true, |c| {
                    let h = kind!(c, Hash);
                    let cur = h
                        .map
                        .get(&field[..])
                        .and_then(|v| parse_i64(v.as_slice()))
                        .unwrap_or(0);
                    let n = cur.checked_add(*delta).expect("checked above");
                    h.set(field, n.to_string().as_bytes());
                    n
                })?;
                KvResult::Int(n.expect("created"))
            }
            TypedCommand::HashIncrByFloat { key, field, delta } => {
                check_elems(std::iter::once(field))?;
                // Refusals first: they leave no trace.
                let cur = match self.coll(key, Kind::Hash)? {
                    Some(c) => match kind!(c, Hash).map.get(&field[..]) {
                        Some(v) => match parse_float(v.as_slice()) {
                            Some(f) => f,
                            None => return Err(KvError::HashNotFloat),
                        },
                        None => 0.0,
                    },
                    None => 0.0,
                };
                let new = cur + delta;
                if !new.is_finite() {
                    return Err(KvError::NanOrInfinity);
                }
                let text = format_incr_float(new);
                self.coll_mut(key, Kind::Hash, true, |c| kind!(c, Hash).set(field, &text))?;
                KvResult::Value(Some(text))
            }
            TypedCommand::ZRemRangeByScore {
                key,
                min,
                min_exclusive,
                max,
                max_exclusive,
            } => {
                let range = ScoreRange {
                    min: *min,
                    min_exclusive: *min_exclusive,
                    max: *max,
                    max_exclusive: *max_exclusive,
                };
                let n = self.coll_mut(key, Kind::ZSet, false, |c| {
                    let z = kind!(c, ZSet);
                    let doomed: Vec<Elem> = z.by_score(&range).map(|(_, m)| m.clone()).collect();
                    for m in &doomed {
                        z.remove(m.as_slice());
                    }
                    doomed.len()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::ZUnionStore { key, sources, .. }
            | TypedCommand::ZInterStore { key, sources, .. }
            | TypedCommand::ZDiffStore { key, sources } => {
                let (op, weights, aggregate) = match cmd {
                    TypedCommand::ZUnionStore {
                        weights, aggregate, ..
                    } => (SetOp::Union, &weights[..], *aggregate),
                    TypedCommand::ZInterStore {
                        weights, aggregate, ..
                    } => (SetOp::Inter, &weights[..], *aggregate),
                    _ => (SetOp::Diff, &[][..], 0),
                };
                let members: Vec<(Score, Bytes)> = self
                    .zcombine(op, sources.iter(), weights, aggregate, usize::MAX)?
                    .into_iter()
                    .map(|(s, m)| (s, Bytes::copy_from_slice(m)))
                    .collect();
                // The destination is replaced whatever it held (its
                // deadline goes with it), as Redis' STORE forms do.
                self.store_zset(key, members)?
            }
            TypedCommand::ZRangeStore { key, range } => {
                let members = match self.try_read_typed(range)? {
                    KvResult::Items(members) => members,
                    other => unreachable!("a range query answers items: {other:?}"),
                };
                // The range query checked the source's type.
                let stored: Vec<(Score, Bytes)> = match self.coll(range.key(), Kind::ZSet)? {
                    None => Vec::new(),
                    Some(c) => {
                        let z = kind!(c, ZSet);
                        members
                            .into_iter()
                            .map(|m| (*z.scores.get(&m[..]).expect("a member of the range"), m))
                            .collect()
                    }
                };
                self.store_zset(key, stored)?
            }
            TypedCommand::SortStore { key, sort } => {
                let items = match self.try_read_typed(sort)? {
                    KvResult::Items(items) => items,
                    other => unreachable!("a sort answers items: {other:?}"),
                };
                if !items.is_empty() {
                    check_key(key).map_or(Ok(()), Err)?;
                }
                self.remove_key(key);
                let n = items.len();
                if n > 0 {
                    self.coll_mut(key, Kind::List, true, |c| {
                        let l = kind!(c, List);
                        for v in &items {
                            l.push(v, false);
                        }
                    })?;
                }
                KvResult::Count(n as u64)
            }
            TypedCommand::ZRemRangeByLex { key, min, max } => {
                let (min, max) = lex_bounds(min, max)?;
                let n = self.coll_mut(key, Kind::ZSet, false, |c| {
                    let z = kind!(c, ZSet);
                    let doomed: Vec<Elem> = z.by_lex(min, max).map(|(_, m)| m.clone()).collect();
                    for m in &doomed {
                        z.remove(m.as_slice());
                    }
                    doomed.len()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::ZRemRangeByRank { key, start, stop } => {
                let n = self.coll_mut(key, Kind::ZSet, false, |c| {
                    let z = kind!(c, ZSet);
                    let Some((a, b)) = normalize_range(*start, *stop, z.order.len()) else {
                        return 0;
                    };
                    let doomed: Vec<Elem> = z
                        .order
                        .iter()
                        .skip(a)
                        .take(b - a + 1)
                        .map(|(_, m)| m.clone())
                        .collect();
                    for m in &doomed {
                        z.remove(m.as_slice());
                    }
                    doomed.len()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::ZAdd {
                key,
                condition,
                compare,
                changed,
                incr,
                pairs,
            } => {
                check_elems(pairs.iter().map(|(_, m)| m))?;
                let mut scores = Vec::with_capacity(pairs.len());
                for (s, _) in pairs {
                    scores.push(Score::new(*s).ok_or(KvError::NotFloat)?);
                }
                if *incr {
                    // One pair (the RESP layer checks); compute first so an
                    // error changes nothing.
                    let (Some((_, m)), Some(by)) = (pairs.first(), scores.first()) else {
                        return Ok(KvResult::Value(None));
                    };
                    let cur = self
                        .coll(key, Kind::ZSet)?
                        .and_then(|c| kind!(c, ZSet).scores.get(&m[..]).copied());
                    let skip = matches!(
                        (condition, cur),
                        (ZAddCondition::IfAbsent, Some(_)) | (ZAddCondition::IfPresent, None)
                    );
                    if skip {
                        return Ok(KvResult::Value(None));
                    }
                    let new = cur.map_or(0.0, |s| s.0) + by.0;
                    let new = Score::new(new).ok_or(KvError::ScoreNaN)?;
                    let blocked = match (compare, cur) {
                        (ZAddCompare::Greater, Some(c)) => new <= c,
                        (ZAddCompare::Less, Some(c)) => new >= c,
                        _ => false,
                    };
                    if blocked {
                        return Ok(KvResult::Value(None));
                    }
                    self.coll_mut(key, Kind::ZSet, true, |c| kind!(c, ZSet).set(m, new))?;
                    return Ok(KvResult::Value(Some(format_score(new.0))));
                }
                let create = *condition != ZAddCondition::IfPresent;
                let n = self.coll_mut(key, Kind::ZSet, create, |c| {
                    let z = kind!(c, ZSet);
                    let mut added = 0usize;
                    let mut updated = 0usize;
                    for ((_, m), s) in pairs.iter().zip(&scores) {
                        match z.scores.get(&m[..]).copied() {
                            Some(cur) => {
                                let ok = *condition != ZAddCondition::IfAbsent
                                    && match compare {
                                        ZAddCompare::None => true,
                                        ZAddCompare::Greater => *s > cur,
                                        ZAddCompare::Less => *s < cur,
                                    };
                                if ok && *s != cur {
                                    z.set(m, *s);
                                    updated += 1;
                                }
                            }
                            None => {
                                if *condition != ZAddCondition::IfPresent {
                                    z.set(m, *s);
                                    added += 1;
                                }
                            }
                        }
                    }
                    if *changed {
                        added + updated
                    } else {
                        added
                    }
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::ZRem { key, members } => {
                let n = self.coll_mut(key, Kind::ZSet, false, |c| {
                    let z = kind!(c, ZSet);
                    members.iter().filter(|m| z.remove(m)).count()
                })?;
                KvResult::Count(n.unwrap_or(0) as u64)
            }
            TypedCommand::ZPop { key, max, count } => {
                if let Some(c) = self.coll(key, Kind::ZSet)? {
                    // A score's text is at most 24 bytes.
                    let z = kind!(c, ZSet);
                    let n = count.unwrap_or(1).min(z.scores.len() as u64) as usize;
                    let sizes = z.order.iter().map(|(_, m)| m.len() + 32);
                    let bytes: usize = if *max {
                        sizes.rev().take(n).sum()
                    } else {
                        sizes.take(n).sum()
                    };
                    fits(bytes, 2 * n)?;
                }
                let popped = self.coll_mut(key, Kind::ZSet, false, |c| {
                    let z = kind!(c, ZSet);
                    let n = count.unwrap_or(1).min(z.scores.len() as u64) as usize;
                    let mut out = Vec::with_capacity(2 * n);
                    for _ in 0..n {
                        let (m, s) = z.pop(*max).expect("counted");
                        out.push(m.to_bytes());
                        out.push(format_score(s.0));
                    }
                    out
                })?;
                KvResult::Items(popped.unwrap_or_default())
            }
            TypedCommand::MultiPop {
                keys,
                zset,
                end,
                count,
            } => {
                let count = Some((*count).max(1));
                for key in keys {
                    let one = if *zset {
                        TypedCommand::ZPop {
                            key: key.clone(),
                            max: *end,
                            count,
                        }
                    } else {
                        TypedCommand::ListPop {
                            key: key.clone(),
                            left: *end,
                            count,
                        }
                    };
                    match self.try_execute_typed(&one)? {
                        KvResult::Items(items) if !items.is_empty() => {
                            let mut out = Vec::with_capacity(items.len() + 1);
                            out.push(key.clone());
                            out.extend(items);
                            return Ok(KvResult::Items(out));
                        }
                        _ => {}
                    }
                }
                KvResult::Items(Vec::new())
            }
            TypedCommand::XAdd {
                key,
                id,
                trim,
                no_mkstream,
                fields,
            } => {
                check_elems(fields.iter())?;
                // The id first: an error creates nothing.
                let last = match self.coll(key, Kind::Stream)? {
                    Some(c) => Some(kind!(c, Stream).last),
                    None if *no_mkstream => return Ok(KvResult::Value(None)),
                    None => None,
                };
                let floor = last.unwrap_or_default();
                let new = match *id {
                    XAddId::Auto { now_ms } => {
                        let t = StreamId { ms: now_ms, seq: 0 };
                        if t > floor {
                            t
                        } else {
                            floor.next().ok_or(KvError::StreamIdExhausted)?
                        }
                    }
                    XAddId::Explicit { ms, seq } => {
                        let t = StreamId { ms, seq };
                        if t == StreamId::default() {
                            return Err(KvError::StreamIdZero);
                        }
                        if t <= floor {
                            return Err(KvError::StreamIdTooSmall);
                        }
                        t
                    }
                    XAddId::AutoSeq { ms } => {
                        if ms < floor.ms {
                            return Err(KvError::StreamIdTooSmall);
                        } else if ms == floor.ms {
                            if floor.seq == u64::MAX {
                                return Err(KvError::StreamIdTooSmall);
                            }
                            StreamId {
                                ms,
                                seq: floor.seq + 1,
                            }
                        } else {
                            StreamId { ms, seq: 0 }
                        }
                    }
                };
                if new == StreamId::default() {
                    return Err(KvError::StreamIdZero);
                }
                self.coll_mut(key, Kind::Stream, true, |c| {
                    let s = kind!(c, Stream);
                    let fields: Vec<Elem> = fields.iter().map(|f| Elem::new(f)).collect();
                    s.bytes += stream_entry_bytes(&fields);
                    s.entries.insert(new, fields);
                    s.last = new;
                    if let Some(t) = trim {
                        trim_stream(s, t);
                    }
                })?;
                KvResult::Value(Some(new.to_bytes()))
            }
            TypedCommand::XTrim { key, trim } => {
                let evicted = self.coll_mut(key, Kind::Stream, false, |c| {
                    trim_stream(kind!(c, Stream), trim)
                })?;
                KvResult::Count(evicted.unwrap_or(0))
            }
            TypedCommand::XDel { key, ids } => {
                let deleted = self.coll_mut(key, Kind::Stream, false, |c| {
                    let s = kind!(c, Stream);
                    let mut deleted = 0;
                    for &(ms, seq) in ids {
                        if let Some(f) = s.entries.remove(&StreamId { ms, seq }) {
                            s.bytes -= stream_entry_bytes(&f);
                            deleted += 1;
                        }
                    }
                    deleted
                })?;
                KvResult::Count(deleted.unwrap_or(0))
            }
            TypedCommand::XSetId {
                key,
                last,
                entries_added,
            } => {
                let Some(c) = self.coll(key, Kind::Stream)? else {
                    return Err(KvError::NoSuchKey);
                };
                let s = kind!(c, Stream);
                let new = StreamId {
                    ms: last.0,
                    seq: last.1,
                };
                if let Some((top, _)) = s.entries.last_key_value() {
                    if new < *top {
                        return Err(KvError::XSetIdTooSmall);
                    }
                    if entries_added.is_some_and(|n| n < s.entries.len() as u64) {
                        return Err(KvError::XSetIdEntriesAdded);
                    }
                }
                self.coll_mut(key, Kind::Stream, false, |c| kind!(c, Stream).last = new)?;
                KvResult::Ok
            }
        })
    }

    /// Answers a typed query.
    ///
    /// Kept out of line: the string commands' paths stay small.
    #[inline(never)]
    pub(crate) fn read_typed(&self, q: &TypedQuery) -> KvResult {
        match self.try_read_typed(q) {
            Ok(r) => r,
            Err(e) => KvResult::Error(e),
        }
    }

    fn try_read_typed(&self, q: &TypedQuery) -> Result<KvResult, KvError> {
        Ok(match q {
            TypedQuery::Type { key } => KvResult::Value(self.map.get(key).map(|v| {
                if v.is_typed() {
                    let c = self.collection(key).expect("a marked key has a collection");
                    Bytes::from_static(c.kind().name().as_bytes())
                } else {
                    Bytes::from_static(b"string")
                }
            })),
            TypedQuery::ListLen { key } => KvResult::Len(
                self.coll(key, Kind::List)?
                    .map_or(0, |c| kind!(c, List).items.len()) as u64,
            ),
            TypedQuery::ListRange { key, start, stop } => match self.coll(key, Kind::List)? {
                None => KvResult::Items(Vec::new()),
                Some(c) => {
                    let l = kind!(c, List);
                    match normalize_range(*start, *stop, l.items.len()) {
                        None => KvResult::Items(Vec::new()),
                        Some((a, b)) => items(l.items.range(a..=b), b - a + 1),
                    }
                }
            },
            TypedQuery::ListIndex { key, index } => {
                KvResult::Value(self.coll(key, Kind::List)?.and_then(|c| {
                    let l = kind!(c, List);
                    normalize_index(*index, l.items.len()).map(|i| l.items[i].to_bytes())
                }))
            }
            TypedQuery::ListPos {
                key,
                element,
                rank,
                count,
                maxlen,
            } => {
                let Some(c) = self.coll(key, Kind::List)? else {
                    return Ok(match count {
                        None => KvResult::Value(None),
                        Some(_) => KvResult::Items(Vec::new()),
                    });
                };
                let l = kind!(c, List);
                let len = l.items.len();
                let skip = rank.unsigned_abs().max(1) - 1;
                let limit = match count {
                    None | Some(0) => u64::MAX,
                    Some(n) => *n,
                };
                let look = if *maxlen == 0 {
                    len
                } else {
                    (*maxlen).min(len as u64) as usize
                };
                let it: Box<dyn Iterator<Item = (usize, &Elem)>> = if *rank < 0 {
                    Box::new(l.items.iter().enumerate().rev().take(look))
                } else {
                    Box::new(l.items.iter().enumerate().take(look))
                };
                let mut found = it
                    .filter(|(_, e)| e.as_slice() == &element[..])
                    .skip(skip.min(usize::MAX as u64) as usize)
                    .take(limit.min(usize::MAX as u64) as usize)
                    .map(|(i, _)| i);
                match count {
                    None => match found.next() {
                        Some(i) => KvResult::Int(i as i64),
                        None => KvResult::Value(None),
                    },
                    Some(_) => {
                        let mut out = Items::with_capacity(0);
                        for i in found {
                            out.push(Bytes::from(i.to_string()))?;
                        }
                        out.done()
                    }
                }
            }
            TypedQuery::SetMIsMember { key, members } => {
                let s = self.coll(key, Kind::Set)?.map(|c| kind!(c, Set));
                let mut out = Items::with_capacity(members.len());
                for m in members {
                    let yes = s.is_some_and(|s| s.index.contains_key(&m[..]));
                    out.push(Bytes::from_static(if yes { b"1" } else { b"0" }))?;
                }
                out.done()
            }
            TypedQuery::SetInter { key, others }
            | TypedQuery::SetUnion { key, others }
            | TypedQuery::SetDiff { key, others } => {
                let op = match q {
                    TypedQuery::SetInter { .. } => SetOp::Inter,
                    TypedQuery::SetUnion { .. } => SetOp::Union,
                    _ => SetOp::Diff,
                };
                let members = self.combine(op, std::iter::once(key).chain(others), usize::MAX)?;
                items(members.into_iter(), 0)
            }
            TypedQuery::SetInterCard { key, others, limit } => {
                let limit = match *limit {
                    0 => usize::MAX,
                    n => n.min(usize::MAX as u64) as usize,
                };
                let n = self
                    .combine(SetOp::Inter, std::iter::once(key).chain(others), limit)?
                    .len();
                KvResult::Count(n as u64)
            }
            TypedQuery::HashStrLen { key, field } => KvResult::Count(
                self.coll(key, Kind::Hash)?
                    .and_then(|c| kind!(c, Hash).map.get(&field[..]))
                    .map_or(0, Elem::len) as u64,
            ),
            TypedQuery::HashRandField {
                key,
                count,
                with_values,
                seed,
            } => {
                let Some(c) = self.coll(key, Kind::Hash)? else {
                    return Ok(match count {
                        None => KvResult::Value(None),
                        Some(_) => KvResult::Items(Vec::new()),
                    });
                };
                let h = kind!(c, Hash);
                let mut picker = Picker::new(*seed);
                let Some(count) = count else {
                    let i = picker.below(h.map.len());
                    return Ok(KvResult::Value(h.map.keys().nth(i).map(Elem::to_bytes)));
                };
                // O(fields): a hash has no positions of its own.
                let entries: Vec<(&Elem, &Elem)> = h.map.iter().collect();
                let mut out = Items::with_capacity(0);
                let per_pick = 1 + u64::from(*with_values);
                picks(entries.len(), *count, per_pick, &mut picker, |i| {
                    let (f, v) = entries[i];
                    out.push(f.to_bytes())?;
                    if *with_values {
                        out.push(v.to_bytes())?;
                    }
                    Ok(())
                })?;
                out.done()
            }
            TypedQuery::ZRandMember {
                key,
                count,
                with_scores,
                seed,
            } => {
                let Some(c) = self.coll(key, Kind::ZSet)? else {
                    return Ok(match count {
                        None => KvResult::Value(None),
                        Some(_) => KvResult::Items(Vec::new()),
                    });
                };
                let z = kind!(c, ZSet);
                let mut picker = Picker::new(*seed);
                let Some(count) = count else {
                    let i = picker.below(z.order.len());
                    return Ok(KvResult::Value(
                        z.order.iter().nth(i).map(|(_, m)| m.to_bytes()),
                    ));
                };
                // O(members): a sorted set has no positions of its own.
                let members: Vec<&(Score, Elem)> = z.order.iter().collect();
                let mut out = Items::with_capacity(0);
                let per_pick = 1 + u64::from(*with_scores);
                picks(members.len(), *count, per_pick, &mut picker, |i| {
                    let (s, m) = members[i];
                    out.push(m.to_bytes())?;
                    if *with_scores {
                        out.push(format_score(s.0))?;
                    }
                    Ok(())
                })?;
                out.done()
            }
            TypedQuery::ZRangeByScore {
                key,
                min,
                min_exclusive,
                max,
                max_exclusive,
                rev,
                with_scores,
                offset,
                count,
            } => {
                let Some(c) = self.coll(key, Kind::ZSet)? else {
                    return Ok(KvResult::Items(Vec::new()));
                };
                let z = kind!(c, ZSet);
                let range = ScoreRange {
                    min: *min,
                    min_exclusive: *min_exclusive,
                    max: *max,
                    max_exclusive: *max_exclusive,
                };
                let it: Box<dyn Iterator<Item = &(Score, Elem)>> = if *rev {
                    Box::new(z.by_score(&range).rev())
                } else {
                    Box::new(z.by_score(&range))
                };
                let take = count.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
                let mut out = Items::with_capacity(0);
                for (s, m) in it
                    .skip((*offset).min(usize::MAX as u64) as usize)
                    .take(take)
                {
                    out.push(m.to_bytes())?;
                    if *with_scores {
                        out.push(format_score(s.0))?;
                    }
                }
                out.done()
            }
            TypedQuery::ZCount {
                key,
                min,
                min_exclusive,
                max,
                max_exclusive,
            } => {
                let range = ScoreRange {
                    min: *min,
                    min_exclusive: *min_exclusive,
                    max: *max,
                    max_exclusive: *max_exclusive,
                };
                KvResult::Count(
                    self.coll(key, Kind::ZSet)?
                        .map_or(0, |c| kind!(c, ZSet).by_score(&range).count())
                        as u64,
                )
            }
            TypedQuery::Sort {
                key,
                alpha,
                desc,
                sorted,
                offset,
                count,
            } => {
                let c = match self.map.get(key) {
                    None => return Ok(KvResult::Items(Vec::new())),
                    Some(v) if !v.is_typed() => return Err(KvError::WrongType),
                    Some(_) => self.collection(key).expect("a marked key has a collection"),
                };
                let mut elems: Vec<&Elem> = match c {
                    Collection::List(l) => l.items.iter().collect(),
                    Collection::Set(s) => s.members.iter().collect(),
                    Collection::ZSet(z) => z.order.iter().map(|(_, m)| m).collect(),
                    _ => return Err(KvError::WrongType),
                };
                if *sorted {
                    sort_elems(&mut elems, *alpha, *desc)?;
                } else if *desc && c.kind() == Kind::ZSet {
                    elems.reverse();
                }
                let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                let n = count.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
                let picked = elems.iter().skip(start).take(n);
                fits(
                    picked.clone().map(|e| e.len() + 4).sum(),
                    picked.clone().count(),
                )?;
                KvResult::Items(picked.map(|e| e.to_bytes()).collect())
            }
            TypedQuery::ZRangeByLex {
                key,
                min,
                max,
                rev,
                offset,
                count,
            } => {
                let (min, max) = lex_bounds(min, max)?;
                let Some(c) = self.coll(key, Kind::ZSet)? else {
                    return Ok(KvResult::Items(Vec::new()));
                };
                let z = kind!(c, ZSet);
                let it = if *rev {
                    Box::new(z.by_lex(min, max).rev())
                } else {
                    z.by_lex(min, max)
                };
                let take = count.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize;
                let mut out = Items::with_capacity(0);
                for (_, m) in it
                    .skip((*offset).min(usize::MAX as u64) as usize)
                    .take(take)
                {
                    out.push(m.to_bytes())?;
                }
                out.done()
            }
            TypedQuery::ZUnion {
                key,
                others,
                with_scores,
                ..
            }
            | TypedQuery::ZInter {
                key,
                others,
                with_scores,
                ..
            }
            | TypedQuery::ZDiff {
                key,
                others,
                with_scores,
            } => {
                let (op, weights, aggregate) = match q {
                    TypedQuery::ZUnion {
                        weights, aggregate, ..
                    } => (SetOp::Union, &weights[..], *aggregate),
                    TypedQuery::ZInter {
                        weights, aggregate, ..
                    } => (SetOp::Inter, &weights[..], *aggregate),
                    _ => (SetOp::Diff, &[][..], 0),
                };
                let keys = std::iter::once(key).chain(others);
                let members = self.zcombine(op, keys, weights, aggregate, usize::MAX)?;
                let mut out = Items::with_capacity(0);
                for (s, m) in members {
                    out.push(Bytes::copy_from_slice(m))?;
                    if *with_scores {
                        out.push(format_score(s.0))?;
                    }
                }
                out.done()
            }
            TypedQuery::ZInterCard { key, others, limit } => {
                let limit = match *limit {
                    0 => usize::MAX,
                    n => n.min(usize::MAX as u64) as usize,
                };
                let keys = std::iter::once(key).chain(others);
                let n = self.zcombine(SetOp::Inter, keys, &[], 0, limit)?.len();
                KvResult::Count(n as u64)
            }
            TypedQuery::ZLexCount { key, min, max } => {
                let (min, max) = lex_bounds(min, max)?;
                KvResult::Count(
                    self.coll(key, Kind::ZSet)?
                        .map_or(0, |c| kind!(c, ZSet).by_lex(min, max).count())
                        as u64,
                )
            }
            TypedQuery::ZMScore { key, members } => {
                let z = self.coll(key, Kind::ZSet)?.map(|c| kind!(c, ZSet));
                KvResult::Values(
                    members
                        .iter()
                        .map(|m| {
                            z.and_then(|z| z.scores.get(&m[..]))
                                .map(|s| format_score(s.0))
                        })
                        .collect(),
                )
            }
            TypedQuery::SetMembers { key } => match self.coll(key, Kind::Set)? {
                None => KvResult::Items(Vec::new()),
                Some(c) => {
                    let s = kind!(c, Set);
                    items(s.members.iter(), s.members.len())
                }
            },
            TypedQuery::SetIsMember { key, member } => KvResult::Count(u64::from(
                self.coll(key, Kind::Set)?
                    .is_some_and(|c| kind!(c, Set).index.contains_key(&member[..])),
            )),
            TypedQuery::SetCard { key } => KvResult::Count(
                self.coll(key, Kind::Set)?
                    .map_or(0, |c| kind!(c, Set).members.len()) as u64,
            ),
            TypedQuery::SetRandMember { key, count, seed } => {
                let s = self.coll(key, Kind::Set)?.map(|c| kind!(c, Set));
                let mut picker = Picker::new(*seed);
                match (s, count) {
                    (None, None) => KvResult::Value(None),
                    (None, Some(_)) => KvResult::Items(Vec::new()),
                    (Some(s), None) => {
                        KvResult::Value(Some(s.members[picker.below(s.members.len())].to_bytes()))
                    }
                    (Some(s), Some(c)) if *c < 0 => {
                        let n = c.unsigned_abs().min(u64::from(ITEMS_PER_RESULT_MAX) + 1) as usize;
                        let mut out = Items::with_capacity(n);
                        for _ in 0..n {
                            out.push(s.members[picker.below(s.members.len())].to_bytes())?;
                        }
                        out.done()
                    }
                    (Some(s), Some(c)) => {
                        let len = s.members.len();
                        let n = (*c as u64).min(len as u64) as usize;
                        if n == len {
                            return Ok(items(s.members.iter(), len));
                        }
                        // A partial Fisher-Yates shuffle of the positions:
                        // distinct picks, O(n) extra memory only for the
                        // positions touched.
                        let mut swapped: std::collections::BTreeMap<usize, usize> =
                            std::collections::BTreeMap::new();
                        let mut out = Items::with_capacity(n);
                        for i in 0..n {
                            let j = i + picker.below(len - i);
                            let at_j = *swapped.get(&j).unwrap_or(&j);
                            let at_i = *swapped.get(&i).unwrap_or(&i);
                            swapped.insert(j, at_i);
                            out.push(s.members[at_j].to_bytes())?;
                        }
                        out.done()
                    }
                }
            }
            TypedQuery::HashGet { key, field } => KvResult::Value(
                self.coll(key, Kind::Hash)?
                    .and_then(|c| kind!(c, Hash).map.get(&field[..]).map(Elem::to_bytes)),
            ),
            TypedQuery::HashMGet { key, fields } => {
                let h = self.coll(key, Kind::Hash)?.map(|c| kind!(c, Hash));
                let mut bytes = 0usize;
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    let v = h.and_then(|h| h.map.get(&f[..]).map(Elem::to_bytes));
                    bytes += v.as_ref().map_or(0, Bytes::len);
                    if bytes > RESULT_BYTES_MAX {
                        return Err(KvError::ResultTooLarge);
                    }
                    out.push(v);
                }
                KvResult::Values(out)
            }
            TypedQuery::HashLen { key } => KvResult::Count(
                self.coll(key, Kind::Hash)?
                    .map_or(0, |c| kind!(c, Hash).map.len()) as u64,
            ),
            TypedQuery::HashExists { key, field } => KvResult::Count(u64::from(
                self.coll(key, Kind::Hash)?
                    .is_some_and(|c| kind!(c, Hash).map.contains_key(&field[..])),
            )),
            TypedQuery::HashGetAll { key } => match self.coll(key, Kind::Hash)? {
                None => KvResult::Items(Vec::new()),
                Some(c) => {
                    let h = kind!(c, Hash);
                    items(h.map.iter().flat_map(|(f, v)| [f, v]), 2 * h.map.len())
                }
            },
            TypedQuery::HashKeys { key } => match self.coll(key, Kind::Hash)? {
                None => KvResult::Items(Vec::new()),
                Some(c) => items(kind!(c, Hash).map.keys(), kind!(c, Hash).map.len()),
            },
            TypedQuery::HashVals { key } => match self.coll(key, Kind::Hash)? {
                None => KvResult::Items(Vec::new()),
                Some(c) => items(kind!(c, Hash).map.values(), kind!(c, Hash).map.len()),
            },
            TypedQuery::ZScore { key, member } => KvResult::Value(
                self.coll(key, Kind::ZSet)?
                    .and_then(|c| kind!(c, ZSet).scores.get(&member[..]))
                    .map(|s| format_score(s.0)),
            ),
            TypedQuery::ZCard { key } => KvResult::Count(
                self.coll(key, Kind::ZSet)?
                    .map_or(0, |c| kind!(c, ZSet).scores.len()) as u64,
            ),
            TypedQuery::ZRange {
                key,
                start,
                stop,
                rev,
                with_scores,
            } => {
                let Some(c) = self.coll(key, Kind::ZSet)? else {
                    return Ok(KvResult::Items(Vec::new()));
                };
                let z = kind!(c, ZSet);
                let Some((a, b)) = normalize_range(*start, *stop, z.order.len()) else {
                    return Ok(KvResult::Items(Vec::new()));
                };
                let n = b - a + 1;
                let mut out = Items::with_capacity(if *with_scores { 2 * n } else { n });
                let it: Box<dyn Iterator<Item = &(Score, Elem)>> = if *rev {
                    Box::new(z.order.iter().rev().skip(a).take(n))
                } else {
                    Box::new(z.order.iter().skip(a).take(n))
                };
                for (s, m) in it {
                    out.push(m.to_bytes())?;
                    if *with_scores {
                        out.push(format_score(s.0))?;
                    }
                }
                out.done()
            }
            TypedQuery::ZRank { key, member, rev } => {
                let Some(c) = self.coll(key, Kind::ZSet)? else {
                    return Ok(KvResult::Value(None));
                };
                let z = kind!(c, ZSet);
                let Some(s) = z.scores.get(&member[..]) else {
                    return Ok(KvResult::Value(None));
                };
                let below = z.order.range(..(*s, Elem::new(member))).count();
                let rank = if *rev {
                    z.order.len() - 1 - below
                } else {
                    below
                };
                KvResult::Int(rank as i64)
            }
            TypedQuery::ScanType {
                start,
                end,
                limit,
                type_name,
            } => {
                let limit = (*limit).min(super::SCAN_LIMIT_MAX) as usize;
                let mut entries = Vec::new();
                let mut next = None;
                for (n, (k, v)) in self.map.range(start, end.as_deref()).enumerate() {
                    if n >= limit.max(1) {
                        next = Some(Bytes::copy_from_slice(k));
                        break;
                    }
                    let name = if v.is_typed() {
                        self.collection(k)
                            .expect("a marked key has a collection")
                            .kind()
                            .name()
                    } else {
                        "string"
                    };
                    if name.as_bytes().eq_ignore_ascii_case(type_name) {
                        entries.push((Bytes::copy_from_slice(k), Bytes::new()));
                    }
                }
                KvResult::Entries { entries, next }
            }
            TypedQuery::StreamLen { key } => KvResult::Len(
                self.coll(key, Kind::Stream)?
                    .map_or(0, |c| kind!(c, Stream).entries.len()) as u64,
            ),
            TypedQuery::StreamRange {
                key,
                start,
                end,
                count,
                rev,
            } => {
                let Some(c) = self.coll(key, Kind::Stream)? else {
                    return Ok(KvResult::Records(Vec::new()));
                };
                let s = kind!(c, Stream);
                let start = StreamId {
                    ms: start.0,
                    seq: start.1,
                };
                let end = StreamId {
                    ms: end.0,
                    seq: end.1,
                };
                if start > end {
                    return Ok(KvResult::Records(Vec::new()));
                }
                let limit = count.unwrap_or(u64::MAX);
                let range = s.entries.range(start..=end);
                let it: Box<dyn Iterator<Item = (&StreamId, &Vec<Elem>)>> = if *rev {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                let mut out = Vec::new();
                let mut bytes = 0usize;
                let mut n_items = 0usize;
                for (id, fields) in it.take(limit.min(usize::MAX as u64) as usize) {
                    bytes += stream_entry_bytes(fields) + 4 * fields.len();
                    n_items += 1 + fields.len();
                    if bytes > RESULT_BYTES_MAX || n_items > ITEMS_PER_RESULT_MAX as usize {
                        return Err(KvError::ResultTooLarge);
                    }
                    out.push((id.to_bytes(), fields.iter().map(Elem::to_bytes).collect()));
                }
                KvResult::Records(out)
            }
        })
    }
}

/// The bounds of a lex range; the decoder refused any other text, so
/// `Malformed` only for a command built by hand.
fn lex_bounds<'a>(min: &'a [u8], max: &'a [u8]) -> Result<(LexBound<'a>, LexBound<'a>), KvError> {
    match (LexBound::parse(min), LexBound::parse(max)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(KvError::Malformed),
    }
}

/// A set operation of `SINTER`, `SUNION`, `SDIFF` and their STORE forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    Inter,
    Union,
    Diff,
}

impl KvStore {
    /// The members of `op` over the sets of `keys` (absent keys are empty
    /// sets; any other type is `WrongType`, checked for every key first),
    /// at most `limit` of them, in a deterministic order: the smallest
    /// set's (the first of the smallest) for an intersection, the first
    /// set's then each next new member's for a union, the first set's for
    /// a difference.
    fn combine<'a>(
        &'a self,
        op: SetOp,
        keys: impl Iterator<Item = &'a Bytes>,
        limit: usize,
    ) -> Result<Vec<&'a Elem>, KvError> {
        let mut sets: Vec<Option<&Set>> = Vec::new();
        for k in keys {
            sets.push(self.coll(k, Kind::Set)?.map(|c| kind!(c, Set)));
        }
        debug_assert!(!sets.is_empty(), "the decoder refuses no keys");
        let mut out = Vec::new();
        match op {
            SetOp::Inter => {
                if sets.iter().any(Option::is_none) {
                    return Ok(out);
                }
                let sets: Vec<&Set> = sets.into_iter().flatten().collect();
                let Some(small) = sets.iter().min_by_key(|s| s.members.len()) else {
                    return Ok(out);
                };
                for m in &small.members {
                    if out.len() >= limit {
                        break;
                    }
                    if sets.iter().all(|s| s.index.contains_key(m.as_slice())) {
                        out.push(m);
                    }
                }
            }
            SetOp::Union => {
                let mut seen = std::collections::BTreeSet::new();
                for m in sets.iter().flatten().flat_map(|s| s.members.iter()) {
                    if out.len() >= limit {
                        break;
                    }
                    if seen.insert(m.as_slice()) {
                        out.push(m);
                    }
                }
            }
            SetOp::Diff => {
                let Some(Some(first)) = sets.first() else {
                    return Ok(out);
                };
                for m in &first.members {
                    if out.len() >= limit {
                        break;
                    }
                    if !sets[1..]
                        .iter()
                        .flatten()
                        .any(|s| s.index.contains_key(m.as_slice()))
                    {
                        out.push(m);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl KvStore {
    /// The members and scores of `op` over the sorted sets (or sets, whose
    /// members score 1) of `keys`, in score order, at most `limit` (taken
    /// in the first source's order before sorting): absent keys are empty;
    /// any other type is `WrongType`, checked for every key first. Each
    /// score is multiplied by its source's weight (`weights` empty: 1; a
    /// NaN product is 0, as in Redis), then combined in source order by
    /// `aggregate` (0 SUM, `inf + -inf` being 0; 1 MIN; 2 MAX). A
    /// difference keeps the first source's scores.
    fn zcombine<'a>(
        &'a self,
        op: SetOp,
        keys: impl Iterator<Item = &'a Bytes>,
        weights: &[f64],
        aggregate: u8,
        limit: usize,
    ) -> Result<Vec<(Score, &'a [u8])>, KvError> {
        /// One source: its members and their scores.
        enum Source<'s> {
            Absent,
            Set(&'s Set),
            ZSet(&'s super::collection::ZSet),
        }
        impl<'s> Source<'s> {
            fn len(&self) -> usize {
                match self {
                    Source::Absent => 0,
                    Source::Set(s) => s.members.len(),
                    Source::ZSet(z) => z.scores.len(),
                }
            }
            fn get(&self, m: &[u8]) -> Option<f64> {
                match self {
                    Source::Absent => None,
                    Source::Set(s) => s.index.contains_key(m).then_some(1.0),
                    Source::ZSet(z) => z.scores.get(m).map(|s| s.0),
                }
            }
            fn iter(&self) -> Box<dyn Iterator<Item = (&'s [u8], f64)> + 's> {
                match *self {
                    Source::Absent => Box::new(std::iter::empty()),
                    Source::Set(s) => Box::new(s.members.iter().map(|m| (m.as_slice(), 1.0))),
                    Source::ZSet(z) => Box::new(z.scores.iter().map(|(m, s)| (m.as_slice(), s.0))),
                }
            }
        }
        let mut sources = Vec::new();
        for k in keys {
            sources.push(match self.map.get(k) {
                None => Source::Absent,
                Some(_) => match self.collection(k) {
                    Some(Collection::Set(s)) => Source::Set(s),
                    Some(Collection::ZSet(z)) => Source::ZSet(z),
                    _ => return Err(KvError::WrongType),
                },
            });
        }
        debug_assert!(!sources.is_empty(), "the decoder refuses no keys");
        let weight = |i: usize, s: f64| {
            let w = weights.get(i).copied().unwrap_or(1.0) * s;
            if w.is_nan() {
                0.0
            } else {
                w
            }
        };
        let combine = |a: f64, b: f64| match aggregate {
            1 => a.min(b),
            2 => a.max(b),
            _ => {
                let sum = a + b;
                if sum.is_nan() {
                    0.0
                } else {
                    sum
                }
            }
        };
        let mut out: std::collections::BTreeMap<&[u8], f64> = std::collections::BTreeMap::new();
        match op {
            SetOp::Union => {
                for (i, src) in sources.iter().enumerate() {
                    for (m, s) in src.iter() {
                        let v = weight(i, s);
                        let room = out.len() < limit;
                        match out.get_mut(m) {
                            Some(acc) => *acc = combine(*acc, v),
                            None if room => {
                                out.insert(m, v);
                            }
                            None => {}
                        }
                    }
                }
            }
            SetOp::Inter => {
                if sources.iter().all(|s| s.len() > 0) {
                    for (m, s) in sources[0].iter() {
                        if out.len() >= limit {
                            break;
                        }
                        let mut acc = weight(0, s);
                        let mut everywhere = true;
                        for (i, src) in sources.iter().enumerate().skip(1) {
                            match src.get(m) {
                                Some(s) => acc = combine(acc, weight(i, s)),
                                None => {
                                    everywhere = false;
                                    break;
                                }
                            }
                        }
                        if everywhere {
                            out.insert(m, acc);
                        }
                    }
                }
            }
            SetOp::Diff => {
                for (m, s) in sources[0].iter() {
                    if out.len() >= limit {
                        break;
                    }
                    if sources[1..].iter().all(|src| src.get(m).is_none()) {
                        out.insert(m, s);
                    }
                }
            }
        }
        let mut members: Vec<(Score, &[u8])> = out
            .into_iter()
            .map(|(m, s)| (Score::new(s).unwrap_or(Score(0.0)), m))
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        Ok(members)
    }
}

/// The positions `HRANDFIELD`/`ZRANDMEMBER key count` pick among `len`
/// elements (as `SRANDMEMBER` does): `count > 0` distinct ones (all of
/// them, in order, if `count` is at least `len`), `count < 0` `-count`
/// picks with repeats, in the order the seeded `picker` draws them, each
/// handed to `f` (whose error stops the picking). Each pick makes
/// `items_per_pick` items of the result: more picks than a result may
/// hold fail at once, before any work.
fn picks(
    len: usize,
    count: i64,
    items_per_pick: u64,
    picker: &mut Picker,
    mut f: impl FnMut(usize) -> Result<(), KvError>,
) -> Result<(), KvError> {
    if len == 0 || count == 0 {
        return Ok(());
    }
    if count < 0 {
        let n = count.unsigned_abs();
        if n.saturating_mul(items_per_pick) > u64::from(ITEMS_PER_RESULT_MAX) {
            return Err(KvError::ResultTooLarge);
        }
        for _ in 0..n {
            f(picker.below(len))?;
        }
        return Ok(());
    }
    let n = (count as u64).min(len as u64) as usize;
    if n == len {
        return (0..len).try_for_each(f);
    }
    // A partial Fisher-Yates shuffle of the positions, touching only n.
    let mut swapped: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for i in 0..n {
        let j = i + picker.below(len - i);
        let at_j = *swapped.get(&j).unwrap_or(&j);
        let at_i = *swapped.get(&i).unwrap_or(&i);
        swapped.insert(j, at_i);
        f(at_j)?;
    }
    Ok(())
}

/// Sorts SORT's elements: by bytes with `alpha`, else as numbers (ties by
/// bytes, as Redis breaks them), reversed with `desc`.
///
/// # Errors
/// [`KvError::NotSortable`] if an element is not a number (without
/// `alpha`).
fn sort_elems(elems: &mut [&Elem], alpha: bool, desc: bool) -> Result<(), KvError> {
    if alpha {
        elems.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
    } else {
        let mut keyed = Vec::with_capacity(elems.len());
        for e in elems.iter() {
            let f = parse_float(e.as_slice()).ok_or(KvError::NotSortable)?;
            keyed.push((f, *e));
        }
        keyed.sort_by(|(fa, a), (fb, b)| {
            fa.partial_cmp(fb)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.as_slice().cmp(b.as_slice()))
        });
        for (slot, (_, e)) in elems.iter_mut().zip(keyed) {
            *slot = e;
        }
    }
    if desc {
        elems.reverse();
    }
    Ok(())
}

/// Whether a result of `bytes` bytes and `n` items is within bounds.
fn fits(bytes: usize, n: usize) -> Result<(), KvError> {
    if bytes > RESULT_BYTES_MAX || n > ITEMS_PER_RESULT_MAX as usize {
        Err(KvError::ResultTooLarge)
    } else {
        Ok(())
    }
}

/// Evicts the oldest entries of `s` as `t` says; the number evicted.
/// Entry by entry for `~` too (see [`StreamTrim`]), at most `t.limit`
/// entries if it is not 0.
fn trim_stream(s: &mut super::collection::Stream, t: &StreamTrim) -> u64 {
    let mut evicted = 0;
    while t.limit == 0 || evicted < t.limit {
        let Some((first, _)) = s.entries.first_key_value() else {
            break;
        };
        let evict = match t.threshold {
            TrimThreshold::MaxLen(n) => s.entries.len() as u64 > n,
            TrimThreshold::MinId { ms, seq } => *first < StreamId { ms, seq },
        };
        if !evict {
            break;
        }
        let (_, f) = s.entries.pop_first().expect("non-empty");
        s.bytes -= stream_entry_bytes(&f);
        evicted += 1;
    }
    evicted
}
