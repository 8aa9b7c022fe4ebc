//! What a write costs in fdatasyncs, and the lazily written commit index:
//! a Ready that only moves a group's commit index finishes without waiting
//! for the WAL, and that commit index reaches the disk with a later batch
//! (or the periodic flush), so a restarted replica still applies what it
//! knew was committed.

use std::time::Duration;

use flotilla::kv::KvClient;
use flotilla::{GroupId, HostError, NodeId, ReadConsistency};
use flotilla_tests::{b, init_logs, retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

/// Waits on the test's own thread (not an executor).
#[allow(clippy::disallowed_methods)]
fn idle(d: Duration) {
    std::thread::sleep(d);
}

/// 3 nodes × 1 shard with group 1 on all of them, and a KV client on its
/// leader.
fn one_group() -> (Cluster, Vec<NodeId>, KvClient) {
    init_logs();
    let mut c = Cluster::new(3, 1);
    c.start_all();
    let nodes = c.running();
    let groups = [GroupId(1)];
    c.start_groups(&groups, &nodes);
    let leader = c.wait_leader(groups[0], WITHIN);
    let kv = c.kv(leader, &groups);
    (c, nodes, kv)
}

fn fdatasyncs(c: &Cluster) -> u64 {
    c.running()
        .iter()
        .map(|n| {
            block_on(c.host(*n).stats(WITHIN))
                .unwrap()
                .iter()
                .map(|s| s.wal.fdatasyncs)
                .sum::<u64>()
        })
        .sum()
}

/// One write at a time to one group of 3 replicas: each replica appends
/// and syncs once; learning the commit index costs no fdatasync (it used to
/// cost one more on every replica: ~6 per write).
#[test]
fn a_sequential_write_costs_about_one_fdatasync_per_replica() {
    let (c, _nodes, kv) = one_group();
    for k in 0..5 {
        retry(WITHIN, "warm-up", || {
            block_on(kv.put(b(format!("w{k}")), b("v")))
        });
    }
    let before = fdatasyncs(&c);
    const WRITES: u64 = 100;
    for k in 0..WRITES {
        retry(WITHIN, "write", || {
            block_on(kv.put(b(format!("k{k}")), b("v")))
        });
    }
    let per_write = (fdatasyncs(&c) - before) as f64 / WRITES as f64;
    // 3 appends per write; the periodic commit flush and segment work add
    // a little. Writing every commit index would make it about 6.
    assert!(
        per_write <= 4.0,
        "{per_write:.2} fdatasyncs per sequential write over 3 replicas"
    );
    c.shutdown();
}

/// The last writes before a full stop: their commit index reached every
/// replica only through messages that needed no fdatasync. After an idle
/// moment the lazy commit index is on disk, so each replica restarted
/// alone (no quorum, no leader to tell it the commit index) applies them
/// and serves them to stale reads.
#[test]
fn an_idle_replica_flushes_its_commit_index_and_replays_it_alone() {
    let (mut c, nodes, kv) = one_group();
    for k in 0..20 {
        retry(WITHIN, "write", || {
            block_on(kv.put(b(format!("k{k}")), b(format!("v{k}"))))
        });
    }
    // Followers learn the final commit index with the next heartbeat; the
    // lazy flush runs every 50 ticks (0.5 s at the default tick).
    idle(Duration::from_millis(1500));
    for n in &nodes {
        c.stop(*n);
    }
    for n in &nodes {
        c.start(*n);
        let mut kv = c.kv(*n, &[GroupId(1)]);
        kv.consistency = ReadConsistency::Stale;
        for k in 0..20 {
            let key = format!("k{k}");
            let got = retry(WITHIN, &key, || {
                block_on(kv.get(b(key.clone())))
                    .and_then(|v| v.ok_or(HostError::Timeout(Duration::ZERO)))
            });
            assert_eq!(
                got.as_ref(),
                format!("v{k}").as_bytes(),
                "node {n}: {key} not replayed from its own WAL"
            );
        }
        c.stop(*n);
    }
    c.shutdown();
}

/// Turns bigger than one WAL batch (1 MiB) while the next turn of the same
/// group is collected: the WAL must take the batches in turn order, or a
/// group's append would start past its last entry (the WAL refuses such a
/// gap and the shard stops — seen in `flotilla bench` under load).
#[test]
fn turns_larger_than_a_wal_batch_keep_each_log_contiguous() {
    let (c, nodes, kv) = one_group();
    let value = "x".repeat(300 << 10);
    std::thread::scope(|s| {
        for t in 0..8 {
            let kv = &kv;
            let value = &value;
            s.spawn(move || {
                for k in 0..6 {
                    let key = format!("t{t}-k{k}");
                    retry(WITHIN, &key, || {
                        block_on(kv.put(b(key.clone()), b(format!("{value}{t}{k}"))))
                    });
                }
            });
        }
    });
    for n in &nodes {
        let errors: u64 = block_on(c.host(*n).stats(WITHIN))
            .unwrap()
            .iter()
            .map(|s| s.decode_errors)
            .sum();
        assert_eq!(errors, 0, "node {n}");
    }
    for t in 0..8 {
        for k in 0..6 {
            let key = format!("t{t}-k{k}");
            let got = retry(WITHIN, &key, || block_on(kv.get(b(key.clone()))));
            assert_eq!(got.map(|v| v.len()), Some(value.len() + 2), "{key}");
        }
    }
    c.shutdown();
}

/// The KV client's helpers report the state machine's own errors as
/// `RequestError::Kv` (a `put` of an oversized key used to return `Ok`
/// although nothing was stored; a `get` of a list was `Query Unsupported`).
#[test]
fn kv_helpers_report_the_state_machines_errors() {
    use flotilla::RequestError;
    use flotilla_rsm::{KvCommand, KvError, KvResult, TypedCommand};

    let (_c, _nodes, kv) = one_group();
    let group = GroupId(1);
    let huge_key = vec![b'k'; flotilla_rsm::kv::KEY_BYTES_MAX + 1];
    match block_on(kv.put(huge_key.clone(), b("v"))) {
        Err(HostError::Request(RequestError::Kv {
            group: g,
            error: KvError::KeyTooLarge,
        })) => assert_eq!(g, group),
        other => panic!("put of an oversized key: {other:?}"),
    }
    assert!(matches!(
        block_on(kv.get(huge_key)),
        Err(HostError::Request(RequestError::Kv {
            error: KvError::KeyTooLarge,
            ..
        })) | Ok(None)
    ));
    let push = KvCommand::Typed(TypedCommand::ListPush {
        key: b("list"),
        left: false,
        only_existing: false,
        values: vec![b("a")],
    });
    assert_eq!(
        retry(WITHIN, "push", || block_on(kv.execute(group, &push))),
        KvResult::Len(1)
    );
    match block_on(kv.get(b("list"))) {
        Err(HostError::Request(RequestError::Kv {
            error: KvError::WrongType,
            ..
        })) => {}
        other => panic!("get of a list: {other:?}"),
    }
    // The store is unchanged by the refused put; ordinary use works.
    block_on(kv.put(b("s"), b("1"))).unwrap();
    assert_eq!(block_on(kv.get(b("s"))).unwrap(), Some(b("1")));
}
