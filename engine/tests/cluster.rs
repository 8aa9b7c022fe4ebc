//! End to end over the real WAL (direct I/O, fdatasync) and real TCP: three
//! nodes × two shards in one process, several groups, proposals and
//! linearizable reads through each group's leader.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla::raft::{GroupId, NodeId};
use flotilla::test_util::free_port_block;
use flotilla::{NodeHost, NodeHostConfig, Placement};
use flotilla_rsm::{encode_noop, KvCommand, KvQuery, KvResult, PutCondition};
use futures_lite::future::block_on;

const DEADLINE: Duration = Duration::from_secs(20);

fn start_cluster(dir: &tempfile::TempDir, nodes: u64, shards: usize) -> Vec<NodeHost> {
    (1..=nodes)
        .map(|n| {
            let mut cfg = NodeHostConfig::new(n, dir.path().join(format!("node-{n}")));
            cfg.shard_count = shards;
            cfg.placement = Placement::Unbound;
            cfg.raft_addr = free_port_block(shards);
            cfg.tick_interval = Duration::from_millis(10);
            cfg.io_memory_bytes = 1 << 20;
            cfg.wal_segment_bytes = 1 << 20;
            NodeHost::start(cfg).unwrap_or_else(|e| panic!("node {n}: {e}"))
        })
        .collect()
}

/// Waits until every node agrees on one leader of `group`; returns its index
/// in `hosts`.
fn wait_for_leader(hosts: &[NodeHost], group: GroupId) -> usize {
    let start = Instant::now();
    loop {
        let leaders: Vec<Option<NodeId>> = hosts
            .iter()
            .map(|h| {
                block_on(h.group_status(group, DEADLINE))
                    .unwrap()
                    .and_then(|s| s.leader)
            })
            .collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) {
                return hosts
                    .iter()
                    .position(|h| h.config().node_id == l.0)
                    .expect("leader is a member");
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "group {group}: no agreed leader within {DEADLINE:?}; nodes see {leaders:?}"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

fn put(key: &str, value: &str) -> Bytes {
    encode_noop(
        &KvCommand::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            condition: PutCondition::Always,
            return_previous: false,
        }
        .encode(),
    )
}

#[test]
fn three_nodes_replicate_and_read_through_leaders() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_cluster(&dir, 3, 2);
    let members: Vec<(NodeId, std::net::SocketAddr)> = hosts
        .iter()
        .map(|h| (NodeId(h.config().node_id), h.config().raft_addr))
        .collect();
    let groups: Vec<GroupId> = (1..=6).map(GroupId).collect();
    for g in &groups {
        for h in &hosts {
            block_on(h.start_group(*g, members.clone(), DEADLINE)).unwrap();
        }
    }
    for g in &groups {
        let leader = wait_for_leader(&hosts, *g);
        for i in 0..20 {
            let key = format!("g{}-k{i}", g.0);
            block_on(hosts[leader].propose(*g, put(&key, &format!("v{i}")), DEADLINE))
                .unwrap_or_else(|e| panic!("group {g}: proposal {i} failed: {e}"));
        }
        let answer = block_on(
            hosts[leader].read(
                *g,
                KvQuery::Get {
                    key: Bytes::from(format!("g{}-k19", g.0)),
                }
                .encode(),
                DEADLINE,
            ),
        )
        .unwrap();
        assert_eq!(
            KvResult::decode(answer).unwrap(),
            KvResult::Value(Some(Bytes::from("v19"))),
            "group {g}: a linearizable read must see the last acknowledged write"
        );
        // Every replica applies the same entries.
        let start = Instant::now();
        loop {
            let applied: Vec<u64> = hosts
                .iter()
                .map(|h| {
                    block_on(h.group_status(*g, DEADLINE))
                        .unwrap()
                        .unwrap()
                        .applied
                })
                .collect();
            if applied.iter().all(|a| *a == applied[0] && *a >= 21) {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "group {g}: replicas did not converge: applied {applied:?}"
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
    // Followers forward proposals to the leader and get the result; with
    // forwarding off they answer NotLeader naming the leader.
    let g = groups[0];
    let leader = wait_for_leader(&hosts, g);
    for (i, h) in hosts.iter().enumerate() {
        let cmd = encode_noop(
            &KvCommand::Increment {
                key: Bytes::from_static(b"counter"),
                delta: 1,
            }
            .encode(),
        );
        let answer = block_on(h.propose(g, cmd, DEADLINE))
            .unwrap_or_else(|e| panic!("node {}: forwarded proposal failed: {e}", i + 1));
        assert_eq!(
            KvResult::decode(answer).unwrap(),
            KvResult::Int(i as i64 + 1),
            "node {}: the result of the leader's apply comes back",
            i + 1
        );
    }
    let follower = (leader + 1) % hosts.len();
    let err =
        block_on(hosts[follower].propose_with(g, put("x", "y"), false, DEADLINE)).unwrap_err();
    assert!(
        matches!(
            err,
            flotilla::HostError::Request(flotilla::RequestError::NotLeader { leader: Some(l), .. })
                if l.0 == hosts[leader].config().node_id
        ),
        "expected NotLeader naming the leader, got {err}"
    );
    // Followers serve linearizable reads (ReadIndex through the leader).
    let answer = block_on(
        hosts[follower].read(
            g,
            KvQuery::Get {
                key: Bytes::from_static(b"counter"),
            }
            .encode(),
            DEADLINE,
        ),
    )
    .unwrap();
    assert_eq!(
        KvResult::decode(answer).unwrap(),
        KvResult::Value(Some(Bytes::from("3")))
    );
    for h in hosts {
        block_on(h.shutdown());
    }
}

fn increment(key: &'static str) -> Bytes {
    encode_noop(
        &KvCommand::Increment {
            key: Bytes::from_static(key.as_bytes()),
            delta: 1,
        }
        .encode(),
    )
}

/// `NodeHost::propose_batch` answers every command on its own, in the
/// order given: on the leader and through a follower (forwarded), across
/// more than one mailbox message, with a malformed command failing alone;
/// a group that is not hosted fails every command; a deadline that passes
/// first answers every command, with `Timeout`.
#[test]
fn a_batch_of_proposals_answers_each_command_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_cluster(&dir, 3, 1);
    let members: Vec<(NodeId, std::net::SocketAddr)> = hosts
        .iter()
        .map(|h| (NodeId(h.config().node_id), h.config().raft_addr))
        .collect();
    let g = GroupId(1);
    for h in &hosts {
        block_on(h.start_group(g, members.clone(), DEADLINE)).unwrap();
    }
    let leader = wait_for_leader(&hosts, g);
    let follower = (leader + 1) % hosts.len();
    let n = flotilla::PROPOSE_BATCH_MAX + 5;
    let mut expected = 0;
    for (who, h) in [("leader", &hosts[leader]), ("follower", &hosts[follower])] {
        let mut cmds: Vec<Bytes> = (0..n).map(|_| increment("counter")).collect();
        cmds[7] = Bytes::from_static(b"\xffgarbage");
        let answers = block_on(h.propose_batch(g, cmds, DEADLINE));
        assert_eq!(answers.len(), n, "{who}: one answer per command");
        for (i, answer) in answers.into_iter().enumerate() {
            if i == 7 {
                assert!(
                    matches!(
                        answer,
                        Err(flotilla::HostError::Request(
                            flotilla::RequestError::Apply { .. }
                        ))
                    ),
                    "{who}: the malformed command fails alone, got {answer:?}"
                );
                continue;
            }
            expected += 1;
            let answer = answer.unwrap_or_else(|e| panic!("{who}: command {i} failed: {e}"));
            assert_eq!(
                KvResult::decode(answer).unwrap(),
                KvResult::Int(expected),
                "{who}: command {i} is answered with its own result, in order"
            );
        }
    }
    let answers = block_on(hosts[leader].propose_batch(
        GroupId(99),
        vec![increment("x"), increment("y")],
        DEADLINE,
    ));
    assert_eq!(answers.len(), 2);
    for answer in answers {
        assert!(
            matches!(
                answer,
                Err(flotilla::HostError::Request(
                    flotilla::RequestError::GroupNotFound { .. }
                ))
            ),
            "{answer:?}"
        );
    }
    assert!(block_on(hosts[leader].propose_batch(g, Vec::new(), DEADLINE)).is_empty());
    let answers = block_on(hosts[leader].propose_batch(
        g,
        vec![increment("late"), increment("late")],
        Duration::ZERO,
    ));
    assert_eq!(answers.len(), 2);
    for answer in answers {
        assert!(
            matches!(answer, Err(flotilla::HostError::Timeout(_))),
            "{answer:?}"
        );
    }
    for h in hosts {
        block_on(h.shutdown());
    }
}

/// Batches keep their promise while leadership moves: batches of
/// increments sent through every node (forwarded from the followers) while
/// the leadership is transferred around; every command is answered, with
/// its result or a typed error, none times out, and the counter ends at
/// exactly the number of increments answered `Ok` (a `Dropped`, `NotLeader`
/// or `Rejected` command was not applied).
#[test]
fn batches_answer_every_command_while_leadership_moves() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = std::sync::Arc::new(start_cluster(&dir, 3, 1));
    let members: Vec<(NodeId, std::net::SocketAddr)> = hosts
        .iter()
        .map(|h| (NodeId(h.config().node_id), h.config().raft_addr))
        .collect();
    let g = GroupId(1);
    for h in hosts.iter() {
        block_on(h.start_group(g, members.clone(), DEADLINE)).unwrap();
    }
    wait_for_leader(&hosts, g);
    let senders: Vec<_> = (0..hosts.len())
        .map(|node| {
            let hosts = hosts.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0i64, 0u64);
                for _ in 0..8 {
                    let cmds = (0..200).map(|_| increment("c")).collect();
                    for answer in block_on(hosts[node].propose_batch(g, cmds, DEADLINE)) {
                        match answer {
                            Ok(_) => ok += 1,
                            Err(flotilla::HostError::Request(
                                flotilla::RequestError::Dropped { .. }
                                | flotilla::RequestError::NotLeader { .. }
                                | flotilla::RequestError::Rejected(_),
                            )) => refused += 1,
                            Err(e) => panic!("node {}: unexpected answer {e:?}", node + 1),
                        }
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    for round in 0..6 {
        std::thread::park_timeout(Duration::from_millis(40));
        let leader = wait_for_leader(&hosts, g);
        let to = NodeId(hosts[(leader + 1) % hosts.len()].config().node_id);
        if let Err(e) = block_on(hosts[leader].transfer_leader(g, to, DEADLINE)) {
            eprintln!("round {round}: transfer to {to:?} failed: {e}");
        }
    }
    let (mut ok, mut refused) = (0, 0);
    for s in senders {
        let (o, r) = s.join().expect("a sender panicked");
        ok += o;
        refused += r;
    }
    assert_eq!(ok as u64 + refused, 3 * 8 * 200, "every command answered");
    let leader = wait_for_leader(&hosts, g);
    let answer = block_on(
        hosts[leader].read(
            g,
            KvQuery::Get {
                key: Bytes::from_static(b"c"),
            }
            .encode(),
            DEADLINE,
        ),
    )
    .unwrap();
    assert_eq!(
        KvResult::decode(answer).unwrap(),
        KvResult::Value(Some(Bytes::from(ok.to_string()))),
        "{ok} increments acknowledged, {refused} refused"
    );
    for h in hosts.iter() {
        block_on(h.shutdown());
    }
}
