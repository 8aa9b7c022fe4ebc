//! What the engine keeps per group in the WAL's opaque metadata record
//! besides entries and hard state: the memberships Raft needs on restart
//! and whether the replica is a witness.
//!
//! ```text
//! u8 version (1) | u8 flags (bit 0: witness)
//! membership × 2 (the base — bootstrap or last snapshot's — then the latest):
//!   u64 config_index | u32 count | count × ( u64 id | u8 kind | u32 len | address )
//! (integers little-endian)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::raft::{Member, MemberKind, Membership, NodeId};

const META_VERSION: u8 = 1;
const FLAG_WITNESS: u8 = 1;

/// The decoded metadata of one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct GroupMeta {
    pub(crate) witness: bool,
    /// Membership at the last snapshot (the bootstrap one before any).
    pub(crate) base: Membership,
    /// The latest membership Raft asked to persist.
    pub(crate) latest: Membership,
}

impl GroupMeta {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(META_VERSION);
        b.put_u8(if self.witness { FLAG_WITNESS } else { 0 });
        put_membership(&mut b, &self.base);
        put_membership(&mut b, &self.latest);
        b.freeze()
    }

    /// # Errors
    /// A description of what is wrong (the WAL checked the record's CRC, so
    /// this is a format mismatch or a bug, never silently ignored).
    pub(crate) fn decode(mut buf: Bytes) -> Result<GroupMeta, String> {
        if buf.remaining() < 2 {
            return Err("group metadata too short".into());
        }
        let version = buf.get_u8();
        if version != META_VERSION {
            return Err(format!("group metadata version {version} unsupported"));
        }
        let flags = buf.get_u8();
        let base = get_membership(&mut buf)?;
        let latest = get_membership(&mut buf)?;
        if buf.has_remaining() {
            return Err(format!(
                "{} trailing bytes in group metadata",
                buf.remaining()
            ));
        }
        Ok(GroupMeta {
            witness: flags & FLAG_WITNESS != 0,
            base,
            latest,
        })
    }
}

pub(crate) fn put_membership(b: &mut BytesMut, m: &Membership) {
    b.put_u64_le(m.config_index);
    b.put_u32_le(m.members.len() as u32);
    for x in &m.members {
        b.put_u64_le(x.id.0);
        b.put_u8(match x.kind {
            MemberKind::Voter => 0,
            MemberKind::Observer => 1,
            MemberKind::Witness => 2,
        });
        b.put_u32_le(x.address.len() as u32);
        b.put_slice(&x.address);
    }
}

pub(crate) fn get_membership(buf: &mut Bytes) -> Result<Membership, String> {
    let short = || "group metadata truncated".to_string();
    if buf.remaining() < 12 {
        return Err(short());
    }
    let config_index = buf.get_u64_le();
    let count = buf.get_u32_le() as usize;
    if count > buf.remaining() / 13 {
        return Err(format!("group metadata claims {count} members"));
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        if buf.remaining() < 13 {
            return Err(short());
        }
        let id = NodeId(buf.get_u64_le());
        let kind = match buf.get_u8() {
            0 => MemberKind::Voter,
            1 => MemberKind::Observer,
            2 => MemberKind::Witness,
            k => return Err(format!("unknown member kind {k} in group metadata")),
        };
        let len = buf.get_u32_le() as usize;
        if buf.remaining() < len {
            return Err(short());
        }
        let address = buf.split_to(len);
        members.push(Member { id, kind, address });
    }
    Ok(Membership::new(config_index, members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        let meta = GroupMeta {
            witness: true,
            base: Membership::voters(&[1, 2, 3]),
            latest: Membership::new(
                9,
                vec![Member {
                    id: NodeId(4),
                    kind: MemberKind::Observer,
                    address: Bytes::from_static(b"127.0.0.1:7000"),
                }],
            ),
        };
        let bytes = meta.encode();
        assert_eq!(GroupMeta::decode(bytes.clone()).unwrap(), meta);
        for cut in 0..bytes.len() {
            assert!(
                GroupMeta::decode(bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = bytes.to_vec();
        bad[0] = 9;
        assert!(GroupMeta::decode(Bytes::from(bad)).is_err());
    }
}
