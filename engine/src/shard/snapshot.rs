//! Snapshots of a shard's groups: taking them (and compacting behind them),
//! streaming them to followers that need compacted entries, installing
//! received ones, and loading them at restart.
//!
//! A snapshot file (storage's format: header + CRC, temp name, fdatasync,
//! rename, directory sync) holds:
//!
//! ```text
//! u32 prefix_len | membership at the snapshot index (shard::meta encoding)
//! rsm snapshot stream (flotilla_rsm::SnapshotWriter::write_to)
//! ```
//!
//! Order of durability: the file is durable before Raft and the WAL
//! compact behind it, and a received snapshot's file is durable before Raft
//! sees the `InstallSnapshot` message (whose acknowledgement leaves only
//! after the WAL marker is durable). So the WAL's snapshot marker never
//! points past the newest snapshot file, and restart always finds the state
//! it needs.
//!
//! Snapshots travel and are installed through memory (one buffer per
//! transfer; at most [`SENDS_MAX`] outgoing and [`RECEIVES_MAX`] incoming
//! per shard); witnesses get the metadata only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use flotilla_rsm::{KvStore, LoadedSnapshot, Rsm};
use flotilla_storage as storage;
use flotilla_transport as transport;
use tracing::{debug, info, warn};

use super::driver::SharedDriver;
use super::meta::{get_membership, put_membership};
use crate::raft::{GroupId, MemberKind, Membership, Message, MessageType, SnapshotMeta};
use crate::wire;

/// Outgoing snapshot transfers at once per shard.
pub(crate) const SENDS_MAX: usize = 2;
/// Incoming snapshot transfers at once per shard.
pub(crate) const RECEIVES_MAX: usize = 2;

type Kick = Rc<glommio::sync::Semaphore>;
/// A received snapshot's bytes, shared by its sink and the inbox.
type SharedBuf = Rc<RefCell<Vec<u8>>>;

/// Encodes the file prefix.
fn prefix(membership: &Membership) -> Vec<u8> {
    let mut m = BytesMut::new();
    put_membership(&mut m, membership);
    let mut out = Vec::with_capacity(4 + m.len());
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out
}

/// Splits a snapshot file's content into its membership and rsm stream.
fn split(data: &Bytes) -> Result<(Membership, Bytes), String> {
    if data.len() < 4 {
        return Err("snapshot shorter than its prefix".into());
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if data.len() < 4 + len {
        return Err(format!("snapshot prefix of {len} bytes is truncated"));
    }
    let mut m = data.slice(4..4 + len);
    let membership = get_membership(&mut m)?;
    if m.has_remaining() {
        return Err("trailing bytes in the snapshot prefix".into());
    }
    Ok((membership, data.slice(4 + len..)))
}

/// Reads the latest snapshot file of `group` in `dir`.
async fn read_latest(
    dir: &Path,
    group: GroupId,
) -> Result<Option<(storage::snapshot::SnapshotFile, Bytes)>, String> {
    let Some(file) = storage::snapshot::latest_snapshot(dir, group.0)
        .await
        .map_err(|e| format!("listing snapshots: {e}"))?
    else {
        return Ok(None);
    };
    let mut reader = storage::snapshot::SnapshotReader::open(&file.path)
        .await
        .map_err(|e| format!("{}: {e}", file.path.display()))?;
    let data = reader
        .read_to_end()
        .await
        .map_err(|e| format!("{}: {e}", file.path.display()))?;
    let _ = reader.close().await;
    Ok(Some((file, Bytes::from(data))))
}

/// Loads an rsm stream into fresh KV state.
async fn load_rsm(stream: Bytes) -> Result<LoadedSnapshot, String> {
    let loader = Rsm::new(Box::new(KvStore::new()), Default::default()).loader();
    let mut src: &[u8] = &stream;
    loader
        .load(&mut src)
        .await
        .map_err(|e| format!("snapshot state: {e}"))
}

/// At restart: the newest snapshot of `group`, if any, as (index, size in
/// bytes, state).
///
/// # Errors
/// An unreadable or corrupt snapshot file.
pub(crate) async fn load_for_restart(
    dir: &Path,
    group: GroupId,
) -> Result<Option<(u64, u64, LoadedSnapshot)>, String> {
    let Some((file, data)) = read_latest(dir, group).await? else {
        return Ok(None);
    };
    let (_, stream) = split(&data)?;
    let loaded = load_rsm(stream).await?;
    if loaded.meta().applied_index != file.index {
        return Err(format!(
            "{}: state at index {} but the file says {}",
            file.path.display(),
            loaded.meta().applied_index,
            file.index
        ));
    }
    Ok(Some((file.index, data.len() as u64, loaded)))
}

/// Takes a snapshot of `group` at its applied index, makes it durable, then
/// compacts Raft and the WAL behind it (keeping the configured overhead).
/// Returns the snapshot index.
pub(crate) async fn take(driver: SharedDriver, group: GroupId) -> Result<u64, String> {
    // Counted by `snapshots_running` (a stopped group's files are deleted
    // only once this ends).
    let outcome = take_inner(&driver, group).await;
    driver.borrow_mut().snapshot_taken(group, &outcome);
    outcome.map(|(index, _)| index)
}

/// The snapshot's index and size in bytes (0 for a witness, which keeps no
/// state).
async fn take_inner(driver: &SharedDriver, group: GroupId) -> Result<(u64, u64), String> {
    debug_assert!(
        driver.borrow().on_bulk_queue(),
        "snapshot taken off the bulk queue"
    );
    let (writer, index, term, membership, dir) = {
        let d = driver.borrow();
        let g = d.group(group).ok_or("group stopped")?;
        let index = g.applied_index();
        let term = g
            .raft
            .term_at(index)
            .ok_or_else(|| format!("no term for applied index {index}"))?;
        let membership = g.raft.membership_at(index);
        (g.capture(), index, term, membership, d.snapshot_dir())
    };
    let mut bytes = 0;
    if let Some(writer) = writer {
        let mut data = prefix(&membership);
        writer
            .write_to(&mut data)
            .await
            .map_err(|e| format!("capturing state: {e}"))?;
        let mut file = storage::snapshot::SnapshotWriter::create(&dir, group.0, index, term)
            .await
            .map_err(|e| e.to_string())?;
        file.write(&data).await.map_err(|e| e.to_string())?;
        file.finish().await.map_err(|e| e.to_string())?;
        info!(
            group = group.0,
            index,
            term,
            bytes = data.len(),
            "snapshot taken"
        );
        bytes = data.len() as u64;
    }
    let (batch, wal) = driver.borrow_mut().compact_behind(group, index)?;
    if let Some(batch) = batch {
        wal.write(batch).await.map_err(|e| e.to_string())?;
    }
    Ok((index, bytes))
}

/// Streams the newest snapshot of `group` to `to` for Raft's
/// `InstallSnapshot` message `msg`, then tells Raft how it went.
pub(crate) async fn send(driver: SharedDriver, kick: Kick, msg: Message) {
    let group = msg.group;
    let to = msg.to;
    let ok = match send_inner(&driver, msg).await {
        Ok(bytes) => {
            info!(group = group.0, to = to.0, bytes, "snapshot sent");
            true
        }
        Err(e) => {
            warn!(group = group.0, to = to.0, error = %e, "snapshot send failed");
            false
        }
    };
    driver.borrow_mut().snapshot_sent(group, to, ok);
    kick.signal(1);
}

async fn send_inner(driver: &SharedDriver, mut msg: Message) -> Result<usize, String> {
    debug_assert!(
        driver.borrow().on_bulk_queue(),
        "snapshot sent off the bulk queue"
    );
    let group = msg.group;
    let (dir, transport, witness, peer) = {
        let d = driver.borrow();
        let g = d.group(group).ok_or("group stopped")?;
        let witness = g
            .raft
            .membership()
            .members
            .iter()
            .any(|m| m.id == msg.to && m.kind == MemberKind::Witness);
        (
            d.snapshot_dir(),
            d.transport(),
            witness,
            d.peer_of(group, msg.to),
        )
    };
    let (file, data) = read_latest(&dir, group)
        .await?
        .ok_or("no snapshot file to send")?;
    let (membership, _) = split(&data)?;
    let core_index = msg.snapshot.as_ref().map_or(0, |s| s.index);
    if file.index < core_index {
        return Err(format!(
            "newest snapshot file is at {} but raft compacted to {core_index}",
            file.index
        ));
    }
    msg.snapshot = Some(SnapshotMeta {
        index: file.index,
        term: file.term,
        membership,
    });
    let header = wire::Encoder::new().encode_to_bytes(&msg);
    let data = if witness { Bytes::new() } else { data };
    let len = data.len();
    transport
        .send_snapshot(peer, header, futures_lite::io::Cursor::new(data))
        .await
        .map_err(|e| e.to_string())?;
    Ok(len)
}

/// Receives snapshot streams for the shard's groups (registered with the
/// transport).
pub(crate) struct Inbox {
    driver: SharedDriver,
    kick: Kick,
    buffers: RefCell<HashMap<(transport::PeerId, Bytes), SharedBuf>>,
}

impl Inbox {
    pub(crate) fn new(driver: SharedDriver, kick: Kick) -> Self {
        Inbox {
            driver,
            kick,
            buffers: RefCell::new(HashMap::new()),
        }
    }
}

impl transport::SnapshotHandler for Inbox {
    fn open(&self, from: transport::PeerId, header: Bytes) -> transport::OpenFuture {
        let verdict = (|| {
            let msg = wire::decode(&header).map_err(|e| format!("bad snapshot header: {e}"))?;
            if msg.kind != MessageType::InstallSnapshot || msg.snapshot.is_none() {
                return Err("snapshot header is not an InstallSnapshot message".to_string());
            }
            if self.driver.borrow().group(msg.group).is_none() {
                return Err(format!("group {} is not hosted here", msg.group));
            }
            let mut buffers = self.buffers.borrow_mut();
            if buffers.len() >= RECEIVES_MAX {
                return Err("too many snapshots in flight; retry later".to_string());
            }
            let buf = Rc::new(RefCell::new(Vec::new()));
            buffers.insert((from, header.clone()), buf.clone());
            Ok(buf)
        })();
        Box::pin(
            async move { verdict.map(|buf| Box::new(MemorySink(buf)) as transport::SnapshotSink) },
        )
    }

    fn finished(
        &self,
        from: transport::PeerId,
        header: Bytes,
        outcome: Result<transport::SnapshotReceived, transport::SnapshotError>,
    ) {
        let Some(buf) = self.buffers.borrow_mut().remove(&(from, header.clone())) else {
            return;
        };
        if let Err(e) = outcome {
            debug!(from = from.node.0, error = %e, "snapshot stream broke");
            return;
        }
        let data = Bytes::from(std::mem::take(&mut *buf.borrow_mut()));
        let Ok(msg) = wire::decode(&header) else {
            return;
        };
        let driver = self.driver.clone();
        let kick = self.kick.clone();
        glommio::spawn_local(async move {
            let group = msg.group;
            // One install per group at a time: a copy that arrives while
            // another is being written (a transfer the leader retried) is
            // dropped, as a lost message would be; Raft hears from the
            // first.
            if driver.borrow().installing_snapshot(group) {
                debug!(
                    group = group.0,
                    "snapshot dropped: another one is being installed"
                );
                return;
            }
            // A stopped group's files are deleted only once this ends.
            driver.borrow_mut().snapshot_file_write(group, true);
            let outcome = install(&driver, msg, data).await;
            driver.borrow_mut().snapshot_file_write(group, false);
            if let Err(e) = outcome {
                warn!(group = group.0, error = %e, "snapshot not installed");
            }
            kick.signal(1);
        })
        .detach();
    }
}

/// Installs a received snapshot: file first (durable), then the state
/// machine, then Raft steps the `InstallSnapshot` message.
async fn install(driver: &SharedDriver, msg: Message, data: Bytes) -> Result<(), String> {
    let group = msg.group;
    let meta = msg.snapshot.clone().ok_or("no snapshot metadata")?;
    // Only a message Raft will restore from (not one whose term went stale
    // while the file was written, nor one its log already covers) may give
    // the state machine its state: never ahead of the log.
    let needed =
        |d: &super::driver::Driver| d.group(group).is_some_and(|g| g.raft.would_restore(&msg));
    let (is_needed, witness, dir) = {
        let d = driver.borrow();
        (needed(&d), d.is_witness(group), d.snapshot_dir())
    };
    let mut loaded = None;
    if is_needed && !witness {
        let (_, stream) = split(&data)?;
        let state = load_rsm(stream).await?;
        if state.meta().applied_index != meta.index {
            return Err(format!(
                "snapshot state at {} but its header says {}",
                state.meta().applied_index,
                meta.index
            ));
        }
        let mut file =
            storage::snapshot::SnapshotWriter::create(&dir, group.0, meta.index, meta.term)
                .await
                .map_err(|e| e.to_string())?;
        file.write(&data).await.map_err(|e| e.to_string())?;
        file.finish().await.map_err(|e| e.to_string())?;
        loaded = Some(state);
    }
    let mut d = driver.borrow_mut();
    if is_needed && needed(&d) {
        d.install_snapshot(group, meta.index, data.len() as u64, loaded)?;
        info!(group = group.0, index = meta.index, "snapshot installed");
    }
    d.step_message(msg);
    Ok(())
}

/// A snapshot sink in memory: bytes are kept until the stream ends.
struct MemorySink(Rc<RefCell<Vec<u8>>>);

impl futures_lite::AsyncWrite for MemorySink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Member, NodeId};

    #[test]
    fn prefix_round_trips_and_truncation_is_an_error() {
        let m = Membership::new(
            3,
            vec![Member {
                id: NodeId(1),
                kind: MemberKind::Voter,
                address: Bytes::from_static(b"127.0.0.1:1"),
            }],
        );
        let mut data = prefix(&m);
        data.extend_from_slice(b"state");
        let data = Bytes::from(data);
        let (back, rest) = split(&data).unwrap();
        assert_eq!(back, m);
        assert_eq!(&rest[..], b"state");
        for cut in 0..data.len() - 5 {
            assert!(split(&data.slice(..cut)).is_err(), "cut {cut}");
        }
    }
}
