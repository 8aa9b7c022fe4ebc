//! Crash and restart under load: three `flotilla node` processes, a writer
//! that moves to another node when its node dies; kill -9 a follower, then
//! the leader of a group, restart each from its data; every acknowledged
//! write must then be readable from every node.

mod launcher_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use launcher_support::*;

/// The node id leading KV group 1, as node `n` sees it.
fn leader_of_group_1(n: &NodeProc) -> Option<u64> {
    let mut c = n.redis();
    let info: String = redis::cmd("INFO").arg("raft").query(&mut c).ok()?;
    let line = info.lines().find(|l| l.starts_with("group_1:"))?;
    let leader = line.split(',').find_map(|p| p.strip_prefix("leader="))?;
    leader.parse().ok().filter(|l| *l != 0)
}

#[test]
fn acknowledged_writes_survive_kill_9_of_a_follower_and_of_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 4, &["--request-timeout-ms", "2000"]);
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.wait_ready(READY);
    }
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.resp).collect();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut target = 0usize;
            let mut conn: Option<redis::Connection> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    let client =
                        redis::Client::open(format!("redis://{}/", addrs[target])).unwrap();
                    conn = client
                        .get_connection_with_timeout(Duration::from_millis(500))
                        .ok();
                    if let Some(c) = &conn {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    }
                    if conn.is_none() {
                        target = (target + 1) % addrs.len();
                        std::thread::park_timeout(Duration::from_millis(20));
                        continue;
                    }
                }
                let c = conn.as_mut().unwrap();
                match redis::cmd("SET")
                    .arg(format!("w{i}"))
                    .arg(i)
                    .query::<String>(c)
                {
                    Ok(_) => {
                        acked.lock().unwrap().push(i);
                        i += 1;
                    }
                    Err(_) => {
                        // Unknown outcome: never counted; use a new key and
                        // maybe another node.
                        i += 1;
                        conn = None;
                        target = (target + 1) % addrs.len();
                    }
                }
            }
        })
    };
    let t0 = Instant::now();
    let acked_count = |min: usize, what: &str| {
        eprintln!("{:?}: waiting for {what}", t0.elapsed());
        let base = acked.lock().unwrap().len();
        wait_for(what, Duration::from_secs(30), || {
            (acked.lock().unwrap().len() >= base + min).then_some(())
        });
    };
    acked_count(30, "writes before the first crash");

    // kill -9 a node (node 3), keep writing, restart it.
    nodes[2].kill9();
    acked_count(30, "writes while node 3 is down");
    nodes[2].start();
    nodes[2].wait_ready(READY);
    acked_count(30, "writes after node 3 restarted");

    // kill -9 the leader of group 1, keep writing, restart it.
    let leader = wait_for("a leader of group 1", READY, || {
        leader_of_group_1(&nodes[0])
    });
    let li = (leader - 1) as usize;
    nodes[li].kill9();
    acked_count(30, "writes while the old leader is down");
    nodes[li].start();
    nodes[li].wait_ready(READY);
    acked_count(30, "writes after the old leader restarted");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 150,
        "only {} acknowledged writes",
        acked.len()
    );
    let started = Instant::now();
    for n in &nodes {
        let mut c = n.redis();
        for chunk in acked.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|i| format!("w{i}")).collect();
            let values: Vec<Option<u64>> = wait_for(
                &format!("MGET on node {}", n.id),
                Duration::from_secs(20),
                || redis::cmd("MGET").arg(&keys).query(&mut c).ok(),
            );
            for (i, v) in chunk.iter().zip(values) {
                assert_eq!(
                    v,
                    Some(*i),
                    "acknowledged write w{i} read on node {}\n{}",
                    n.id,
                    n.log_tail()
                );
            }
        }
    }
    eprintln!(
        "{} acknowledged writes verified on 3 nodes in {:?}",
        acked.len(),
        started.elapsed()
    );
    for n in &mut nodes {
        let status = n.terminate();
        assert!(
            status.success(),
            "node {} exit {status:?}\n{}",
            n.id,
            n.log_tail()
        );
    }
}
