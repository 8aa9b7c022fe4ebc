//! The error types at the edges of this crate.

use std::io;

/// Why bytes could not be decoded (an envelope, a KV command, a query, a
/// session table). Carries data, never prose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended early.
    #[error("truncated input: needed {needed} bytes, {remaining} remaining")]
    Truncated {
        /// Bytes needed to continue.
        needed: u64,
        /// Bytes that were left.
        remaining: u64,
    },
    /// An unknown tag byte.
    #[error("unknown {what} tag {tag:#04x}")]
    UnknownTag {
        /// Which tagged type.
        what: &'static str,
        /// The tag seen.
        tag: u8,
    },
    /// A length or count over its bound.
    #[error("{what} of {len} exceeds the maximum {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length or count.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// Bytes left after a complete value.
    #[error("{len} trailing bytes after a complete value")]
    TrailingBytes {
        /// How many.
        len: u64,
    },
    /// A field holds a value that is not allowed.
    #[error("invalid {what}")]
    Invalid {
        /// Which field.
        what: &'static str,
    },
}

/// Why a committed entry produced no state-machine result. Deterministic:
/// every replica computes the same error for the same entry and ends in the
/// same state; the state machine never sees the command. `BadEnvelope`,
/// `SessionNotFound` and `SessionAlreadyRegistered` change nothing;
/// `ResponseDiscarded` and `SessionBusy` still record the client's
/// acknowledgement (`responded_to`) and the session's recency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The entry is not a valid command envelope.
    #[error("malformed command envelope: {0}")]
    BadEnvelope(DecodeError),
    /// The client's session is not registered (never was, was unregistered,
    /// or was evicted as least recently used).
    #[error("session {client_id} is not registered")]
    SessionNotFound {
        /// The client id.
        client_id: u64,
    },
    /// A register for a client id that already has a session. A client
    /// retrying its register proposal may treat this as success.
    #[error("session {client_id} is already registered")]
    SessionAlreadyRegistered {
        /// The client id.
        client_id: u64,
    },
    /// The command's series id is at or below what the client said it has
    /// already seen the response of: it was applied once and its result has
    /// been discarded, so it is not applied again.
    #[error("session {client_id}: response to series {series_id} was already discarded")]
    ResponseDiscarded {
        /// The client id.
        client_id: u64,
        /// The series id of the command.
        series_id: u64,
    },
    /// The session holds its maximum number of unacknowledged responses; the
    /// client must advance `responded_to` first. Not applied.
    #[error("session {client_id} has {responses_max} unacknowledged responses")]
    SessionBusy {
        /// The client id.
        client_id: u64,
        /// The bound that was hit.
        responses_max: u32,
    },
}

/// Why a read-only query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The query bytes could not be decoded by the state machine.
    #[error("malformed query: {0}")]
    Malformed(DecodeError),
    /// The state machine does not answer this kind of query.
    #[error("query not supported by this state machine")]
    Unsupported,
}

/// Why a snapshot could not be written or recovered. A failed recovery
/// leaves the current state untouched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The sink or source failed.
    #[error("snapshot i/o: {0}")]
    Io(#[source] io::Error),
    /// The stream ended before the snapshot was complete.
    #[error("snapshot truncated")]
    Truncated,
    /// The stream does not start with the snapshot magic.
    #[error("not a flotilla snapshot: magic {found:02x?}")]
    BadMagic {
        /// The first 8 bytes seen.
        found: [u8; 8],
    },
    /// A format version this build does not read.
    #[error("unsupported snapshot version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// A checksum did not match.
    #[error("snapshot {section} checksum mismatch at offset {offset}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Which section: "header", "chunk", "stream", or a state
        /// machine's own data check (e.g. "kv data").
        section: &'static str,
        /// Byte offset of the section in the stream (0 for a state
        /// machine's own data check, which sees only its section).
        offset: u64,
        /// The stored CRC32.
        stored: u32,
        /// The CRC32 computed over the bytes read.
        computed: u32,
    },
    /// A length field is over its bound.
    #[error("snapshot {what} of {len} bytes exceeds the maximum {max}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The snapshot was written by a different kind of state machine.
    #[error("snapshot of state machine kind {found:?}, expected {expected:?}")]
    KindMismatch {
        /// The kind of the local state machine.
        expected: String,
        /// The kind recorded in the snapshot.
        found: String,
    },
    /// A section is malformed (the session table or state-machine data).
    #[error("snapshot {section} is corrupt: {error}")]
    Corrupt {
        /// Which section.
        section: &'static str,
        /// What was wrong.
        error: DecodeError,
    },
    /// The state machine did not consume all of its data section.
    #[error("{len} bytes of state-machine data left unread")]
    TrailingData {
        /// Bytes left.
        len: u64,
    },
    /// A field disagrees with what was read (e.g. the data length in the
    /// trailer).
    #[error("snapshot {what} mismatch: stored {stored}, read {read}")]
    Mismatch {
        /// Which field.
        what: &'static str,
        /// The stored value.
        stored: u64,
        /// The value observed.
        read: u64,
    },
    /// The snapshot is older than the state it would replace.
    #[error("snapshot at index {snapshot_index} is older than applied index {applied_index}")]
    Stale {
        /// The snapshot's applied index.
        snapshot_index: u64,
        /// The current applied index.
        applied_index: u64,
    },
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated
        } else {
            SnapshotError::Io(e)
        }
    }
}
