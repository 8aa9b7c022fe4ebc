//! Durability: nodes stopped and restarted from their data directories keep
//! every acknowledged write; the leaders of many groups stop at once.

use std::time::Duration;

use flotilla::{GroupId, NodeId};
use flotilla_tests::{b, init_logs, retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_restarted_node_and_a_restarted_cluster_keep_every_acknowledged_write() {
    init_logs();
    let mut c = Cluster::new(3, 2);
    c.start_all();
    let nodes = c.running();
    let groups: Vec<GroupId> = (1..=8).map(GroupId).collect();
    c.start_groups(&groups, &nodes);
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    // Writes through every node (forwarded to the leaders).
    let mut acked = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let kv = c.kv(*n, &groups);
        for k in 0..40 {
            let key = format!("n{i}-k{k}");
            retry(WITHIN, &key, || {
                block_on(kv.put(b(key.clone()), b(format!("v{k}"))))
            });
            acked.push((key, format!("v{k}")));
        }
    }
    // Stop node 3, write more, restart it: it catches up from its own WAL
    // plus the leaders' logs.
    c.stop(NodeId(3));
    let kv = c.kv(NodeId(1), &groups);
    for k in 0..40 {
        let key = format!("while-down-{k}");
        retry(WITHIN, &key, || block_on(kv.put(b(key.clone()), b("x"))));
        acked.push((key, "x".to_string()));
    }
    c.start(NodeId(3));
    let status = block_on(c.host(NodeId(3)).groups(WITHIN)).unwrap();
    assert_eq!(
        status.len(),
        groups.len(),
        "node 3 recovers every group from its WAL: {status:?}"
    );
    // Stop everything and start again from disk only.
    c.stop(NodeId(1));
    c.stop(NodeId(2));
    c.stop(NodeId(3));
    c.start_all();
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    for n in c.running() {
        let kv = c.kv(n, &groups);
        for (key, value) in &acked {
            let got = retry(WITHIN, key, || block_on(kv.get(b(key.clone()))));
            assert_eq!(
                got.as_deref(),
                Some(value.as_bytes()),
                "{n}: acknowledged write {key} lost after restart"
            );
        }
    }
    c.shutdown();
}

#[test]
fn stopping_the_leader_of_many_groups_at_once_loses_nothing() {
    init_logs();
    let mut c = Cluster::new(3, 2);
    c.start_all();
    let nodes = c.running();
    let groups: Vec<GroupId> = (1..=16).map(GroupId).collect();
    c.start_groups(&groups, &nodes);
    // Move every leadership to node 1.
    for g in &groups {
        let l = c.wait_leader(*g, WITHIN);
        if l != NodeId(1) {
            retry(WITHIN, "transfer", || {
                block_on(
                    c.host(l)
                        .transfer_leader(*g, NodeId(1), Duration::from_secs(5)),
                )
            });
        }
    }
    let kv = c.kv(NodeId(2), &groups);
    let mut acked = Vec::new();
    for k in 0..64 {
        let key = format!("k{k}");
        retry(WITHIN, &key, || {
            block_on(kv.put(b(key.clone()), b(format!("{k}"))))
        });
        acked.push(key);
    }
    c.stop(NodeId(1));
    for g in &groups {
        let l = c.wait_leader(*g, WITHIN);
        assert_ne!(l, NodeId(1));
    }
    for (k, key) in acked.iter().enumerate() {
        let got = retry(WITHIN, key, || block_on(kv.get(b(key.clone()))));
        assert_eq!(
            got.as_deref(),
            Some(format!("{k}").as_bytes()),
            "{key} lost"
        );
    }
    // The survivors keep accepting writes.
    retry(WITHIN, "write after failover", || {
        block_on(kv.put(b("after"), b("1")))
    });
    c.shutdown();
}

/// A node whose recovery fails (its log is compacted behind a snapshot file
/// that is gone) does not start, says why, and does not hang — while the
/// other nodes keep dialing it. Its data is left as it was.
#[test]
fn a_node_that_cannot_recover_fails_to_start_with_the_reason() {
    init_logs();
    let mut c = Cluster::with(3, 1, |cfg| {
        cfg.snapshot_entries = 40;
        cfg.compaction_overhead_entries = 10;
    });
    c.start_all();
    let groups = [GroupId(1)];
    c.start_groups(&groups, &c.running());
    c.wait_leader(GroupId(1), WITHIN);
    let kv = c.kv(NodeId(1), &groups);
    for i in 0..150 {
        retry(WITHIN, "put", || {
            block_on(kv.put(b(format!("k{i}")), b("v")))
        });
    }
    // Node 3 has applied (and so snapshotted and compacted) most of them.
    retry(WITHIN, "node 3 snapshots", || {
        let taken: u64 = block_on(c.host(NodeId(3)).stats(WITHIN))?
            .iter()
            .map(|s| s.snapshots_taken)
            .sum();
        if taken > 0 {
            Ok(())
        } else {
            Err(flotilla::HostError::Timeout(Duration::ZERO))
        }
    });
    c.stop(NodeId(3));
    let snapshots = c.data_dir(NodeId(3)).join("shard-0-snapshots");
    for f in std::fs::read_dir(&snapshots).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let began = std::time::Instant::now();
    let err = c
        .try_start(NodeId(3))
        .expect_err("node 3 cannot recover without its snapshot");
    // The failed shard closes its mailbox before it reports: the host's
    // clean-up used to wait out its 10 s limit for an answer to `Shutdown`.
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "a failed start returns promptly, not after the clean-up timeout: {:?}",
        began.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no snapshot file covers it"),
        "the start error names the problem: {msg}"
    );
    c.shutdown();
}
