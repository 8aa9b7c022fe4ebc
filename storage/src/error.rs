//! Typed errors of the storage crate edge: one enum for the WAL, one for
//! snapshot files. Variants carry data, never prose to be parsed.

use std::path::PathBuf;

/// What exactly was wrong with bytes read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// The manifest file is short, has a bad magic or a bad CRC.
    BadManifest,
    /// A segment header (block 0) is short, has a bad magic or a bad CRC.
    BadSegmentHeader,
    /// The format version in a header is not one this build reads.
    WrongVersion {
        /// Version found on disk.
        found: u32,
    },
    /// The sequence number in a segment header does not match its file name.
    SegmentSeqMismatch {
        /// Sequence number from the file name.
        expected: u64,
        /// Sequence number from the header.
        found: u64,
    },
    /// A segment is missing from the middle of the sequence.
    MissingSegment {
        /// The sequence number that should exist.
        seq: u64,
    },
    /// A frame (one flushed batch) has a bad header or a bad record, and a valid
    /// frame follows it: damage before the tail.
    BadFrame,
    /// Frames are missing at the end of a segment: the next segment starts at a
    /// batch sequence number that does not follow the last one found here.
    MissingFrames {
        /// Batch sequence number expected next.
        expected: u64,
        /// Batch sequence number found at the start of the next segment.
        found: u64,
    },
    /// A record is well formed and its CRC checks, but replaying it is
    /// impossible (e.g. an append that leaves a gap).
    InvalidReplay,
    /// An entry payload read back from disk fails its CRC.
    BadPayloadCrc,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::BadManifest => write!(f, "bad manifest"),
            Corruption::BadSegmentHeader => write!(f, "bad segment header"),
            Corruption::WrongVersion { found } => write!(f, "unsupported format version {found}"),
            Corruption::SegmentSeqMismatch { expected, found } => {
                write!(f, "segment header says seq {found}, file name says {expected}")
            }
            Corruption::MissingSegment { seq } => write!(f, "segment {seq} is missing"),
            Corruption::BadFrame => write!(f, "bad frame followed by valid frames"),
            Corruption::MissingFrames { expected, found } => write!(
                f,
                "frames missing at segment end: next segment starts at batch {found}, expected {expected}"
            ),
            Corruption::InvalidReplay => write!(f, "record cannot be replayed"),
            Corruption::BadPayloadCrc => write!(f, "entry payload CRC mismatch"),
        }
    }
}

/// Why an operation in a [`crate::Batch`] was refused. The WAL is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidOp {
    /// Entries of one append are not consecutive indices.
    NonConsecutive,
    /// An append with no entries.
    EmptyAppend,
    /// An append would leave a gap after the last index.
    Gap {
        /// The group's last index.
        last: u64,
        /// First index of the append.
        first: u64,
    },
    /// An append or compaction at or below the snapshot marker.
    BelowSnapshot {
        /// The group's snapshot index.
        snapshot: u64,
        /// The offending index.
        index: u64,
    },
    /// Index 0 is not a log position.
    ZeroIndex,
    /// `compact` to an index whose term is unknown (beyond the last index).
    UnknownTerm {
        /// The requested index.
        index: u64,
    },
    /// Group metadata larger than [`crate::META_BYTES_MAX`].
    MetaTooLarge {
        /// Size of the refused metadata.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The operating system refused an I/O operation.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bytes on disk are damaged somewhere other than the tail.
    #[error("{path} offset {offset}: {kind}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage within the file.
        offset: u64,
        /// What was wrong.
        kind: Corruption,
    },
    /// A file the WAL did not write is in its directory.
    #[error("foreign file {path} in the WAL directory")]
    ForeignFile {
        /// The unexpected file.
        path: PathBuf,
    },
    /// A batch operation was refused; nothing of the batch was applied.
    #[error("group {group}: invalid operation: {reason:?}")]
    InvalidOp {
        /// The group the operation targets.
        group: u64,
        /// Why.
        reason: InvalidOp,
    },
    /// A batch is larger than one frame may be.
    #[error("batch of {bytes} bytes exceeds the frame limit of {limit} bytes")]
    BatchTooLarge {
        /// Encoded size of the batch.
        bytes: u64,
        /// Largest frame allowed.
        limit: u64,
    },
    /// The group has no state in this WAL.
    #[error("group {group} not found")]
    GroupNotFound {
        /// The group asked for.
        group: u64,
    },
    /// The entries asked for are below the group's first index.
    #[error("group {group}: index {index} is compacted (first index {first})")]
    Compacted {
        /// The group.
        group: u64,
        /// The first index asked for.
        index: u64,
        /// The group's first available index.
        first: u64,
    },
    /// The entries asked for are beyond the group's last index.
    #[error("group {group}: index {index} is beyond the last index {last}")]
    Unavailable {
        /// The group.
        group: u64,
        /// The index asked for.
        index: u64,
        /// The group's last index.
        last: u64,
    },
    /// An earlier write failed; the WAL accepts no more writes (fail-stop:
    /// after a failed fdatasync the page state is unknown).
    #[error("the WAL failed earlier and refuses further writes: {reason}")]
    Poisoned {
        /// The first failure.
        reason: String,
    },
    /// An option value is out of range.
    #[error("invalid option: {0}")]
    InvalidOptions(&'static str),
}

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<std::io::Error>) -> Self {
        WalError::Io {
            path: path.into(),
            source: source.into(),
        }
    }
}

/// Errors of snapshot files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The operating system refused an I/O operation.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The header is short or has a bad magic or CRC.
    #[error("{path}: bad snapshot header")]
    BadHeader {
        /// The snapshot file.
        path: PathBuf,
    },
    /// The header names a format version this build does not read.
    #[error("{path}: unsupported snapshot version {found}")]
    WrongVersion {
        /// The snapshot file.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
    /// The data does not match the CRC in the header.
    #[error(
        "{path}: snapshot data CRC mismatch (expected {expected:#010x}, computed {computed:#010x})"
    )]
    BadCrc {
        /// The snapshot file.
        path: PathBuf,
        /// CRC from the header.
        expected: u32,
        /// CRC of the data read.
        computed: u32,
    },
    /// The file is shorter than its header says.
    #[error("{path}: snapshot truncated: header says {expected} bytes, file holds {found}")]
    Truncated {
        /// The snapshot file.
        path: PathBuf,
        /// Length from the header.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
}

impl SnapshotError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<std::io::Error>) -> Self {
        SnapshotError::Io {
            path: path.into(),
            source: source.into(),
        }
    }
}
