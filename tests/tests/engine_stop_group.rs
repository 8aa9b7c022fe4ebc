//! Stopping a group on a node: the replica and its data (WAL records,
//! snapshot files) go, a restart does not bring it back, the other members
//! carry on, and the group can be joined again under the same id.

use std::path::Path;
use std::time::Duration;

use flotilla::{GroupId, HostError, MemberKind, NodeId, RequestError};
use flotilla_tests::{b, init_logs, retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

/// Snapshot files of `group` anywhere under a node's data directory.
fn snapshot_files(data_dir: &Path, group: GroupId) -> Vec<String> {
    let prefix = format!("snap-{:020}-", group.0);
    let mut found = Vec::new();
    for shard_dir in std::fs::read_dir(data_dir).expect("data dir") {
        let shard_dir = shard_dir.expect("entry").path();
        if !shard_dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard_dir).expect("shard dir") {
            let name = f.expect("entry").file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                found.push(name);
            }
        }
    }
    found
}

fn hosted(c: &Cluster, node: NodeId) -> Vec<GroupId> {
    block_on(c.host(node).groups(WITHIN))
        .expect("groups")
        .iter()
        .map(|s| s.group)
        .collect()
}

#[test]
fn a_stopped_group_leaves_the_node_for_good_and_can_join_again() {
    init_logs();
    let mut c = Cluster::with(3, 2, |cfg| {
        cfg.snapshot_entries = 25;
        cfg.compaction_overhead_entries = 5;
    });
    c.start_all();
    let nodes = c.running();
    let groups: Vec<GroupId> = (1..=4).map(GroupId).collect();
    c.start_groups(&groups, &nodes);
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    let target = GroupId(2);
    let kv = c.kv(NodeId(1), &[target]);
    for k in 0..80 {
        let key = format!("k{k}");
        retry(WITHIN, &key, || {
            block_on(kv.put(b(key.clone()), b(format!("v{k}"))))
        });
    }
    let n3 = NodeId(3);
    block_on(c.host(n3).request_snapshot(target, WITHIN)).expect("snapshot on node 3");
    assert!(
        !snapshot_files(c.data_dir(n3), target).is_empty(),
        "node 3 holds a snapshot file of {target} before the stop"
    );

    // Take node 3 out of the group, then stop its replica there.
    retry(WITHIN, "remove node 3", || {
        block_on(c.host(NodeId(1)).remove_member(target, n3, WITHIN))
    });
    block_on(c.host(n3).stop_group(target, WITHIN)).expect("stop");
    assert!(
        !hosted(&c, n3).contains(&target),
        "node 3 still hosts {target}"
    );
    assert_eq!(
        snapshot_files(c.data_dir(n3), target),
        Vec::<String>::new(),
        "node 3 kept snapshot files of the stopped group"
    );
    match block_on(c.host(n3).group_status(target, WITHIN)) {
        Ok(None) => {}
        other => panic!("node 3 reports the stopped group: {other:?}"),
    }
    // Stopping again is a no-op.
    block_on(c.host(n3).stop_group(target, WITHIN)).expect("second stop");
    // The other two members carry on.
    for k in 80..100 {
        let key = format!("k{k}");
        retry(WITHIN, &key, || {
            block_on(kv.put(b(key.clone()), b(format!("v{k}"))))
        });
    }

    // A restart does not bring it back; the other groups are all there.
    c.stop(n3);
    c.start(n3);
    let after = hosted(&c, n3);
    assert!(
        !after.contains(&target),
        "restart brought {target} back: {after:?}"
    );
    for g in groups.iter().filter(|g| **g != target) {
        assert!(after.contains(g), "node 3 lost {g} on restart: {after:?}");
    }

    // The id can be joined again: node 3 catches up from the leader.
    block_on(
        c.host(n3)
            .join_group(target, c.members(&[NodeId(1), NodeId(2)]), false, WITHIN),
    )
    .expect("join again");
    retry(WITHIN, "add node 3 back", || {
        block_on(
            c.host(NodeId(1))
                .add_member(target, n3, c.addr(n3), MemberKind::Voter, WITHIN),
        )
    });
    retry(WITHIN, "node 3 caught up", || {
        let s = block_on(c.host(n3).group_status(target, WITHIN))?;
        match s {
            Some(s) if s.applied >= 100 => Ok(()),
            _ => Err(HostError::Timeout(WITHIN)),
        }
    });
    let kv3 = c.kv(n3, &[target]);
    for k in [0, 50, 99] {
        let key = format!("k{k}");
        let got = retry(WITHIN, &key, || block_on(kv3.get(b(key.clone()))));
        assert_eq!(
            got.as_deref(),
            Some(format!("v{k}").as_bytes()),
            "{key} on node 3"
        );
    }
    c.shutdown();
}

#[test]
fn stopping_a_group_fails_its_waiting_requests_at_once() {
    init_logs();
    let mut c = Cluster::new(3, 1);
    c.start(NodeId(1));
    // Only node 1 starts the group: no quorum, a proposal waits for a
    // leader that never comes.
    let g = GroupId(9);
    let members = c.members(&[NodeId(1), NodeId(2), NodeId(3)]);
    block_on(c.host(NodeId(1)).start_group(g, members, WITHIN)).expect("start");
    let host = c.host(NodeId(1)).clone();
    let waiting = std::thread::spawn(move || {
        let cmd = flotilla_rsm::encode_noop(&flotilla_rsm::KvCommand::put("k", "v").encode());
        block_on(host.propose(g, cmd, Duration::from_secs(120)))
    });
    // Let the proposal arrive and wait.
    std::thread::park_timeout(Duration::from_millis(300));
    block_on(c.host(NodeId(1)).stop_group(g, WITHIN)).expect("stop");
    match waiting.join().expect("proposer thread") {
        Err(HostError::Request(RequestError::ShuttingDown { group })) => assert_eq!(group, g),
        other => panic!("the waiting proposal ended with {other:?}, not ShuttingDown"),
    }
    assert!(!hosted(&c, NodeId(1)).contains(&g));
    // A new request finds no group.
    let cmd = flotilla_rsm::encode_noop(&flotilla_rsm::KvCommand::put("k", "v").encode());
    match block_on(c.host(NodeId(1)).propose(g, cmd, WITHIN)) {
        Err(HostError::Request(RequestError::GroupNotFound { .. })) => {}
        other => panic!("a proposal to the stopped group gave {other:?}"),
    }
    c.shutdown();
}

#[test]
fn a_group_stopped_everywhere_starts_again_empty_under_its_id() {
    init_logs();
    let mut c = Cluster::new(3, 2);
    c.start_all();
    let nodes = c.running();
    let g = GroupId(5);
    c.start_groups(&[g], &nodes);
    c.wait_leader(g, WITHIN);
    let kv = c.kv(NodeId(2), &[g]);
    for k in 0..30 {
        let key = format!("old{k}");
        retry(WITHIN, &key, || block_on(kv.put(b(key.clone()), b("v"))));
    }
    for n in &nodes {
        block_on(c.host(*n).stop_group(g, WITHIN)).expect("stop");
    }
    // A node restarted in between does not bring the old replica back.
    c.stop(NodeId(1));
    c.start(NodeId(1));
    for n in &nodes {
        assert!(!hosted(&c, *n).contains(&g), "{n} still hosts {g}");
    }
    c.start_groups(&[g], &nodes);
    c.wait_leader(g, WITHIN);
    let kv = c.kv(NodeId(3), &[g]);
    retry(WITHIN, "new", || block_on(kv.put(b("new"), b("n"))));
    for k in [0, 29] {
        let key = format!("old{k}");
        let got = retry(WITHIN, &key, || block_on(kv.get(b(key.clone()))));
        assert_eq!(got, None, "{key} survived the stop of its group everywhere");
    }
    let got = retry(WITHIN, "get new", || block_on(kv.get(b("new"))));
    assert_eq!(got.as_deref(), Some(&b"n"[..]));
    c.shutdown();
}

#[test]
fn stop_and_rejoin_cycles_under_load_with_snapshots_lose_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    init_logs();
    let mut c = Cluster::with(3, 1, |cfg| {
        cfg.snapshot_entries = 20;
        cfg.snapshot_log_ratio = 0.0;
        cfg.compaction_overhead_entries = 5;
    });
    c.start_all();
    let nodes = c.running();
    let groups: Vec<GroupId> = (1..=4).map(GroupId).collect();
    c.start_groups(&groups, &nodes);
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    let target = GroupId(2);
    let n3 = NodeId(3);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let kv = c.kv(NodeId(1), &[target]);
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i}");
                if block_on(kv.put(b(key.clone()), b(i.to_string()))).is_ok() {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        })
    };
    let leader_host = |c: &Cluster| c.host(NodeId(1)).clone();
    for cycle in 0..4 {
        retry(WITHIN, "remove node 3", || {
            block_on(leader_host(&c).remove_member(target, n3, WITHIN))
        });
        block_on(c.host(n3).stop_group(target, WITHIN))
            .unwrap_or_else(|e| panic!("cycle {cycle}: stop: {e}"));
        block_on(
            c.host(n3)
                .join_group(target, c.members(&[NodeId(1), NodeId(2)]), false, WITHIN),
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: join: {e}"));
        retry(WITHIN, "add node 3", || {
            block_on(leader_host(&c).add_member(target, n3, c.addr(n3), MemberKind::Voter, WITHIN))
        });
        retry(WITHIN, "node 3 applies", || {
            match block_on(c.host(n3).group_status(target, WITHIN))? {
                Some(s) if s.applied > 0 && s.leader.is_some() => Ok(()),
                _ => Err(HostError::Timeout(WITHIN)),
            }
        });
    }
    c.stop(n3);
    c.start(n3);
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the writer got only {} writes through",
        acked.len()
    );
    let kv3 = c.kv(n3, &[target]);
    for key in &acked {
        let got = retry(WITHIN, key, || block_on(kv3.get(b(key.clone()))));
        assert!(got.is_some(), "acknowledged {key} missing on node 3");
    }
    c.shutdown();
}

#[test]
fn a_stopping_leader_hands_its_leadership_over_first() {
    init_logs();
    // Election timeouts of 5–10 s (500 ticks of 10 ms): without the
    // hand-over the two remaining voters would have no leader for that
    // long after the stop.
    let mut c = Cluster::with(3, 1, |cfg| cfg.election_timeout_ticks = 500);
    c.start_all();
    let nodes = c.running();
    let g = GroupId(3);
    c.start_groups(&[g], &nodes);
    let leader = c.wait_leader(g, WITHIN);
    let kv = c.kv(leader, &[g]);
    retry(WITHIN, "put", || block_on(kv.put(b("k"), b("v"))));
    // Stop the leader's replica while it is still a member.
    block_on(c.host(leader).stop_group(g, WITHIN)).expect("stop");
    let others: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != leader).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let next = loop {
        let s = block_on(c.host(others[0]).group_status(g, WITHIN))
            .unwrap()
            .unwrap();
        if let Some(l) = s.leader.filter(|l| *l != leader) {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader 3 s after the stop (elections take 5-10 s here): {s:?}"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    };
    assert!(others.contains(&next));
    let kv = c.kv(next, &[g]);
    let got = retry(WITHIN, "get", || block_on(kv.get(b("k"))));
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
    c.shutdown();
}
