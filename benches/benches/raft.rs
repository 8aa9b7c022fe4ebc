//! Benchmark of the Raft core alone: 3 replicas wired in memory, no I/O.
//! Writes are "durable" as soon as a Ready is taken, messages are delivered
//! by moving them between replicas. Prints committed proposals per second
//! for 16 B and 1 KiB payloads, unbatched (one proposal per round trip) and
//! batched (`propose_batch` of 256 per round trip).
//!
//! `cargo bench -p flotilla-benches --bench raft`

use bytes::Bytes;
use flotilla::raft::{Config, GroupId, Membership, Message, NodeId, Raft};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

struct Cluster {
    nodes: Vec<Raft>,
    queue: VecDeque<Message>,
    committed: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let m = Membership::voters(&[1, 2, 3]);
        let nodes = (1..=3)
            .map(|i| {
                let mut c = Config::new(NodeId(i), GroupId(1));
                c.seed = i;
                c.inflight_max = 1024;
                c.uncommitted_entries_max = 1 << 20;
                Raft::new(c, m.clone())
            })
            .collect();
        let mut c = Cluster {
            nodes,
            queue: VecDeque::new(),
            committed: 0,
        };
        while !c.nodes[0].is_leader() {
            c.nodes[0].tick();
            c.pump();
        }
        c.committed = 0;
        c
    }

    fn drain(&mut self, i: usize) {
        let r = &mut self.nodes[i];
        while let Some(rd) = r.ready() {
            self.queue.extend(rd.messages);
            self.queue.extend(rd.persisted_messages);
            if let Some(l) = rd.committed_entries.last() {
                let l = l.index;
                if i == 0 {
                    self.committed += rd.committed_entries.len() as u64;
                }
                r.advance(rd.number);
                r.applied_to(l);
            } else {
                r.advance(rd.number);
            }
        }
    }

    /// Runs until no message is left.
    fn pump(&mut self) {
        for i in 0..3 {
            self.drain(i);
        }
        while let Some(m) = self.queue.pop_front() {
            let to = (m.to.0 - 1) as usize;
            self.nodes[to].step(m).expect("same group");
            self.drain(to);
            if self.queue.is_empty() {
                self.drain(0);
            }
        }
    }
}

fn run(payload_bytes: usize, batch: usize, dur: Duration) -> f64 {
    let mut c = Cluster::new();
    let payload = Bytes::from(vec![7u8; payload_bytes]);
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < dur {
        for _ in 0..16 {
            if batch == 1 {
                c.nodes[0].propose(payload.clone()).expect("leader");
            } else {
                c.nodes[0]
                    .propose_batch(std::iter::repeat_n(payload.clone(), batch))
                    .expect("leader");
            }
            c.pump();
            rounds += 1;
        }
        // Keep the in-memory log bounded, as the engine would after snapshots.
        let applied = c.nodes[0].applied();
        if applied > 100_000 {
            for n in c.nodes.iter_mut() {
                let a = n.applied().min(n.persisted_index());
                if a > n.snapshot_index() {
                    n.compact(a).expect("compact");
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(c.committed >= rounds * batch as u64 - batch as u64);
    c.committed as f64 / secs
}

fn main() {
    let secs: u64 = std::env::var("FLOTILLA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let dur = Duration::from_secs(secs);
    // Warm up.
    run(16, 256, Duration::from_millis(300));
    println!("raft core, 3 replicas in memory, no I/O ({secs} s per row)");
    println!("{:>8} {:>7} {:>16}", "payload", "batch", "commits/s");
    for payload in [16usize, 1024] {
        for batch in [1usize, 256] {
            let r = run(payload, batch, dur);
            println!("{:>8} {:>7} {:>16.0}", payload, batch, r);
        }
    }
}
