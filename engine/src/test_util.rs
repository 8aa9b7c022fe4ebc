//! Helpers for tests that start nodes in one process.

use std::net::{SocketAddr, TcpListener};

/// A base address on 127.0.0.1 whose `count` consecutive ports are free right
/// now (shard `s` of a node listens on `base + s`). Ports are probed by
/// binding and releasing them, so a later bind can still race with another
/// process; tests in one process do not collide because each call moves on
/// from the last port handed out.
pub fn free_port_block(count: usize) -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 20_000) as u16;
    let _ = NEXT.compare_exchange(0, 20_000 + seed, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let base = NEXT.fetch_add(count as u16 + 1, Ordering::Relaxed);
        if u32::from(base) + count as u32 >= 60_000 {
            NEXT.store(20_000, Ordering::Relaxed);
            continue;
        }
        let all_free = (0..count as u16)
            .all(|i| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], base + i))).is_ok());
        if all_free {
            return SocketAddr::from(([127, 0, 0, 1], base));
        }
    }
}
