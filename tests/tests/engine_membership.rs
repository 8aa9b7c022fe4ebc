//! Membership over the real transport and WAL: a fourth node added and one
//! removed under load, an observer promoted, a witness, leader transfer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla::{GroupId, MemberKind, NodeId};
use flotilla_tests::{b, init_logs, retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

fn wait_member(c: &Cluster, on: NodeId, g: GroupId, node: NodeId, kind: Option<MemberKind>) {
    let start = std::time::Instant::now();
    loop {
        let m = block_on(c.host(on).membership(g, WITHIN)).unwrap();
        let got = m.as_ref().and_then(|m| m.get(node)).map(|x| x.kind);
        if got == kind {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "{on} sees {node} in {g} as {got:?}, want {kind:?}: {m:?}"
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

#[test]
fn add_a_fourth_node_and_remove_one_under_load() {
    init_logs();
    let mut c = Cluster::new(3, 2);
    c.start_all();
    let founders = c.running();
    let groups: Vec<GroupId> = (1..=4).map(GroupId).collect();
    c.start_groups(&groups, &founders);
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    // A writer keeps writing through node 1 while membership changes.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let kv = c.kv(NodeId(1), &groups);
        let stop = stop.clone();
        let written = written.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load-{i}");
                retry(WITHIN, &key, || {
                    block_on(kv.put(b(key.clone()), b(i.to_string())))
                });
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
        })
    };
    let n4 = c.add_node(2);
    c.start(n4);
    let peers = c.members(&founders);
    for g in &groups {
        block_on(c.host(n4).join_group(*g, peers.clone(), false, WITHIN)).unwrap();
        // Added through a follower or the leader alike (forwarded). A retry
        // after an ambiguous failure (the change committed, but its answer
        // was lost to a leader change under load) is answered Ok: the
        // engine treats a change already in effect as done.
        retry(WITHIN, "add voter", || {
            block_on(
                c.host(NodeId(2))
                    .add_member(*g, n4, c.addr(n4), MemberKind::Voter, WITHIN),
            )
        });
        wait_member(&c, n4, *g, n4, Some(MemberKind::Voter));
    }
    // Remove node 3 from every group.
    for g in &groups {
        // A retry after an ambiguous failure (the removed leader stepped
        // down before answering) is answered Ok, as above.
        retry(WITHIN, "remove", || {
            block_on(c.host(NodeId(1)).remove_member(*g, NodeId(3), WITHIN))
        });
        wait_member(&c, NodeId(1), *g, NodeId(3), None);
    }
    c.stop(NodeId(3));
    // Let the writer run a little with the new membership, then check.
    let before = written.load(Ordering::Relaxed);
    let start = std::time::Instant::now();
    while written.load(Ordering::Relaxed) < before + 20 {
        assert!(start.elapsed() < WITHIN, "writes stalled after the changes");
        std::thread::park_timeout(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = written.load(Ordering::Relaxed);
    let kv4 = c.kv(n4, &groups);
    for i in 0..total {
        let key = format!("load-{i}");
        let got = retry(WITHIN, &key, || block_on(kv4.get(b(key.clone()))));
        assert_eq!(
            got.as_deref(),
            Some(i.to_string().as_bytes()),
            "{key} missing on the new node"
        );
    }
    c.shutdown();
}

#[test]
fn observer_promotion_witness_and_leader_transfer() {
    init_logs();
    let mut c = Cluster::new(2, 1);
    c.start_all();
    let g = GroupId(7);
    let founders = c.running();
    c.start_groups(&[g], &founders);
    c.wait_leader(g, WITHIN);
    let kv = c.kv(NodeId(1), &[g]);
    for i in 0..50 {
        retry(WITHIN, "put", || {
            block_on(kv.put(b(format!("k{i}")), b("v")))
        });
    }
    // An observer receives the log, does not vote, can be promoted.
    let n3 = c.add_node(1);
    c.start(n3);
    block_on(
        c.host(n3)
            .join_group(g, c.members(&founders), false, WITHIN),
    )
    .unwrap();
    retry(WITHIN, "add observer", || {
        block_on(
            c.host(NodeId(1))
                .add_member(g, n3, c.addr(n3), MemberKind::Observer, WITHIN),
        )
    });
    wait_member(&c, n3, g, n3, Some(MemberKind::Observer));
    let stale = c.kv(n3, &[g]);
    let got = retry(WITHIN, "observer read", || block_on(stale.get(b("k49"))));
    assert_eq!(got.as_deref(), Some(&b"v"[..]), "the observer has the log");
    retry(WITHIN, "promote", || {
        block_on(c.host(NodeId(2)).promote_observer(g, n3, WITHIN))
    });
    wait_member(&c, NodeId(1), g, n3, Some(MemberKind::Voter));

    // A witness votes but keeps no state machine: reads there fail.
    let n4 = c.add_node(1);
    c.start(n4);
    block_on(c.host(n4).join_group(g, c.members(&founders), true, WITHIN)).unwrap();
    retry(WITHIN, "add witness", || {
        block_on(
            c.host(NodeId(1))
                .add_member(g, n4, c.addr(n4), MemberKind::Witness, WITHIN),
        )
    });
    wait_member(&c, n4, g, n4, Some(MemberKind::Witness));
    // Changes already in effect are answered Ok (a client retrying after a
    // lost answer must not see a failure), forwarded or not; a change that
    // contradicts the membership is still refused.
    retry(WITHIN, "promote again", || {
        block_on(c.host(NodeId(2)).promote_observer(g, n3, WITHIN))
    });
    retry(WITHIN, "add witness again", || {
        block_on(
            c.host(NodeId(2))
                .add_member(g, n4, c.addr(n4), MemberKind::Witness, WITHIN),
        )
    });
    let refused = retry(WITHIN, "witness as observer", || {
        match block_on(c.host(NodeId(1)).add_member(
            g,
            n4,
            c.addr(n4),
            MemberKind::Observer,
            WITHIN,
        )) {
            Ok(()) => Ok(Err("a witness was re-added as an observer".to_string())),
            Err(e) if e.to_string().contains("not valid") => Ok(Ok(e.to_string())),
            Err(e) => Err(e),
        }
    });
    assert!(refused.is_ok(), "{refused:?}");
    wait_member(&c, NodeId(1), g, n4, Some(MemberKind::Witness));
    let w = c.kv(n4, &[g]);
    let err = block_on(w.get(b("k1"))).unwrap_err();
    assert!(
        err.to_string().contains("witness"),
        "a witness cannot serve reads: {err}"
    );
    retry(WITHIN, "write with witness", || {
        block_on(kv.put(b("after-witness"), b("1")))
    });

    // Transfer leadership to the promoted observer; writes continue.
    let l = c.wait_leader(g, WITHIN);
    let target = if l == n3 { NodeId(2) } else { n3 };
    retry(WITHIN, "transfer", || {
        block_on(
            c.host(NodeId(1))
                .transfer_leader(g, target, Duration::from_secs(5)),
        )
    });
    assert_eq!(c.wait_leader(g, WITHIN), target);
    retry(WITHIN, "write after transfer", || {
        block_on(kv.put(b("after-transfer"), b("1")))
    });
    let got = retry(WITHIN, "read", || {
        block_on(c.kv(target, &[g]).get(b("after-transfer")))
    });
    assert_eq!(got.as_deref(), Some(&b"1"[..]));
    c.shutdown();
}

/// A node has one raft address for all its groups: a start, join or
/// membership change naming a known node at another address is refused
/// (before, a join naming a live node at a bogus address made the joining
/// node dial it there for every group it shares with it, so those groups
/// lost that node: found by `launcher_fuzz`). Afterwards every group still
/// replicates to every node.
#[test]
fn a_known_node_at_another_address_is_refused() {
    init_logs();
    let mut c = Cluster::new(3, 1);
    c.start_all();
    let nodes = c.running();
    let groups: Vec<GroupId> = (1..=3).map(GroupId).collect();
    c.start_groups(&groups, &nodes);
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    let bogus: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    let conflict = |r: Result<(), flotilla::HostError>, what: &str| match r {
        Err(flotilla::HostError::Request(flotilla::RequestError::AddressConflict {
            node,
            known,
            given,
            ..
        })) => {
            assert_eq!((node, known, given), (n2, c.addr(n2), bogus), "{what}");
        }
        other => panic!("{what}: expected an address conflict, got {other:?}"),
    };
    let on = c.host(n3);
    conflict(
        block_on(on.join_group(GroupId(100), vec![(n2, bogus)], false, WITHIN)),
        "join",
    );
    conflict(
        block_on(on.start_group(GroupId(101), vec![(n3, c.addr(n3)), (n2, bogus)], WITHIN)),
        "start",
    );
    // This node's own address too.
    match block_on(on.start_group(GroupId(102), vec![(n3, bogus)], WITHIN)) {
        Err(flotilla::HostError::Request(flotilla::RequestError::AddressConflict {
            node, ..
        })) => {
            assert_eq!(node, n3)
        }
        other => panic!("own address: expected an address conflict, got {other:?}"),
    }
    // A membership change naming node 2 at another address (as a new
    // observer of a group it is not in: remove it first).
    retry(WITHIN, "remove node 2 from group 3", || {
        block_on(c.host(n1).remove_member(GroupId(3), n2, WITHIN))
    });
    wait_member(&c, n1, GroupId(3), n2, None);
    conflict(
        block_on(
            c.host(n1)
                .add_member(GroupId(3), n2, bogus, MemberKind::Observer, WITHIN),
        ),
        "add_member",
    );
    // Nothing was cut off: groups 1 and 2 replicate to node 2.
    for g in [GroupId(1), GroupId(2)] {
        let kv = c.kv(n3, &[g]);
        retry(WITHIN, "write", || {
            block_on(kv.put(b("after"), b(format!("{g}"))))
        });
        let on2 = c.kv(n2, &[g]);
        let start = std::time::Instant::now();
        loop {
            let mut stale = on2.clone();
            stale.consistency = flotilla::ReadConsistency::Stale;
            if block_on(stale.get(b("after"))).ok().flatten() == Some(b(format!("{g}"))) {
                break;
            }
            assert!(
                start.elapsed() < WITHIN,
                "node 2 never applied the write to {g}"
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}
