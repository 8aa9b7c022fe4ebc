//! The command envelope: how a proposal says which client session, if any,
//! it belongs to. The engine and clients build proposals with
//! [`Envelope::encode`] (or a [`ClientSession`]); [`crate::Rsm`] decodes them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::Reader;
use crate::error::DecodeError;

const TAG_NOOP: u8 = 0x01;
const TAG_SESSION: u8 = 0x02;
const TAG_REGISTER: u8 = 0x03;
const TAG_UNREGISTER: u8 = 0x04;
const TAG_TAGGED: u8 = 0x05;

/// Bytes an envelope adds in front of a session command.
pub const SESSION_HEADER_BYTES: usize = 1 + 8 + 8 + 8;

/// A decoded command envelope.
///
/// Client id 0 is reserved (invalid in a session, register or unregister).
/// Series ids of a session start at 1 and grow by one per new command;
/// `responded_to` is the highest series id whose response the client has
/// received, and every lower one too (dragonboat's session protocol), so it
/// is always below the command's own series id (decoding rejects the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A command without exactly-once protection (applied every time it is
    /// committed).
    NoOp {
        /// The state-machine command.
        payload: Bytes,
    },
    /// A command of a registered session: applied at most once per
    /// `(client_id, series_id)`; a retry gets the cached result.
    Session {
        /// The session's client id (non-zero).
        client_id: u64,
        /// This command's series id (starts at 1).
        series_id: u64,
        /// The client has received every response up to and including this
        /// series id; the state machine may forget them.
        responded_to: u64,
        /// The state-machine command.
        payload: Bytes,
    },
    /// A command without exactly-once protection, marked by the node that
    /// forwarded it to the leader: applied exactly like [`Envelope::NoOp`];
    /// the mark lets that node recognise the entry in its own replica's log
    /// when the leader failed before saying where it put it.
    Tagged {
        /// Unique among the forwarding node's requests in flight.
        tag: u64,
        /// The state-machine command.
        payload: Bytes,
    },
    /// Open a session for `client_id`.
    Register {
        /// The client id (non-zero, chosen randomly by the client).
        client_id: u64,
    },
    /// Close the session of `client_id`.
    Unregister {
        /// The client id.
        client_id: u64,
    },
}

impl Envelope {
    /// Encodes the envelope.
    ///
    /// ```text
    /// NoOp        | 0x01 | payload ...                                              |
    /// Session     | 0x02 | client_id u64 | series_id u64 | responded_to u64 | payload ... |
    /// Register    | 0x03 | client_id u64 |
    /// Unregister  | 0x04 | client_id u64 |
    /// Tagged      | 0x05 | tag u64 | payload ...                                    |
    /// ```
    /// Integers are little-endian; the payload runs to the end of the entry.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use flotilla_rsm::Envelope;
    /// let e = Envelope::Register { client_id: 7 };
    /// assert_eq!(Envelope::decode(e.encode()).unwrap(), e);
    /// ```
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Envelope::NoOp { payload } => 1 + payload.len(),
            Envelope::Session { payload, .. } => SESSION_HEADER_BYTES + payload.len(),
            Envelope::Register { .. } | Envelope::Unregister { .. } => 9,
            Envelope::Tagged { payload, .. } => 9 + payload.len(),
        }
    }

    /// Appends the encoding to `out` (see [`Envelope::encode`]).
    pub fn encode_into(&self, out: &mut BytesMut) {
        match self {
            Envelope::NoOp { payload } => {
                out.put_u8(TAG_NOOP);
                out.put_slice(payload);
            }
            Envelope::Session {
                client_id,
                series_id,
                responded_to,
                payload,
            } => {
                debug_assert_ne!(*client_id, 0, "client id 0 is reserved");
                out.put_u8(TAG_SESSION);
                out.put_u64_le(*client_id);
                out.put_u64_le(*series_id);
                out.put_u64_le(*responded_to);
                out.put_slice(payload);
            }
            Envelope::Tagged { tag, payload } => {
                out.put_u8(TAG_TAGGED);
                out.put_u64_le(*tag);
                out.put_slice(payload);
            }
            Envelope::Register { client_id } => {
                out.put_u8(TAG_REGISTER);
                out.put_u64_le(*client_id);
            }
            Envelope::Unregister { client_id } => {
                out.put_u8(TAG_UNREGISTER);
                out.put_u64_le(*client_id);
            }
        }
    }

    /// Decodes an envelope; the payload is a zero-copy slice of `entry`.
    ///
    /// # Errors
    /// [`DecodeError`] for an empty entry, an unknown tag, a short header,
    /// trailing bytes after a register/unregister, or client id 0.
    pub fn decode(entry: Bytes) -> Result<Envelope, DecodeError> {
        let mut r = Reader::new(entry);
        let tag = r.u8()?;
        let env = match tag {
            TAG_NOOP => Envelope::NoOp {
                payload: r.into_rest(),
            },
            TAG_TAGGED => Envelope::Tagged {
                tag: r.u64()?,
                payload: r.into_rest(),
            },
            TAG_SESSION => {
                let client_id = r.u64()?;
                let series_id = r.u64()?;
                let responded_to = r.u64()?;
                if client_id == 0 {
                    return Err(DecodeError::Invalid { what: "client id" });
                }
                if series_id == 0 {
                    return Err(DecodeError::Invalid { what: "series id" });
                }
                // A client cannot have seen the response of the command it
                // is proposing: such an entry is corrupt (and must not
                // acknowledge, i.e. forget, anything).
                if responded_to >= series_id {
                    return Err(DecodeError::Invalid {
                        what: "responded to",
                    });
                }
                Envelope::Session {
                    client_id,
                    series_id,
                    responded_to,
                    payload: r.into_rest(),
                }
            }
            TAG_REGISTER | TAG_UNREGISTER => {
                let client_id = r.u64()?;
                r.finish()?;
                if client_id == 0 {
                    return Err(DecodeError::Invalid { what: "client id" });
                }
                if tag == TAG_REGISTER {
                    Envelope::Register { client_id }
                } else {
                    Envelope::Unregister { client_id }
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "envelope",
                    tag,
                })
            }
        };
        Ok(env)
    }
}

/// Wraps `payload` in a [`Envelope::NoOp`] envelope (no exactly-once).
pub fn encode_noop(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + payload.len());
    out.put_u8(TAG_NOOP);
    out.put_slice(payload);
    out.freeze()
}

/// `entry` (an encoded envelope) marked with `tag`: a [`Envelope::NoOp`]
/// becomes a [`Envelope::Tagged`] with the same payload; any other envelope
/// (a session's commands are exactly-once already) gives `None`.
pub fn tag_noop(entry: &[u8], tag: u64) -> Option<Bytes> {
    let (&kind, payload) = entry.split_first()?;
    if kind != TAG_NOOP {
        return None;
    }
    let mut out = BytesMut::with_capacity(9 + payload.len());
    out.put_u8(TAG_TAGGED);
    out.put_u64_le(tag);
    out.put_slice(payload);
    Some(out.freeze())
}

/// The tag of an encoded [`Envelope::Tagged`], without decoding the rest.
pub fn tag_of(entry: &[u8]) -> Option<u64> {
    match entry {
        [TAG_TAGGED, tag @ ..] if tag.len() >= 8 => {
            Some(u64::from_le_bytes(tag[..8].try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

/// The client side of an exactly-once session (dragonboat's `client.Session`).
///
/// Protocol: propose [`ClientSession::register`] once; then for each command
/// propose [`ClientSession::propose`] — *retrying the same bytes* until a
/// result arrives — and call [`ClientSession::completed`] once it has. A
/// command is applied at most once however often it is retried. Finally
/// propose [`ClientSession::unregister`]. One command in flight per session
/// at a time is the simple use; pipelining several is allowed as long as
/// `completed` is called in series order.
///
/// # Examples
/// ```
/// use flotilla_rsm::{ClientSession, Envelope};
/// let mut s = ClientSession::new(42);
/// let _register = s.register();
/// let p1 = s.propose(b"cmd-1");
/// let retry = s.propose(b"cmd-1");
/// assert_eq!(p1, retry); // same series id until completed
/// s.completed();
/// match Envelope::decode(s.propose(b"cmd-2")).unwrap() {
///     Envelope::Session { series_id, responded_to, .. } => {
///         assert_eq!((series_id, responded_to), (2, 1));
///     }
///     _ => unreachable!(),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSession {
    client_id: u64,
    series_id: u64,
    responded_to: u64,
}

impl ClientSession {
    /// A session for `client_id` (pick it randomly; non-zero).
    ///
    /// # Panics
    /// If `client_id` is 0 (reserved).
    pub fn new(client_id: u64) -> Self {
        assert_ne!(client_id, 0, "client id 0 is reserved");
        Self {
            client_id,
            series_id: 1,
            responded_to: 0,
        }
    }

    /// The client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The series id the next [`ClientSession::propose`] uses.
    pub fn series_id(&self) -> u64 {
        self.series_id
    }

    /// The proposal that registers this session.
    pub fn register(&self) -> Bytes {
        Envelope::Register {
            client_id: self.client_id,
        }
        .encode()
    }

    /// The proposal that unregisters this session.
    pub fn unregister(&self) -> Bytes {
        Envelope::Unregister {
            client_id: self.client_id,
        }
        .encode()
    }

    /// The proposal for `payload` under the current series id. Retries of
    /// one command must propose these same bytes again.
    pub fn propose(&self, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(SESSION_HEADER_BYTES + payload.len());
        out.put_u8(TAG_SESSION);
        out.put_u64_le(self.client_id);
        out.put_u64_le(self.series_id);
        out.put_u64_le(self.responded_to);
        out.put_slice(payload);
        out.freeze()
    }

    /// The current command has its result: move on to the next series id.
    pub fn completed(&mut self) {
        self.responded_to = self.series_id;
        self.series_id += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        let e = Envelope::Session {
            client_id: 1,
            series_id: 2,
            responded_to: 1,
            payload: Bytes::from_static(b"x"),
        };
        let mut want = vec![0x02];
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(b'x');
        assert_eq!(&e.encode()[..], &want[..]);
        assert_eq!(&encode_noop(b"ab")[..], &[0x01, b'a', b'b']);
        assert_eq!(
            &Envelope::Unregister { client_id: 3 }.encode()[..],
            &[0x04, 3, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_tagged_noop_keeps_its_payload_and_tells_its_tag() {
        let noop = encode_noop(b"cmd");
        let tagged = tag_noop(&noop, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(tagged[0], 0x05);
        assert_eq!(&tagged[1..9], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(tag_of(&tagged), Some(0x0102_0304_0506_0708));
        assert_eq!(
            Envelope::decode(tagged.clone()).unwrap(),
            Envelope::Tagged {
                tag: 0x0102_0304_0506_0708,
                payload: Bytes::from_static(b"cmd")
            }
        );
        assert_eq!(
            Envelope::decode(tagged.clone()).unwrap().encode(),
            tagged,
            "round trip"
        );
        assert_eq!(tag_of(&noop), None);
        assert_eq!(tag_of(&tagged[..8]), None, "short tag");
        let register = Envelope::Register { client_id: 4 }.encode();
        assert_eq!(tag_noop(&register, 1), None, "only no-session commands");
        assert_eq!(tag_noop(&[], 1), None);
        assert!(matches!(
            Envelope::decode(Bytes::copy_from_slice(&tagged[..5])),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert!(matches!(
            Envelope::decode(Bytes::new()),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Envelope::decode(Bytes::from_static(&[0x09])),
            Err(DecodeError::UnknownTag { tag: 9, .. })
        ));
        assert!(matches!(
            Envelope::decode(Bytes::from_static(&[0x02, 1, 0])),
            Err(DecodeError::Truncated { .. })
        ));
        let mut reg = Envelope::Register { client_id: 5 }.encode().to_vec();
        reg.push(0);
        assert!(matches!(
            Envelope::decode(reg.into()),
            Err(DecodeError::TrailingBytes { len: 1 })
        ));
        let ahead = Envelope::Session {
            client_id: 1,
            series_id: 3,
            responded_to: 3,
            payload: Bytes::new(),
        };
        assert_eq!(
            Envelope::decode(ahead.encode()),
            Err(DecodeError::Invalid {
                what: "responded to"
            })
        );
        let zero = [0x03, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            Envelope::decode(Bytes::copy_from_slice(&zero)),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn client_session_series() {
        let mut s = ClientSession::new(9);
        assert_eq!(s.series_id(), 1);
        s.completed();
        s.completed();
        match Envelope::decode(s.propose(b"p")).unwrap() {
            Envelope::Session {
                client_id,
                series_id,
                responded_to,
                payload,
            } => {
                assert_eq!((client_id, series_id, responded_to), (9, 3, 2));
                assert_eq!(&payload[..], b"p");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
