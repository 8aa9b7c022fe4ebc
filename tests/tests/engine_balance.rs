//! Leader balancing: leaders spread over the nodes, also after a node
//! that was down (and so led nothing) comes back, and writes keep
//! succeeding while leaderships move.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla::{GroupId, NodeId};
use flotilla_tests::{b, retry, Cluster};
use futures_lite::future::block_on;

const WITHIN: Duration = Duration::from_secs(30);

/// Groups each running node leads, as node 1.. see themselves.
fn leaders(c: &Cluster) -> BTreeMap<NodeId, usize> {
    let mut led = BTreeMap::new();
    for n in c.running() {
        let groups = block_on(c.host(n).groups(WITHIN)).unwrap();
        led.insert(
            n,
            groups
                .iter()
                .filter(|g| g.role == flotilla::Role::Leader)
                .count(),
        );
    }
    led
}

#[test]
fn a_restarted_node_gets_its_share_of_leaders_back_while_writes_go_on() {
    flotilla_tests::init_logs();
    let mut c = Cluster::with(3, 1, |cfg| {
        cfg.leader_balance_interval = Duration::from_millis(100);
    });
    c.start_all();
    let groups: Vec<GroupId> = (1..=12).map(GroupId).collect();
    c.start_groups(&groups, &c.running());
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    // Node 3 goes down: its groups elect leaders on 1 and 2.
    c.stop(NodeId(3));
    for g in &groups {
        c.wait_leader(*g, WITHIN);
    }
    let before = leaders(&c);
    assert_eq!(before.values().sum::<usize>(), 12, "{before:?}");
    c.start(NodeId(3));
    // Writes go on while leaderships move back to node 3; none may fail.
    let kv = c.kv(NodeId(1), &groups);
    let start = Instant::now();
    let mut written = 0;
    let balanced = loop {
        for i in 0..12 {
            let key = format!("k{written}-{i}");
            retry(WITHIN, &key, || block_on(kv.put(b(key.clone()), b("v"))));
        }
        written += 1;
        let led = leaders(&c);
        // 12 groups over 3 nodes: no gap of 2 or more left.
        if led.len() == 3 && led.values().all(|&n| n == 4) {
            break led;
        }
        assert!(
            start.elapsed() < WITHIN,
            "leaders did not spread over the nodes after node 3 came back: {led:?} (before: {before:?})"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    };
    let transfers: u64 = [1, 2]
        .iter()
        .flat_map(|n| block_on(c.host(NodeId(*n)).stats(WITHIN)).unwrap())
        .map(|s| s.balance_transfers)
        .sum();
    assert!(
        transfers >= 3,
        "{transfers} balance transfers, {balanced:?}"
    );
    // Everything written is there.
    for w in 0..written {
        for i in 0..12 {
            let key = format!("k{w}-{i}");
            let got = retry(WITHIN, &key, || block_on(kv.get(b(key.clone()))));
            assert_eq!(got.as_deref(), Some(&b"v"[..]), "{key}");
        }
    }
    // Balanced leaders stay put: no transfer once every gap is below 2.
    std::thread::park_timeout(Duration::from_millis(500));
    let after: u64 = [1, 2, 3]
        .iter()
        .flat_map(|n| block_on(c.host(NodeId(*n)).stats(WITHIN)).unwrap())
        .map(|s| s.balance_transfers)
        .sum();
    let led = leaders(&c);
    assert!(led.values().all(|&n| n == 4), "{led:?}");
    let walks = |c: &Cluster| -> u64 {
        [1, 2, 3]
            .iter()
            .flat_map(|n| block_on(c.host(NodeId(*n)).stats(WITHIN)).unwrap())
            .map(|s| s.balance_walks)
            .sum()
    };
    let walks_before = walks(&c);
    std::thread::park_timeout(Duration::from_millis(500));
    let later: u64 = [1, 2, 3]
        .iter()
        .flat_map(|n| block_on(c.host(NodeId(*n)).stats(WITHIN)).unwrap())
        .map(|s| s.balance_transfers)
        .sum();
    assert_eq!(after, later, "balanced leaders kept moving: {led:?}");
    // Nothing changed: the five rounds of those 500 ms (every 100 ms, on
    // each node) skipped their walk over the groups.
    assert_eq!(
        walks(&c),
        walks_before,
        "balanced shards walked their groups again"
    );
    c.shutdown();
}
