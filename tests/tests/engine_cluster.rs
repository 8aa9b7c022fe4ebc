//! The engine's main end-to-end checks on 3 nodes × 2 shards × 64 groups:
//! elections everywhere, proposals to every group from every node
//! (forwarded to leaders), linearizable reads that see every acknowledged
//! write, then quiesce: idle groups stop ticking and heartbeating, and wake
//! on a proposal without an election.

use std::time::{Duration, Instant};

use flotilla::{GroupId, NodeId, ReadConsistency};
use flotilla_tests::{b, retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

fn messages_sent(c: &Cluster, n: NodeId) -> u64 {
    block_on(c.host(n).stats(WITHIN))
        .unwrap()
        .iter()
        .flat_map(|s| s.transport.peers.iter())
        .map(|p| p.messages_sent)
        .sum()
}

#[test]
fn sixty_four_groups_replicate_forward_read_and_quiesce() {
    flotilla_tests::init_logs();
    let mut c = Cluster::with(3, 2, |cfg| {
        cfg.quiesce_ticks = 30;
        // Leader balancing wakes a quiesced group to move its leadership
        // (until the leaders are balanced; see engine_balance.rs): off
        // here, where quiesced groups must stay silent.
        cfg.leader_balance_interval = Duration::ZERO;
    });
    c.start_all();
    let nodes = c.running();
    let groups: Vec<GroupId> = (1..=64).map(GroupId).collect();
    c.start_groups(&groups, &nodes);
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    // Every node writes to every group (most requests are forwarded).
    let clients: Vec<_> = nodes.iter().map(|n| c.kv(*n, &groups)).collect();
    let mut acked = Vec::new();
    for (i, kv) in clients.iter().enumerate() {
        for g in &groups {
            let key = format!("{}:{}", g.0, i);
            let group = *g;
            retry(WITHIN, &key, || {
                block_on(kv.execute(group, &flotilla_rsm::KvCommand::put(b(key.clone()), b("v"))))
            });
            acked.push((group, key));
        }
    }
    // Linearizable reads from every node see every acknowledged write.
    for kv in &clients {
        for (g, key) in &acked {
            let got = retry(WITHIN, key, || {
                block_on(kv.query(
                    *g,
                    &flotilla_rsm::KvQuery::Get {
                        key: b(key.clone()),
                    },
                ))
            });
            assert_eq!(
                got,
                flotilla_rsm::KvResult::Value(Some(b("v"))),
                "{key} in {g} after it was acknowledged"
            );
        }
    }
    // Idle now: every replica quiesces.
    let start = Instant::now();
    loop {
        let live: u64 = nodes
            .iter()
            .flat_map(|n| block_on(c.host(*n).stats(WITHIN)).unwrap())
            .map(|s| s.live_groups)
            .sum();
        if live == 0 {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "{live} group replicas still live after {WITHIN:?} idle"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    // Quiesced: (almost) no messages for half a second.
    let before: u64 = nodes.iter().map(|n| messages_sent(&c, *n)).sum();
    std::thread::park_timeout(Duration::from_millis(500));
    let after: u64 = nodes.iter().map(|n| messages_sent(&c, *n)).sum();
    assert!(
        after - before <= 8,
        "quiesced groups sent {} messages in 500 ms",
        after - before
    );
    // A proposal through a follower wakes the group without an election.
    let g = groups[5];
    let before = block_on(c.host(NodeId(1)).group_status(g, WITHIN))
        .unwrap()
        .unwrap();
    let leader = before.leader.expect("a leader");
    let follower = nodes.iter().copied().find(|n| *n != leader).unwrap();
    let kv = c.kv(follower, &groups);
    block_on(kv.execute(g, &flotilla_rsm::KvCommand::put(b("wake"), b("1")))).unwrap();
    let after = block_on(c.host(NodeId(1)).group_status(g, WITHIN))
        .unwrap()
        .unwrap();
    assert_eq!(after.term, before.term, "waking must not start an election");
    assert_eq!(after.leader, Some(leader));
    // Stale reads on the follower answer from local state.
    let mut stale = c.kv(follower, &groups);
    stale.consistency = ReadConsistency::Stale;
    let start = Instant::now();
    while block_on(stale.query(g, &flotilla_rsm::KvQuery::Get { key: b("wake") })).unwrap()
        != flotilla_rsm::KvResult::Value(Some(b("1")))
    {
        assert!(
            start.elapsed() < WITHIN,
            "the follower never applied the write"
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
    // Lease reads on the leader.
    let mut lease = c.kv(leader, &groups);
    lease.consistency = ReadConsistency::Lease;
    assert_eq!(
        retry(WITHIN, "lease read", || block_on(
            lease.query(g, &flotilla_rsm::KvQuery::Get { key: b("wake") })
        )),
        flotilla_rsm::KvResult::Value(Some(b("1")))
    );
    c.shutdown();
}

/// `NodeHost::wait_applied`: answers at once when the replica has applied
/// past the index, else at the first apply past it (a write through another
/// node, applied on this follower), else times out; an unknown group is an
/// error.
#[test]
fn wait_applied_wakes_on_a_follower_when_a_write_through_another_node_applies() {
    flotilla_tests::init_logs();
    // No leader balancing: a hand-over's no-op would wake the waiter early.
    let mut c = Cluster::with(3, 1, |cfg| cfg.leader_balance_interval = Duration::ZERO);
    c.start_all();
    let nodes = c.running();
    let g = GroupId(9);
    c.start_groups(&[g], &nodes);
    let leader = c.wait_leader(g, WITHIN);
    let follower = *nodes.iter().find(|n| **n != leader).unwrap();
    let kv = c.kv(leader, &[g]);
    retry(WITHIN, "first write", || {
        block_on(kv.execute(g, &flotilla_rsm::KvCommand::put(b("a"), b("1"))))
    });
    // The follower has applied the write (it learns of the commit with the
    // leader's next message): nothing is left to apply.
    let mut local = c.kv(follower, &[g]);
    local.consistency = ReadConsistency::Stale;
    let get_a = || block_on(local.query(g, &flotilla_rsm::KvQuery::Get { key: b("a") })).unwrap();
    let start = Instant::now();
    while get_a() != flotilla_rsm::KvResult::Value(Some(b("1"))) {
        assert!(
            start.elapsed() < WITHIN,
            "the follower never applied the write"
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let host = c.host(follower).clone();
    let now = retry(WITHIN, "the follower's applied index", || {
        block_on(host.wait_applied(g, 0, WITHIN))
    });
    assert!(now > 0, "the follower applied the leader's entries");
    // Nothing new: the wait runs out.
    match block_on(host.wait_applied(g, now + 100, Duration::from_millis(200))) {
        Err(flotilla::HostError::Timeout(_)) => {}
        other => panic!("an idle group answered {other:?}"),
    }
    let waiter = {
        let host = host.clone();
        std::thread::spawn(move || block_on(host.wait_applied(g, now, WITHIN)))
    };
    std::thread::park_timeout(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "woken before anything was applied");
    block_on(kv.execute(g, &flotilla_rsm::KvCommand::put(b("a"), b("2")))).unwrap();
    let woken = waiter.join().unwrap().expect("woken by the apply");
    assert!(woken > now, "{woken} > {now}");
    // The write is visible to a stale read on the follower from then on.
    assert_eq!(get_a(), flotilla_rsm::KvResult::Value(Some(b("2"))));
    match block_on(host.wait_applied(GroupId(4242), 0, WITHIN)) {
        Err(flotilla::HostError::Request(flotilla::RequestError::GroupNotFound { .. })) => {}
        other => panic!("an unknown group answered {other:?}"),
    }
    c.shutdown();
}
