//! The checker against known linearizable and non-linearizable histories,
//! and a proptest: histories produced by the sequential model with random
//! real-time overlap are always accepted.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An op on key "k" that completed with `ret` between `a` and `b` ms.
fn ok(p: u64, call: Call, a: u64, b: u64, ret: Ret) -> Op {
    Op::new(p, "k", call, ms(a), Some(ms(b)), Outcome::Ok(ret))
}

fn info(p: u64, call: Call, a: u64) -> Op {
    Op::new(p, "k", call, ms(a), None, Outcome::Info)
}

fn read(p: u64, a: u64, b: u64, v: Option<i64>) -> Op {
    ok(p, Call::Read, a, b, Ret::Value(v))
}

fn write(p: u64, v: i64, a: u64, b: u64) -> Op {
    ok(p, Call::Write(v), a, b, Ret::Unit)
}

fn verdict(history: &[Op]) -> Report {
    check(history, &CheckLimits::default())
}

#[track_caller]
fn assert_linearizable(history: &[Op]) {
    let r = verdict(history);
    assert!(r.is_valid(), "expected linearizable:\n{r}");
}

#[track_caller]
fn assert_violation(history: &[Op]) -> Violation {
    let r = verdict(history);
    assert!(!r.is_valid(), "expected a violation:\n{r}");
    let (_, v) = r
        .violations()
        .next()
        .expect("a violation, not inconclusive");
    v.clone()
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert_linearizable(&[]);
    assert_linearizable(&[
        read(1, 0, 1, None),
        write(1, 1, 2, 3),
        read(2, 4, 5, Some(1)),
        ok(1, Call::Incr(2), 6, 7, Ret::Int(3)),
        ok(2, Call::Swap(10), 8, 9, Ret::Value(Some(3))),
        ok(3, Call::SetNx(4), 10, 11, Ret::Bool(false)),
        ok(3, Call::Delete, 12, 13, Ret::Int(1)),
        ok(1, Call::SetNx(4), 14, 15, Ret::Bool(true)),
        ok(
            2,
            Call::Cas {
                expect: Some(4),
                new: 5,
            },
            16,
            17,
            Ret::Bool(true),
        ),
        ok(
            2,
            Call::Cas {
                expect: Some(4),
                new: 6,
            },
            18,
            19,
            Ret::Bool(false),
        ),
        read(1, 20, 21, Some(5)),
    ]);
}

#[test]
fn concurrent_ops_may_take_effect_in_either_order() {
    // The read overlaps the write: it may see the old or the new value, and
    // once one read saw the new value a later one must too.
    assert_linearizable(&[
        write(1, 1, 0, 100),
        read(2, 10, 20, None),
        read(3, 30, 40, Some(1)),
    ]);
    assert_linearizable(&[write(1, 1, 0, 100), read(2, 10, 20, Some(1))]);
    // Two overlapping writes, reads fix their order as 2 then 1.
    assert_linearizable(&[
        write(1, 1, 0, 50),
        write(2, 2, 0, 50),
        read(3, 10, 60, Some(2)),
        read(3, 70, 80, Some(1)),
    ]);
}

#[test]
fn stale_read_is_a_violation() {
    let v = assert_violation(&[
        write(1, 1, 0, 10),
        write(2, 2, 20, 30),
        read(3, 40, 50, Some(1)),
    ]);
    assert_eq!(v.key, "k");
    assert_eq!(v.blocking.call, Call::Read);
    assert_eq!(v.state(), Some(2));
    let text = v.to_string();
    assert!(text.contains("read -> value 1"), "{text}");
    assert!(text.contains("would answer value 2"), "{text}");
}

#[test]
fn new_then_old_read_inversion_is_a_violation() {
    assert_violation(&[
        write(1, 1, 0, 100),
        read(2, 10, 20, Some(1)),
        read(3, 30, 40, None),
    ]);
}

#[test]
fn lost_write_is_a_violation() {
    let history = vec![write(1, 1, 0, 10), write(2, 2, 20, 30)];
    let final_read = read(9, 100, 110, Some(1));
    let mut all = history.clone();
    all.push(final_read.clone());
    assert_violation(&all);
    let lost = lost_writes(&history, std::slice::from_ref(&final_read));
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].write.call, Call::Write(2));
    assert!(lost[0].to_string().contains("LOST WRITE on key k"));
    // An acknowledged write followed by a concurrent, unknown write is not
    // reported lost by the direct check (it may have been overwritten).
    let mut with_unknown = history.clone();
    with_unknown.push(info(3, Call::Write(7), 25));
    assert!(lost_writes(&with_unknown, &[read(9, 100, 110, Some(7))]).is_empty());
    // A write acknowledged then read back as nil: lost.
    assert_eq!(
        lost_writes(&[write(1, 5, 0, 10)], &[read(9, 20, 30, None)]).len(),
        1
    );
    assert!(lost_writes(&[write(1, 5, 0, 10)], &[read(9, 20, 30, Some(5))]).is_empty());
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let v = assert_violation(&[write(1, 1, 0, 10), read(2, 5, 20, Some(7))]);
    assert_eq!(v.blocking.outcome, Outcome::Ok(Ret::Value(Some(7))));
    assert_violation(&[read(2, 5, 20, Some(0))]);
}

#[test]
fn overwritten_write_that_reappears_is_a_violation() {
    assert_violation(&[
        write(1, 1, 0, 10),
        write(2, 2, 20, 30),
        read(3, 40, 50, Some(2)),
        read(3, 60, 70, Some(1)),
    ]);
}

#[test]
fn lost_update_of_increments_and_swaps_is_a_violation() {
    // Two increments from nil both answering 1: one of them was lost.
    assert_violation(&[
        ok(1, Call::Incr(1), 0, 10, Ret::Int(1)),
        ok(2, Call::Incr(1), 0, 10, Ret::Int(1)),
    ]);
    assert_linearizable(&[
        ok(1, Call::Incr(1), 0, 10, Ret::Int(2)),
        ok(2, Call::Incr(1), 0, 10, Ret::Int(1)),
    ]);
    // Two swaps that both saw nil.
    assert_violation(&[
        ok(1, Call::Swap(1), 0, 10, Ret::Value(None)),
        ok(2, Call::Swap(2), 0, 10, Ret::Value(None)),
    ]);
    // Two compare-and-sets of the same expected value that both succeeded.
    assert_violation(&[
        write(1, 1, 0, 1),
        ok(
            1,
            Call::Cas {
                expect: Some(1),
                new: 2,
            },
            2,
            10,
            Ret::Bool(true),
        ),
        ok(
            2,
            Call::Cas {
                expect: Some(1),
                new: 3,
            },
            2,
            10,
            Ret::Bool(true),
        ),
    ]);
}

#[test]
fn unknown_outcomes_may_apply_later_or_never() {
    // Never applied.
    assert_linearizable(&[info(1, Call::Write(1), 0), read(2, 10, 20, None)]);
    // Applied long after its invocation.
    assert_linearizable(&[
        info(1, Call::Write(1), 0),
        read(2, 10, 20, None),
        read(2, 1000, 1010, Some(1)),
    ]);
    // An unknown increment counts once at most.
    assert_linearizable(&[info(1, Call::Incr(1), 0), read(2, 10, 20, Some(1))]);
    assert_violation(&[info(1, Call::Incr(1), 0), read(2, 10, 20, Some(2))]);
    // Once seen applied, it cannot be undone.
    assert_violation(&[
        info(1, Call::Write(1), 0),
        read(2, 10, 20, Some(1)),
        read(2, 30, 40, None),
    ]);
    // Not applied before its invocation.
    assert_violation(&[read(2, 0, 5, Some(1)), info(1, Call::Write(1), 10)]);
    // An unknown read is dropped, whatever it returned.
    assert_linearizable(&[info(1, Call::Read, 0), write(1, 3, 1, 2)]);
}

#[test]
fn definite_failures_never_take_effect() {
    let failed = Op::new(1, "k", Call::Write(5), ms(0), Some(ms(10)), Outcome::Fail);
    assert_violation(&[failed.clone(), read(2, 20, 30, Some(5))]);
    assert_linearizable(&[failed, read(2, 20, 30, None)]);
}

#[test]
fn keys_are_checked_independently() {
    let mut other = write(1, 1, 0, 10);
    other.key = "j".into();
    let mut other_read = read(2, 20, 30, Some(1));
    other_read.key = "j".into();
    // "k" stays nil although "j" was written.
    let r = verdict(&[other, other_read, read(3, 40, 50, None)]);
    assert!(r.is_valid(), "{r}");
    assert_eq!(r.keys.len(), 2);
}

#[test]
fn report_names_key_blocking_op_and_window() {
    let history = vec![
        write(1, 1, 0, 10),
        write(2, 2, 20, 30),
        write(4, 4, 35, 90),
        read(3, 40, 50, Some(1)),
    ];
    let r = verdict(&history);
    let text = r.to_string();
    assert!(text.contains("key k: NOT LINEARIZABLE"), "{text}");
    assert!(text.contains("BLOCKING"), "{text}");
    let (_, v) = r.violations().next().expect("violation");
    // The window is the read and the write concurrent with it; before it
    // the register held 2.
    let calls: Vec<Call> = v.window.iter().map(|(o, _)| o.call).collect();
    assert_eq!(calls, vec![Call::Write(4), Call::Read], "{text}");
    assert_eq!(v.state_before_window, Some(2), "{text}");
    assert_eq!(v.blocking.call, Call::Read);
}

#[test]
fn search_bound_gives_inconclusive_not_valid() {
    // Many concurrent unknown writes and reads force a large search.
    let mut history = Vec::new();
    for i in 0..40 {
        history.push(info(i, Call::Write(i as i64), 0));
    }
    for i in 0..40 {
        history.push(read(100 + i, 10 + i, 11 + i, Some(((i * 7) % 40) as i64)));
    }
    let r = check(
        &history,
        &CheckLimits {
            configurations_max: 50,
            threads: 1,
            ..CheckLimits::default()
        },
    );
    assert!(!r.is_valid());
    assert!(matches!(r.keys["k"], KeyResult::Inconclusive { .. }), "{r}");
    assert!(r.to_string().contains("INCONCLUSIVE"));
}

#[test]
fn history_file_round_trips() {
    let history = vec![
        write(1, 3_000_012, 0, 10),
        info(2, Call::Incr(-1), 5),
        ok(
            3,
            Call::Cas {
                expect: None,
                new: 4,
            },
            6,
            7,
            Ret::Bool(true),
        ),
        ok(3, Call::Swap(9), 8, 9, Ret::Value(None)),
        ok(3, Call::Delete, 10, 11, Ret::Int(0)),
        ok(3, Call::SetNx(1), 12, 13, Ret::Bool(false)),
        read(4, 14, 15, Some(-5)),
        Op::new(5, "k", Call::Read, ms(16), Some(ms(17)), Outcome::Fail),
    ];
    let text = format!("# a comment\n\n{}", format_history(&history));
    let parsed = parse_history(&text).expect("parses");
    assert_eq!(parsed, history);
    let err = parse_history("1 k 0 10 frobnicate 3 -> ok").unwrap_err();
    assert_eq!(err.reason, "bad call");
    assert!(parse_history("1 k 0 10 read").is_err());
    assert!(parse_history("1 k x 10 read -> ok").is_err());
    assert!(parse_history("1 k 0 10 read -> value x").is_err());
}

#[test]
fn recorder_keeps_invocation_order_and_unknown_outcomes() {
    let rec = Recorder::new();
    let a = rec.invoke(1, "k", Call::Write(1));
    let b = rec.invoke(2, "k", Call::Read);
    rec.complete(a, Outcome::Ok(Ret::Unit));
    rec.complete(b, Outcome::Info);
    let c = rec.invoke(3, "k", Call::Incr(1));
    let h = rec.history();
    assert_eq!(h.len(), 3);
    assert!(h[0].complete.is_some() && h[1].complete.is_none());
    assert_eq!(h[2].outcome, Outcome::Info, "uncompleted op is unknown");
    assert!(h[0].invoke <= h[1].invoke && h[1].invoke <= h[2].invoke);
    rec.complete(c, Outcome::Ok(Ret::Int(2)));
    assert!(check(&rec.history(), &CheckLimits::default()).is_valid());
}

/// A generated op: its call, the fate of its outcome (0 ok, 1 unknown and
/// applied, 2 unknown and not applied, 3 failed), and how far its
/// invocation and completion lie from its linearization point.
type GenOp = (u8, i64, u8, u64, u64, u8);

fn gen_call(kind: u8, arg: i64, expect_current: Option<i64>) -> Call {
    match kind % 7 {
        0 | 1 => Call::Read,
        2 => Call::Write(arg),
        3 => Call::Incr(arg % 5),
        4 => Call::Swap(arg),
        5 => {
            if arg % 3 == 0 {
                Call::Delete
            } else {
                Call::SetNx(arg)
            }
        }
        _ => Call::Cas {
            expect: if arg % 2 == 0 {
                expect_current
            } else {
                Some(arg)
            },
            new: arg + 1,
        },
    }
}

/// Builds a history: ops take effect in sequence at linearization points
/// 10 ms apart on their key's register; each op's invocation and
/// completion are spread around its point by up to 60 ms, so ops overlap
/// heavily in real time.
fn generate(ops: &[GenOp]) -> (Vec<Op>, [State; 3]) {
    let mut states: [State; 3] = [None; 3];
    let mut history = Vec::new();
    for (i, &(kind, arg, fate, before, after, key)) in ops.iter().enumerate() {
        let key_ix = usize::from(key % 3);
        let point = 100 + 10 * i as u64;
        let call = gen_call(kind, arg, states[key_ix]);
        let fate = fate % 8;
        let (outcome, complete) = match fate {
            // Mostly ok.
            0..=4 => {
                let (next, ret) = apply(states[key_ix], call);
                states[key_ix] = next;
                (Outcome::Ok(ret.expect("no overflow")), Some(point + after))
            }
            5 => {
                let (next, _) = apply(states[key_ix], call);
                states[key_ix] = next;
                (Outcome::Info, None)
            }
            6 => (Outcome::Info, None),
            _ => (Outcome::Fail, Some(point + after)),
        };
        history.push(Op {
            process: i as u64,
            key: format!("k{key_ix}"),
            call,
            invoke: ms(point - before),
            complete: complete.map(ms),
            outcome,
        });
    }
    (history, states)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn histories_of_the_sequential_model_are_linearizable(
        ops in prop::collection::vec(
            (any::<u8>(), -50i64..50, any::<u8>(), 0u64..60, 0u64..60, any::<u8>()),
            0..120,
        )
    ) {
        let (history, finals) = generate(&ops);
        let r = check(&history, &CheckLimits::default());
        prop_assert!(r.is_valid(), "{}\n{}", r, format_history(&history));
        // With final reads of the model's final values, the history stays
        // linearizable and no acknowledged write is lost.
        let t_end = ms(100 + 10 * ops.len() as u64 + 1000);
        let final_reads: Vec<Op> = finals
            .iter()
            .enumerate()
            .map(|(k, v)| Op::new(999, &format!("k{k}"), Call::Read, t_end, Some(t_end + ms(1)), Outcome::Ok(Ret::Value(*v))))
            .collect();
        let mut all = history.clone();
        all.extend(final_reads.iter().cloned());
        let r = check(&all, &CheckLimits::default());
        prop_assert!(r.is_valid(), "{}\n{}", r, format_history(&all));
        let states = final_reads;
        let lost = lost_writes(&history, &states);
        prop_assert!(lost.is_empty(), "{:?}", lost);
    }

    #[test]
    fn a_read_of_a_never_written_value_is_caught(
        ops in prop::collection::vec(
            (any::<u8>(), -50i64..50, any::<u8>(), 0u64..60, 0u64..60, any::<u8>()),
            1..80,
        ),
        pick in any::<prop::sample::Index>(),
    ) {
        let (mut history, _) = generate(&ops);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].call == Call::Read && matches!(history[i].outcome, Outcome::Ok(_)))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        // Values of the workload stay within ±(50 + 5·80); this one is
        // never written.
        history[i].outcome = Outcome::Ok(Ret::Value(Some(1_000_000)));
        let r = check(&history, &CheckLimits::default());
        prop_assert!(r.violations().any(|(k, _)| *k == history[i].key), "{}", r);
    }
}

#[test]
fn many_unknown_writes_do_not_hide_a_violation() {
    // 12 writes with unknown outcomes that nobody observes, overlapping
    // everything, then a stale read: still a violation (the search visits
    // every subset of them once per state: bounded, 2^12 x 13 states).
    let mut history = vec![write(1, 1, 0, 10), write(2, 2, 20, 30)];
    for i in 0..12 {
        history.push(info(100 + i, Call::Write(1_000 + i as i64), 5 + i));
    }
    history.push(read(3, 50, 60, Some(2)));
    history.push(write(4, 3, 70, 80));
    history.push(read(3, 90, 100, Some(2)));
    let r = verdict(&history);
    let (_, v) = r.violations().next().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(v.blocking.invoke, ms(90), "{r}");
    match &r.keys["k"] {
        KeyResult::Violation(_) => {}
        other => panic!("{other:?}"),
    }
}

/// Exhaustive reference: tries every order that respects real time.
fn brute_force(ops: &[Op]) -> bool {
    fn go(ops: &[Op], done: &mut Vec<bool>, state: State) -> bool {
        let remaining_known =
            (0..ops.len()).any(|i| !done[i] && matches!(ops[i].outcome, Outcome::Ok(_)));
        if !remaining_known {
            return true;
        }
        for c in 0..ops.len() {
            if done[c] {
                continue;
            }
            // `c` may go next unless a remaining op completed before it
            // was invoked.
            let blocked = (0..ops.len()).any(|r| {
                !done[r]
                    && r != c
                    && matches!(ops[r].outcome, Outcome::Ok(_))
                    && ops[r].complete.is_some_and(|t| t < ops[c].invoke)
            });
            if blocked {
                continue;
            }
            let ret = match ops[c].outcome {
                Outcome::Ok(r) => Some(r),
                _ => None,
            };
            if let Some(next) = step(state, ops[c].call, ret) {
                done[c] = true;
                if go(ops, done, next) {
                    return true;
                }
                done[c] = false;
            }
        }
        false
    }
    let ops: Vec<Op> = ops
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Fail => false,
            Outcome::Info => o.call != Call::Read,
            Outcome::Ok(_) => true,
        })
        .cloned()
        .collect();
    go(&ops, &mut vec![false; ops.len()], None)
}

/// A small random op with answers drawn from a tiny domain, so that both
/// verdicts are common.
fn small_op((kind, arg, ret, fate, start, len): (u8, u8, u8, u8, u64, u64)) -> Op {
    let v = i64::from(arg % 3);
    let call = match kind % 6 {
        0 | 1 => Call::Read,
        2 => Call::Write(v),
        3 => Call::Incr(1),
        4 => Call::Swap(v),
        _ => Call::Cas {
            expect: if arg % 4 == 3 { None } else { Some(v) },
            new: (v + 1) % 3,
        },
    };
    let r = i64::from(ret % 4);
    let answer = match call {
        Call::Read | Call::Swap(_) => Ret::Value(if r == 3 { None } else { Some(r) }),
        Call::Write(_) => Ret::Unit,
        Call::Incr(_) => Ret::Int(r),
        _ => Ret::Bool(r % 2 == 0),
    };
    let (outcome, complete) = match fate % 6 {
        0 => (Outcome::Info, None),
        1 => (Outcome::Fail, Some(ms(start + len))),
        _ => (Outcome::Ok(answer), Some(ms(start + len))),
    };
    Op::new(0, "k", call, ms(start), complete, outcome)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn search_agrees_with_exhaustive_reference(
        raw in prop::collection::vec(
            (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), 0u64..40, 0u64..25),
            0..8,
        )
    ) {
        let ops: Vec<Op> = raw.into_iter().map(small_op).collect();
        let expected = brute_force(&ops);
        let r = check(&ops, &CheckLimits::default());
        prop_assert_eq!(r.is_valid(), expected, "{}\n{}", r, format_history(&ops));
    }
}
