//! Forwarded proposals when the leader goes away: the node that forwarded
//! them learns each one's outcome from its own replica's log (the leader
//! tells it where it appended the entry), so its callers get a result or a
//! safe-to-retry `Dropped`, never a lost answer, and nothing is applied
//! twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla::{GroupId, HostError, RequestError};
use flotilla_rsm::{KvCommand, KvQuery, KvResult};
use flotilla_tests::{retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

/// Errors after which the increment certainly did not happen.
fn safe_to_retry(e: &HostError) -> bool {
    matches!(
        e,
        HostError::Request(
            RequestError::NotLeader { .. }
                | RequestError::Dropped { .. }
                | RequestError::Rejected(_)
        )
    )
}

#[test]
fn forwarded_increments_outlive_their_leader_stopping_and_apply_once() {
    flotilla_tests::init_logs();
    let mut c = Cluster::with(3, 1, |cfg| {
        cfg.leader_balance_interval = Duration::ZERO;
    });
    c.start_all();
    let groups = [GroupId(1)];
    c.start_groups(&groups, &c.running());
    let leader = c.wait_leader(groups[0], WITHIN);
    let origin = c.running().into_iter().find(|n| *n != leader).unwrap();
    let kv = c.kv(origin, &groups);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let unsafe_errors = Arc::new(Mutex::new(Vec::new()));
    let cmd = KvCommand::Increment {
        key: "n".into(),
        delta: 1,
    };
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (kv, stop, acked, unsafe_errors, cmd) = (
                kv.clone(),
                stop.clone(),
                acked.clone(),
                unsafe_errors.clone(),
                cmd.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match block_on(kv.execute(groups[0], &cmd)) {
                        Ok(KvResult::Int(_)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => unsafe_errors.lock().unwrap().push(format!("{other:?}")),
                        Err(e) if safe_to_retry(&e) => {
                            std::thread::park_timeout(Duration::from_millis(5));
                        }
                        Err(e) => unsafe_errors.lock().unwrap().push(format!("{e}")),
                    }
                }
            })
        })
        .collect();
    std::thread::park_timeout(Duration::from_millis(400));
    let before = acked.load(Ordering::Relaxed);
    assert!(before > 0, "no increment went through the forwarding node");
    // The leader stops with forwarded proposals in flight: it fails its own
    // waiters, but the entries it appended may still commit.
    c.stop(leader);
    let new_leader = c.wait_leader(groups[0], WITHIN);
    assert_ne!(new_leader, leader);
    std::thread::park_timeout(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let errors = unsafe_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} calls failed with an unknown outcome: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let acked = acked.load(Ordering::Relaxed);
    assert!(acked > before, "no increment after the leader stopped");
    let reader = c.kv(new_leader, &groups);
    let value = retry(WITHIN, "get n", || {
        block_on(reader.query(groups[0], &KvQuery::Get { key: "n".into() }))
    });
    let KvResult::Value(Some(v)) = value else {
        panic!("n is missing: {value:?}");
    };
    let n: u64 = std::str::from_utf8(&v).unwrap().parse().unwrap();
    assert_eq!(
        n, acked,
        "every acknowledged increment applied exactly once (an increment told Dropped but applied would make n larger)"
    );
    c.shutdown();
}

/// A command larger than the entry limit fails at once with
/// `EntryTooLarge`, on the leader and on a follower that would forward it,
/// and the group goes on: one just under the limit commits on every
/// replica. (An entry larger than a WAL frame used to stop the shard of
/// every replica that tried to write it.)
#[test]
fn a_command_over_the_entry_limit_is_refused_and_the_group_goes_on() {
    flotilla_tests::init_logs();
    const LIMIT: usize = 5 << 20;
    let c = Cluster::with(3, 1, |cfg| {
        cfg.entry_bytes_max = LIMIT;
        cfg.wal_segment_bytes = 16 << 20;
        cfg.leader_balance_interval = Duration::ZERO;
    });
    let mut c = c;
    c.start_all();
    let groups = [GroupId(1)];
    c.start_groups(&groups, &c.running());
    let leader = c.wait_leader(groups[0], WITHIN);
    let follower = c.running().into_iter().find(|n| *n != leader).unwrap();
    for node in [leader, follower] {
        let kv = c.kv(node, &groups);
        let big = KvCommand::put("big", vec![7u8; LIMIT]);
        match block_on(kv.execute(groups[0], &big)) {
            Err(HostError::Request(RequestError::EntryTooLarge { bytes, max, .. })) => {
                assert!(bytes > LIMIT && max == LIMIT, "{bytes} {max}");
            }
            other => panic!("{node}: a command over the limit answered {other:?}"),
        }
    }
    // Just under the limit (more than the WAL's default 4 MiB frame): it
    // commits, through the follower, and every replica reads it.
    let kv = c.kv(follower, &groups);
    let value = vec![9u8; LIMIT - 1024];
    let put = KvCommand::put("large", value.clone());
    let r = retry(WITHIN, "a large put", || {
        block_on(kv.execute(groups[0], &put))
    });
    assert!(matches!(r, KvResult::Put { written: true, .. }), "{r:?}");
    for node in c.running() {
        let kv = c.kv(node, &groups);
        let got = retry(WITHIN, "read the large value", || {
            block_on(kv.query(
                groups[0],
                &KvQuery::Get {
                    key: "large".into(),
                },
            ))
        });
        assert_eq!(got, KvResult::Value(Some(value.clone().into())), "{node}");
    }
    // A follower that was down while large entries were written catches
    // up from the leader's WAL, and every node recovers them from its own.
    let leader = c.wait_leader(groups[0], WITHIN);
    c.stop(follower);
    let kv = c.kv(leader, &groups);
    for i in 0..3u8 {
        let put = KvCommand::put(format!("large{i}"), vec![i; LIMIT - 4096]);
        retry(WITHIN, "a large put", || {
            block_on(kv.execute(groups[0], &put))
        });
    }
    c.start(follower);
    for node in c.running() {
        c.stop(node);
    }
    for node in [leader, follower] {
        c.start(node);
    }
    let kv = c.kv(follower, &groups);
    for i in 0..3u8 {
        let got = retry(WITHIN, "read a large value after restarts", || {
            block_on(kv.query(
                groups[0],
                &KvQuery::Get {
                    key: format!("large{i}").into(),
                },
            ))
        });
        assert_eq!(got, KvResult::Value(Some(vec![i; LIMIT - 4096].into())));
    }
    c.shutdown();
}
