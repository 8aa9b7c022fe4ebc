//! kill -9 of a leader while other nodes forward writes to it: three
//! `flotilla node` processes; twelve clients INCR their own counter through
//! nodes 1 and 3 (most of their writes are forwarded to another node's
//! leader); node 2, which leads about a third of the groups (leader
//! balancing brings them back after each restart), is killed -9 three times
//! and restarted.
//!
//! A forwarded write the leader received but had not yet answered used to
//! wait out the request timeout (`TIMEOUT ... may or may not have been
//! applied`), which ends a `redis-benchmark` run. Now the forwarding node
//! tags the entry and watches its own replica's log: the write's result if
//! the entry commits, a safe retry if a later term's entry commits without
//! it. So no client sees any error, and every counter equals its
//! acknowledged increments (a retry of a write that was in fact applied
//! would make it larger).

mod launcher_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use launcher_support::*;

const CLIENTS: usize = 12;

/// Three nodes (6 groups, leaders balanced every 500 ms), started and
/// ready.
fn started_cluster(dir: &std::path::Path) -> Vec<NodeProc> {
    let mut nodes = cluster(
        dir,
        3,
        6,
        &["--request-timeout-ms", "8000", "--leader-balance-ms", "500"],
    );
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.wait_ready(READY);
    }
    nodes
}

#[test]
fn forwarded_writes_get_an_answer_when_their_leader_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = if i % 2 == 0 {
                nodes[0].resp
            } else {
                nodes[2].resp
            };
            let (stop, errors) = (stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                let mut c = client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let key = format!("counter-{i}");
                let mut acked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match redis::cmd("INCR").arg(&key).query::<u64>(&mut c) {
                        Ok(v) => {
                            acked += 1;
                            if v != acked {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("{key}: INCR answered {v} after {acked} acks"));
                                acked = v;
                            }
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("{key}: {e}"));
                            return (key, None);
                        }
                    }
                }
                (key, Some(acked))
            })
        })
        .collect();
    for round in 0..3 {
        std::thread::park_timeout(Duration::from_millis(2_500));
        let led = leaders_of(&nodes[0], 2);
        eprintln!("round {round}: node 2 leads {led} groups; kill -9");
        nodes[1].kill9();
        std::thread::park_timeout(Duration::from_millis(1_500));
        nodes[1].start();
        nodes[1].wait_ready(READY);
    }
    std::thread::park_timeout(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);
    let done: Vec<(String, Option<u64>)> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "clients saw errors: {errors:?}\nnode 1:\n{}",
        nodes[0].log_tail()
    );
    for n in [&nodes[0], &nodes[2]] {
        let (_, metrics) = http(n.http, "GET", "/metrics", "");
        let settled: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("flotilla_forwards_settled_from_log_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        eprintln!(
            "node {}: {settled} forwarded writes settled from its own log",
            n.id
        );
    }
    let mut c = nodes[2].redis();
    for (key, acked) in done {
        let acked = acked.expect("no error");
        assert!(acked > 0, "{key}: nothing acknowledged");
        let value: u64 = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
        assert_eq!(value, acked, "{key}: every acknowledged INCR applied once");
    }
}

/// How many KV groups node `leader` leads, as `n` sees it (INFO raft).
fn leaders_of(n: &NodeProc, leader: u64) -> usize {
    group_leaders(n)
        .iter()
        .filter(|(_, l)| *l == leader)
        .count()
}

/// A started cluster with 30 keys written, then idle long enough for every
/// group to quiesce (1 s idle); node 2 leads some of them. Returns the
/// nodes, a connection to node 1 and how many groups node 2 leads.
fn idle_cluster(dir: &std::path::Path) -> (Vec<NodeProc>, redis::Connection, usize) {
    let nodes = started_cluster(dir);
    let mut c1 = nodes[0].redis();
    for k in 0..30 {
        let _: () = redis::cmd("SET")
            .arg(format!("key{k}"))
            .arg("v")
            .query(&mut c1)
            .unwrap();
    }
    std::thread::park_timeout(Duration::from_millis(4_000));
    let led = leaders_of(&nodes[0], 2);
    assert!(led > 0, "node 2 leads no group: nothing to test");
    (nodes, c1, led)
}

/// Groups quiesce when idle: their followers stop ticking. A leader killed
/// while its groups were quiet used to leave them leaderless for good, and
/// every write to them timed out (12 of 40 keys in a manual run): nothing
/// woke the followers. Now a request for a group wakes its follower
/// replica, which notices the silence and elects a leader; the request is
/// then answered (settled from the log and retried, see above).
#[test]
fn idle_groups_of_a_killed_leader_elect_again_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, mut c1, led) = idle_cluster(dir.path());
    nodes[1].kill9();
    std::thread::park_timeout(Duration::from_millis(2_000));
    for k in 0..30 {
        let r = redis::cmd("SET")
            .arg(format!("key{k}"))
            .arg("w")
            .query::<String>(&mut c1);
        assert!(
            r.is_ok(),
            "key{k} after node 2 (leader of {led} groups) was killed: {r:?}\nnode 1:\n{}",
            nodes[0].log_tail()
        );
    }
    let mut c3 = nodes[2].redis();
    let v: String = redis::cmd("GET").arg("key29").query(&mut c3).unwrap();
    assert_eq!(v, "w");
}

/// Every group line of `n`'s INFO raft: (group, leader; 0 for none).
fn group_leaders(n: &NodeProc) -> Vec<(u64, u64)> {
    let mut c = n.redis();
    let info: String = redis::cmd("INFO")
        .arg("raft")
        .query(&mut c)
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (group, rest) = l.strip_prefix("group_")?.split_once(':')?;
            let leader = rest
                .split(',')
                .find_map(|p| p.strip_prefix("leader="))?
                .parse()
                .ok()?;
            Some((group.parse().ok()?, leader))
        })
        .collect()
}

/// The same, with no request at all: the followers of a killed leader hear
/// its connections close (its kernel closes them) and wake up, so its idle
/// groups elect new leaders on their own. Status queries (INFO) wake
/// nothing. Without the wake-up the groups keep the dead leader forever.
#[test]
fn idle_groups_of_a_killed_leader_elect_again_with_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, mut c1, led) = idle_cluster(dir.path());
    nodes[1].kill9();
    let start = std::time::Instant::now();
    loop {
        let (one, three) = (group_leaders(&nodes[0]), group_leaders(&nodes[2]));
        let settled =
            !one.is_empty() && one == three && one.iter().all(|(_, l)| *l == 1 || *l == 3);
        if settled {
            break;
        }
        assert!(
            start.elapsed() < READY,
            "groups of killed node 2 (leader of {led}) elected no new leader: node 1 sees {one:?}, node 3 sees {three:?}\nnode 1:\n{}",
            nodes[0].log_tail()
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
    let mut c3 = nodes[2].redis();
    let _: () = redis::cmd("SET")
        .arg("key7")
        .arg("w")
        .query(&mut c3)
        .unwrap();
    let v: String = redis::cmd("GET").arg("key7").query(&mut c1).unwrap();
    assert_eq!(v, "w");
}

/// Keys given deadlines through node 1, which is then killed: the other
/// nodes find the deadlines by their own scan and the groups' leaders
/// expire the keys (an expiry entry through the log), with no request.
#[test]
fn keys_expire_after_the_node_that_set_their_deadline_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(dir.path());
    let mut c1 = nodes[0].redis();
    let keys: Vec<String> = (0..12).map(|k| format!("exp{k}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("v")
            .arg("PX")
            .arg(1_500)
            .query(&mut c1)
            .unwrap();
    }
    nodes[0].kill9();
    let mut c3 = nodes[2].redis();
    let start = std::time::Instant::now();
    loop {
        let left: usize = keys
            .iter()
            .filter(|k| {
                redis::cmd("EXISTS")
                    .arg(*k)
                    .query::<i64>(&mut c3)
                    .unwrap_or(1)
                    == 1
            })
            .count();
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < READY,
            "{left} of {} keys still there {:?} after their deadline\nnode 3:\n{}",
            keys.len(),
            start.elapsed(),
            nodes[2].log_tail()
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_000),
        "keys vanished before their deadline ({elapsed:?})"
    );
    let mut c2 = nodes[1].redis();
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut c2).unwrap();
    assert_eq!(ttl, -2, "gone on node 2 too");
}
