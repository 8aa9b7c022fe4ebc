//! Message delivery between two and three transports over loopback:
//! ordering, batching, drops, reconnects, registry changes, backpressure.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, msg, recv_n, run, start, wait_until};
use flotilla_transport::{PeerId, Registry, SendError, Transport};

const SECS_10: Duration = Duration::from_secs(10);

#[test]
fn two_transports_deliver_both_ways_in_order() {
    run("two_way", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        let (pa, pb) = (a.local(), b.local());
        for i in 0..1000 {
            a.send(pb, msg(i)).unwrap();
            b.send(pa, msg(10_000 + i)).unwrap();
            if i % 100 == 0 {
                glommio::yield_if_needed().await;
            }
        }
        let at_b = recv_n(&b, 1000, SECS_10).await;
        let at_a = recv_n(&a, 1000, SECS_10).await;
        assert_eq!(at_b.len(), 1000, "b received {} of 1000", at_b.len());
        assert_eq!(at_a.len(), 1000, "a received {} of 1000", at_a.len());
        for (i, (from, m)) in at_b.iter().enumerate() {
            assert_eq!((*from, m), (pa, &msg(i as u64)), "b's message #{i}");
        }
        for (i, (from, m)) in at_a.iter().enumerate() {
            assert_eq!(
                (*from, m),
                (pb, &msg(10_000 + i as u64)),
                "a's message #{i}"
            );
        }
        let ma = a.metrics();
        let to_b = ma.peer(pb);
        assert_eq!(to_b.messages_sent, 1000);
        assert_eq!(to_b.messages_received, 1000, "a received 1000 from b");
        assert_eq!(to_b.messages_dropped + to_b.messages_lost, 0);
        assert!(to_b.connected);
        assert_eq!(b.metrics().peer(pa).frames_received, to_b.frames_sent);
        assert_eq!(b.metrics().peer(pa).bytes_received, to_b.bytes_sent);
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn three_transports_all_to_all_keep_per_sender_order() {
    run("three_way", Duration::from_secs(30), || async {
        let reg = Registry::new();
        // Three nodes, the shard index differs too: addressing is (node, shard).
        let ts: Vec<Transport> = (0..3)
            .map(|i| start(config(10 + i, i as u32), &reg))
            .collect();
        let ids: Vec<PeerId> = ts.iter().map(|t| t.local()).collect();
        let n = 300u64;
        for i in 0..n {
            for (s, t) in ts.iter().enumerate() {
                for (d, to) in ids.iter().enumerate() {
                    if s != d {
                        t.send(*to, msg(s as u64 * 1_000_000 + i)).unwrap();
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
        for (d, t) in ts.iter().enumerate() {
            let got = recv_n(t, 2 * n as usize, SECS_10).await;
            assert_eq!(
                got.len(),
                2 * n as usize,
                "shard {d} got {} messages",
                got.len()
            );
            for (s, from) in ids.iter().enumerate() {
                if s == d {
                    continue;
                }
                let seq: Vec<&Bytes> = got
                    .iter()
                    .filter(|(f, _)| f == from)
                    .map(|(_, m)| m)
                    .collect();
                let want: Vec<Bytes> = (0..n).map(|i| msg(s as u64 * 1_000_000 + i)).collect();
                assert_eq!(seq.len(), want.len(), "{d} from {s}");
                assert!(
                    seq.iter().zip(&want).all(|(a, b)| *a == b),
                    "{d} from {s}: order broken"
                );
            }
        }
        for t in &ts {
            t.shutdown().await;
        }
    });
}

/// A message queued by a task that became runnable after the sender woke
/// (as a shard's driver turn follows the inbound message that woke the
/// sender) travels in the same frame: the sender lets the runnable tasks
/// queue theirs before it drains.
#[test]
fn messages_of_tasks_runnable_at_the_wake_share_one_frame() {
    run("wake_batching", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = std::rc::Rc::new(start(config(1, 0), &reg));
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        // Connect first, so that the sender is idle and connected.
        a.send(pb, msg(0)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_10).await.len(), 1);
        wait_until(
            "the first frame to be counted",
            SECS_10,
            || a.metrics().peer(pb).frames_sent,
            |n| *n == 1,
        )
        .await;
        let go = std::rc::Rc::new(glommio::sync::Semaphore::new(0));
        let producer = {
            let (a, go) = (a.clone(), go.clone());
            glommio::spawn_local(async move {
                go.acquire(1).await.unwrap();
                a.send(pb, msg(2)).unwrap();
            })
        };
        // The producer runs until it waits for `go`.
        futures_lite::future::yield_now().await;
        // Wakes the sender first, then the producer.
        a.send(pb, msg(1)).unwrap();
        go.signal(1);
        producer.await;
        let got = recv_n(&b, 2, SECS_10).await;
        assert_eq!(got.len(), 2);
        let m = a.metrics().peer(pb);
        assert_eq!(m.messages_sent, 3);
        assert_eq!(
            m.frames_sent,
            2,
            "the two messages queued at one wake took {} frames",
            m.frames_sent - 1
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn many_messages_travel_in_few_frames() {
    run("batching", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        // Queued without yielding: the sender task sees them all at once.
        for i in 0..10_000 {
            a.send(pb, msg(i)).unwrap();
        }
        let got = recv_n(&b, 10_000, SECS_10).await;
        assert_eq!(got.len(), 10_000);
        let m = a.metrics().peer(pb);
        assert_eq!(m.messages_sent, 10_000);
        assert!(
            m.frames_sent <= 2,
            "10,000 queued messages took {} frames",
            m.frames_sent
        );

        // And with one frame per message, as the benchmark's baseline does.
        let mut c1 = config(3, 0);
        c1.frame_messages_max = 1;
        let c = start(c1, &reg);
        c.send_batch(pb, (0..100).map(msg));
        let got = recv_n(&b, 100, SECS_10).await;
        assert_eq!(got.len(), 100);
        assert_eq!(c.metrics().peer(pb).frames_sent, 100);
        for t in [&a, &b, &c] {
            t.shutdown().await;
        }
    });
}

#[test]
fn full_queue_drops_and_counts_without_blocking() {
    run("drop_on_full", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let mut ca = config(1, 0);
        ca.send_queue_messages_max = 100;
        let a = start(ca, &reg);
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        let mut full = 0;
        for i in 0..1000 {
            match a.send(pb, msg(i)) {
                Ok(()) => {}
                Err(SendError::QueueFull { peer }) => {
                    assert_eq!(peer, pb);
                    full += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(full, 900);
        assert_eq!(a.queue_depth(pb), 100);
        let m = a.metrics().peer(pb);
        assert_eq!((m.messages_dropped, m.queue_depth), (900, 100));
        // send_batch reports how many it took.
        assert_eq!(a.send_batch(pb, (0..10).map(msg)), 0);
        let got = recv_n(&b, 100, SECS_10).await;
        assert_eq!(got.len(), 100);
        assert_eq!(
            got.last().unwrap().1,
            msg(99),
            "the first 100 went, the rest dropped"
        );
        // Byte bound too.
        let mut cc = config(3, 0);
        cc.send_queue_bytes_max = 1000;
        let c = start(cc, &reg);
        assert!(c.send(pb, Bytes::from(vec![0u8; 600])).is_ok());
        assert_eq!(
            c.send(pb, Bytes::from(vec![0u8; 600])),
            Err(SendError::QueueFull { peer: pb })
        );
        // Oversized messages are refused outright.
        let big = vec![0u8; 8 << 20];
        assert!(matches!(
            c.send(pb, Bytes::from(big)),
            Err(SendError::MessageTooLarge { .. })
        ));
        for t in [&a, &b, &c] {
            t.shutdown().await;
        }
    });
}

#[test]
fn reconnects_after_the_peer_restarts() {
    run("reconnect", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        a.send(pb, msg(1)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_10).await.len(), 1);
        let addr = b.local_addr();
        b.shutdown().await;
        drop(b);
        // A notices the close while idle.
        wait_until(
            "a to see b gone",
            SECS_10,
            || a.metrics().peer(pb).connected,
            |c| !c,
        )
        .await;
        // Restart B on the same address.
        let mut cb = config(2, 0);
        cb.listen_addr = Some(addr);
        let b2 = start(cb, &reg);
        let mut i = 100;
        let got = loop {
            a.send(pb, msg(i)).unwrap();
            i += 1;
            let got = recv_n(&b2, 1, Duration::from_millis(20)).await;
            if !got.is_empty() {
                break got;
            }
            assert!(i < 1000, "b2 never received after its restart");
        };
        assert_eq!(got[0].0, a.local());
        let m = a.metrics().peer(pb);
        assert!(m.reconnects >= 1, "reconnects counted: {m:?}");
        a.shutdown().await;
        b2.shutdown().await;
    });
}

/// A second transport on an address another one listens on fails to bind
/// instead of sharing the port (glommio's own bind sets SO_REUSEPORT: the
/// kernel then spread the peers' connections over both listeners, so two
/// clusters on one host exchanged raft messages).
#[test]
fn a_second_listener_on_a_bound_address_is_refused() {
    run("exclusive_bind", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let mut cb = config(2, 0);
        cb.listen_addr = Some(a.local_addr());
        match Transport::new(cb, reg.clone()) {
            Err(flotilla_transport::TransportError::Bind { addr, source }) => {
                assert_eq!(addr, a.local_addr());
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}");
            }
            Err(e) => panic!("expected a bind error, got {e}"),
            Ok(b) => {
                b.shutdown().await;
                panic!("a second transport bound {}", a.local_addr());
            }
        }
        a.shutdown().await;
    });
}

#[test]
fn registry_update_redirects_traffic_to_the_new_address() {
    run("readdress", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        a.send(pb, msg(1)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_10).await.len(), 1);
        // B moves: a new transport on a new port, published in the registry.
        // The old one keeps running, so only the registry can redirect A.
        let b2 = start(config(2, 0), &reg);
        assert_ne!(b2.local_addr(), b.local_addr());
        a.send(pb, msg(2)).unwrap();
        let got = recv_n(&b2, 1, SECS_10).await;
        assert_eq!(got, vec![(a.local(), msg(2))]);
        assert!(recv_n(&b, 1, Duration::from_millis(50)).await.is_empty());
        for t in [&a, &b, &b2] {
            t.shutdown().await;
        }
    });
}

#[test]
fn unreachable_peer_backs_off_and_unknown_peer_loses() {
    run("backoff", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        // An address where nothing listens: bind, learn the port, close.
        let dead = {
            let t = start(config(9, 0), &reg);
            let addr = t.local_addr();
            t.shutdown().await;
            addr
        };
        let pd = PeerId::new(9, 0);
        reg.set_shard_addr(pd, dead);
        a.send(pd, msg(1)).unwrap();
        glommio::timer::sleep(Duration::from_millis(400)).await;
        let m = a.metrics().peer(pd);
        // Backoff 5 ms doubling to 50 ms: about 10 dials in 400 ms, never hundreds.
        assert!(
            (3..=40).contains(&m.dial_failures),
            "dial failures {}",
            m.dial_failures
        );
        assert!(!m.connected);
        assert_eq!(a.queue_depth(pd), 1, "message waits for a connection");
        // A peer with no address at all: queued messages are lost and counted.
        let nowhere = PeerId::new(77, 0);
        a.send(nowhere, msg(1)).unwrap();
        let m = wait_until(
            "loss counted",
            SECS_10,
            || a.metrics().peer(nowhere),
            |m| m.messages_lost == 1,
        )
        .await;
        assert_eq!(m.queue_depth, 0);
        a.shutdown().await;
        assert_eq!(a.send(pd, msg(2)), Err(SendError::ShuttingDown));
        assert_eq!(a.send_batch(pd, [msg(3)]), 0);
    });
}

#[test]
fn slow_consumer_gets_backpressure_not_loss() {
    run("backpressure", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let mut cb = config(2, 0);
        cb.inbound_batches_max = 2;
        let b = start(cb, &reg);
        let mut c1 = config(1, 1);
        c1.frame_messages_max = 10;
        let a1 = start(c1, &reg);
        let pb = b.local();
        for i in 0..5000 {
            a1.send(pb, msg(i)).unwrap();
        }
        a.send(pb, msg(99_999)).unwrap();
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let m = b.metrics();
        assert!(
            m.inbound_queue_depth <= 2,
            "inbound queue bounded: {}",
            m.inbound_queue_depth
        );
        let got = recv_n(&b, 5001, SECS_10).await;
        assert_eq!(got.len(), 5001);
        let from_a1: Vec<Bytes> = got
            .iter()
            .filter(|(f, _)| *f == a1.local())
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(from_a1, (0..5000).map(msg).collect::<Vec<_>>());
        for t in [&a, &a1, &b] {
            t.shutdown().await;
        }
    });
}

#[test]
fn removed_peer_closes_its_connection_and_can_come_back() {
    run("remove_peer", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        a.send(pb, msg(1)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_10).await.len(), 1);
        assert_eq!(b.metrics().connections_open, 1);
        assert!(a.remove_peer(pb));
        assert!(!a.remove_peer(pb), "already gone");
        assert_eq!(a.queue_depth(pb), 0);
        assert_eq!(
            a.metrics().peer(pb).messages_sent,
            0,
            "counters went with it"
        );
        wait_until(
            "b sees the connection closed",
            SECS_10,
            || b.metrics().connections_open,
            |n| *n == 0,
        )
        .await;
        a.send(pb, msg(2)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_10).await, vec![(a.local(), msg(2))]);
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_peer_whose_connection_ends_is_reported_lost_once() {
    run("lost_peer", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        let c = start(config(3, 0), &reg);
        let (pa, pb) = (a.local(), b.local());
        a.send(pb, msg(1)).unwrap();
        c.send(pb, msg(2)).unwrap();
        assert_eq!(recv_n(&b, 2, SECS_10).await.len(), 2);
        assert!(b.take_lost_peers().is_empty(), "both connections are up");
        // a goes away (as a stopped or killed node would): b hears of it,
        // once, and nothing about c.
        a.shutdown().await;
        wait_until(
            "b notices a's connection ended",
            SECS_10,
            || b.metrics().connections_lost,
            |n| *n == 1,
        )
        .await;
        assert_eq!(b.take_lost_peers(), vec![pa]);
        assert!(b.take_lost_peers().is_empty(), "reported once");
        c.send(pb, msg(3)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_10).await.len(), 1);
        assert!(b.take_lost_peers().is_empty(), "c is still connected");
        // Our own shutdown loses nobody.
        b.shutdown().await;
        assert!(b.take_lost_peers().is_empty());
        assert_eq!(b.metrics().connections_lost, 1);
        c.shutdown().await;
    });
}
