//! Active key expiry: the leader of each KV group deletes the keys whose
//! deadline passed (`SET ... EX`, `EXPIRE`), through its log.
//!
//! Every node runs one [`run`] task. It watches the earliest deadline of
//! the KV groups that have deadlines with a local (stale) read every
//! [`TICK`] and, once that deadline is at or before its clock, proposes
//! `KvCommand::ExpireDue { now }`. Every replica then deletes the same keys
//! at the same log position (see `rsm/src/kv/expiry.rs`), so expiry never
//! depends on a follower's clock and a read never sees an expired key come
//! back.
//!
//! Which groups a node watches, and whether it forwards:
//! - a group this node's clients gave a deadline (a hint from the RESP
//!   server): at once, and its `ExpireDue` is forwarded to the leader;
//! - any group found with deadlines by a scan of every group every
//!   [`RESCAN`] (deadlines set through other nodes, or before a restart):
//!   proposed *without* forwarding, so only the leader's node gets it into
//!   the log (a follower's attempt answers `NotLeader` and backs off).
//!
//! So a key is readable until its expiry entry applies: typically within
//! [`TICK`] plus one commit of its deadline (measured: 2.7 ms p50, 11 ms
//! max), and within [`RESCAN`] for a deadline this node did not see set
//! whose node went down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::{GroupId, HostError, NodeHost, ReadConsistency, RequestError};

use crate::resp::command::Shared;
use flotilla_rsm::{encode_noop, KvCommand, KvQuery, KvResult};
use tracing::{debug, warn};

/// How often groups with deadlines are checked.
pub const TICK: Duration = Duration::from_millis(10);
/// How often every group is checked for a first deadline.
const RESCAN: Duration = Duration::from_secs(1);
/// A group this node does not lead is not proposed to again for this long.
const NOT_LEADER_BACKOFF: Duration = Duration::from_millis(200);
/// How long a hint keeps a group watched before its deadline shows.
const HINT_HOLD: Duration = Duration::from_secs(2);
/// Deadline of one read or proposal.
const CALL_DEADLINE: Duration = Duration::from_secs(2);

/// Unix time in milliseconds on this node's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the task knows of one group.
#[derive(Default)]
struct Watch {
    /// Earliest deadline, as last read.
    next: Option<u64>,
    /// Not proposed to before this instant (not the leader here).
    quiet_until: Option<Instant>,
    /// Propose with forwarding (a client of this node set a deadline).
    forward: bool,
    /// Read every tick until then even with no deadline seen: the hint
    /// comes before the command applies here.
    hinted_until: Option<Instant>,
}

/// Runs until `stop` fires (or its sender is dropped).
pub async fn run(shared: Arc<Shared>, stop: flume::Receiver<()>) {
    let host = &shared.host;
    let groups = &shared.kv_groups;
    let mut watch: BTreeMap<GroupId, Watch> = BTreeMap::new();
    let mut last_rescan: Option<Instant> = None;
    loop {
        let stopped = futures_lite::future::or(
            async {
                let _ = stop.recv_async().await;
                true
            },
            async {
                glommio::timer::sleep(TICK).await;
                false
            },
        )
        .await;
        if stopped {
            return;
        }
        let rescan = last_rescan.is_none_or(|t| t.elapsed() >= RESCAN);
        if rescan {
            last_rescan = Some(Instant::now());
        }
        for (i, g) in groups.iter().enumerate() {
            let w = watch.entry(*g).or_default();
            if shared.take_expiry_hint(i) {
                w.forward = true;
                w.hinted_until = Some(Instant::now() + HINT_HOLD);
            }
            let held = w.hinted_until.is_some_and(|t| Instant::now() < t);
            if !rescan && !held && w.next.is_none() {
                continue;
            }
            w.next = next_deadline(host, *g).await;
            let Some(next) = w.next else {
                if !held {
                    w.forward = false;
                }
                continue;
            };
            let now = unix_ms();
            if next > now || w.quiet_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            match expire_due(host, *g, now, w.forward).await {
                Ok(n) => {
                    w.quiet_until = None;
                    debug!(group = g.0, expired = n, now, "expired keys");
                }
                Err(HostError::Request(RequestError::NotLeader { .. })) => {
                    w.quiet_until = Some(Instant::now() + NOT_LEADER_BACKOFF);
                }
                Err(HostError::ShuttingDown) => return,
                Err(e) => debug!(group = g.0, error = %e, "expiry proposal failed; retried"),
            }
        }
    }
}

/// The group's earliest deadline on this replica, if any.
async fn next_deadline(host: &NodeHost, group: GroupId) -> Option<u64> {
    let answer = host
        .read_with(
            group,
            KvQuery::NextDeadline.encode(),
            ReadConsistency::Stale,
            CALL_DEADLINE,
        )
        .await
        .ok()?;
    match KvResult::decode(answer) {
        Ok(KvResult::Int(n)) if n >= 0 => Some(n as u64),
        Ok(KvResult::Int(_)) => None,
        other => {
            warn!(group = group.0, answer = ?other, "unexpected answer to NextDeadline");
            None
        }
    }
}

/// Proposes `ExpireDue { now }` if this replica leads `group`; returns how
/// many keys it deleted (at most `EXPIRE_DUE_KEYS_MAX`: the group stays
/// watched and the next tick proposes again).
async fn expire_due(
    host: &NodeHost,
    group: GroupId,
    now: u64,
    forward: bool,
) -> Result<u64, HostError> {
    let cmd = encode_noop(&KvCommand::ExpireDue { now_ms: now }.encode());
    let answer = host
        .propose_with(group, cmd, forward, CALL_DEADLINE)
        .await?;
    match KvResult::decode(answer) {
        Ok(KvResult::Count(n)) => Ok(n),
        other => {
            warn!(group = group.0, answer = ?other, "unexpected answer to ExpireDue");
            Ok(0)
        }
    }
}
