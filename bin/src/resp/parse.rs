//! Incremental RESP2 request parser.
//!
//! ```text
//! multibulk  *<argc>\r\n ( $<len>\r\n <len bytes> \r\n ){argc}
//! inline     <arg> <arg> ...\r\n           (telnet style, whitespace separated)
//! ```
//!
//! The parser never copies an argument: a complete command is split off the
//! connection buffer as one `Bytes` and every argument is a slice of it.
//! Bounds: `argc <= args_max`, each argument `<= arg_bytes_max`, a header or
//! inline line `<= LINE_BYTES_MAX`.
//!
//! Errors, and what is left of the connection afterwards:
//! - an argument over `arg_bytes_max` is *skipped* (its bytes are read and
//!   dropped as they arrive, without buffering them, and so are the rest of
//!   its command's arguments): one error reply for that command, and the
//!   connection carries on with the next command;
//! - a broken frame (bad length, missing CRLF, non-numeric header, an
//!   overlong line) cannot be resynchronized: one `Protocol error` reply,
//!   and the server closes the connection (`mod.rs`): what follows may be
//!   the middle of a value and must never run as commands.

use bytes::{Buf, Bytes, BytesMut};

/// Longest header or inline-command line.
pub const LINE_BYTES_MAX: usize = 64 << 10;

/// What [`Parser::next`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete command (never empty).
    Command(Vec<Bytes>),
    /// A command that was refused whole (oversized argument); its bytes are
    /// consumed. The message is the error reply.
    Rejected(String),
    /// The stream is broken; the buffer was cleared. The message is the
    /// error reply.
    Broken(String),
    /// More bytes are needed.
    Incomplete,
}

/// Skipping an oversized command: bytes still to drop, then arguments
/// still to drop.
#[derive(Debug)]
struct Skip {
    bytes: usize,
    args: usize,
    reason: String,
}

/// An incremental parser; one per connection.
#[derive(Debug)]
pub struct Parser {
    arg_bytes_max: usize,
    args_max: usize,
    skip: Option<Skip>,
    /// Offsets of the arguments inside the command being parsed; kept
    /// between commands so that parsing one allocates only its `argv`.
    spans: Vec<(usize, usize)>,
}

/// Most argument offsets [`Parser`] keeps allocated between commands.
const SPANS_KEPT_MAX: usize = 1024;

enum Step<T> {
    Done(T),
    Incomplete,
    Broken(String),
}

impl Parser {
    /// A parser accepting arguments up to `arg_bytes_max` bytes and
    /// commands of up to `args_max` arguments.
    pub fn new(arg_bytes_max: usize, args_max: usize) -> Parser {
        Parser {
            arg_bytes_max,
            args_max,
            skip: None,
            spans: Vec::new(),
        }
    }

    /// True while an oversized command is being dropped.
    pub fn is_skipping(&self) -> bool {
        self.skip.is_some()
    }

    /// Takes the next command (or error) off the front of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Parsed {
        loop {
            if let Some(skip) = &mut self.skip {
                if skip.bytes > 0 {
                    let n = skip.bytes.min(buf.len());
                    buf.advance(n);
                    skip.bytes -= n;
                    if skip.bytes > 0 {
                        return Parsed::Incomplete;
                    }
                }
                if skip.args > 0 {
                    match bulk_header(buf, 0) {
                        Step::Incomplete => return Parsed::Incomplete,
                        Step::Broken(m) => {
                            self.skip = None;
                            buf.clear();
                            return Parsed::Broken(m);
                        }
                        Step::Done((len, header)) => {
                            buf.advance(header);
                            skip.bytes = len + 2;
                            skip.args -= 1;
                            continue;
                        }
                    }
                }
                let reason = std::mem::take(&mut skip.reason);
                self.skip = None;
                return Parsed::Rejected(reason);
            }
            if buf.is_empty() {
                return Parsed::Incomplete;
            }
            let parsed = if buf[0] == b'*' {
                self.multibulk(buf)
            } else {
                inline(buf)
            };
            match parsed {
                Step::Done(Some(cmd)) => return Parsed::Command(cmd),
                // An empty command (`*0`, `*-1`, a blank line): nothing to
                // answer, look further.
                Step::Done(None) => continue,
                Step::Incomplete => return Parsed::Incomplete,
                Step::Broken(m) => {
                    buf.clear();
                    return Parsed::Broken(m);
                }
            }
        }
    }

    fn multibulk(&mut self, buf: &mut BytesMut) -> Step<Option<Vec<Bytes>>> {
        let (argc, mut pos) = match line(buf, 1) {
            Step::Done((text, next)) => match parse_int(text) {
                Some(n) => (n, next),
                None => return Step::Broken("Protocol error: invalid multibulk length".into()),
            },
            Step::Incomplete => return Step::Incomplete,
            Step::Broken(m) => return Step::Broken(m),
        };
        if argc <= 0 {
            buf.advance(pos);
            return Step::Done(None);
        }
        let argc = argc as usize;
        if argc > self.args_max {
            return Step::Broken(format!(
                "Protocol error: {argc} arguments, at most {} allowed",
                self.args_max
            ));
        }
        // Offsets of the arguments inside the command's bytes.
        let spans = &mut self.spans;
        spans.clear();
        if spans.capacity() > SPANS_KEPT_MAX {
            *spans = Vec::new();
        }
        spans.reserve(argc.min(SPANS_KEPT_MAX));
        for i in 0..argc {
            let (len, header) = match bulk_header(buf, pos) {
                Step::Done(x) => x,
                Step::Incomplete => return Step::Incomplete,
                Step::Broken(m) => return Step::Broken(m),
            };
            if len > self.arg_bytes_max {
                // Drop the command without buffering it.
                let start = pos + header;
                let have = buf.len().saturating_sub(start);
                let need = len + 2;
                let reason = format!(
                    "ERR argument of {len} bytes exceeds the limit of {} bytes (max_value_bytes)",
                    self.arg_bytes_max
                );
                buf.advance(start + have.min(need));
                self.skip = Some(Skip {
                    bytes: need - have.min(need),
                    args: argc - i - 1,
                    reason,
                });
                return Step::Done(None);
            }
            let start = pos + header;
            let end = start + len;
            if buf.len() < end + 2 {
                return Step::Incomplete;
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Step::Broken("Protocol error: expected CRLF after a bulk string".into());
            }
            spans.push((start, end));
            pos = end + 2;
        }
        let frame = buf.split_to(pos).freeze();
        let argv = spans.iter().map(|&(s, e)| frame.slice(s..e)).collect();
        if spans.capacity() > SPANS_KEPT_MAX {
            *spans = Vec::new();
        }
        Step::Done(Some(argv))
    }
}

/// Reads `$<len>\r\n` at `pos`: (len, header bytes).
fn bulk_header(buf: &BytesMut, pos: usize) -> Step<(usize, usize)> {
    if buf.len() <= pos {
        return Step::Incomplete;
    }
    if buf[pos] != b'$' {
        return Step::Broken(format!(
            "Protocol error: expected '$', got '{}'",
            (buf[pos] as char).escape_default()
        ));
    }
    match line(buf, pos + 1) {
        Step::Done((text, next)) => match parse_int(text) {
            Some(n) if n >= 0 => Step::Done((n as usize, next - pos)),
            _ => Step::Broken("Protocol error: invalid bulk length".into()),
        },
        Step::Incomplete => Step::Incomplete,
        Step::Broken(m) => Step::Broken(m),
    }
}

/// The line starting at `from` (without CRLF) and the offset after its CRLF.
fn line(buf: &BytesMut, from: usize) -> Step<(&[u8], usize)> {
    let window = &buf[from.min(buf.len())..];
    let limit = window.len().min(LINE_BYTES_MAX);
    match window[..limit].iter().position(|b| *b == b'\n') {
        Some(i) if i > 0 && window[i - 1] == b'\r' => Step::Done((&window[..i - 1], from + i + 1)),
        Some(_) => Step::Broken("Protocol error: line not terminated by CRLF".into()),
        None if window.len() >= LINE_BYTES_MAX => {
            Step::Broken("Protocol error: too big inline request or header".into())
        }
        None => Step::Incomplete,
    }
}

/// A decimal `i64` as RESP writes it.
fn parse_int(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A telnet-style command: whitespace-separated words up to `\n`.
fn inline(buf: &mut BytesMut) -> Step<Option<Vec<Bytes>>> {
    let limit = buf.len().min(LINE_BYTES_MAX);
    let Some(end) = buf[..limit].iter().position(|b| *b == b'\n') else {
        if buf.len() >= LINE_BYTES_MAX {
            return Step::Broken("Protocol error: too big inline request".into());
        }
        return Step::Incomplete;
    };
    let frame = buf.split_to(end + 1).freeze();
    let mut args = Vec::new();
    let mut i = 0;
    let text = &frame[..end];
    while i < text.len() {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < text.len() && !text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > start {
            args.push(frame.slice(start..i));
        }
    }
    Step::Done(if args.is_empty() { None } else { Some(args) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Parser {
        Parser::new(16, 8)
    }

    fn cmd(words: &[&str]) -> Parsed {
        Parsed::Command(
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn multibulk_inline_and_pipelines() {
        let mut p = parser();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n*1\r\n$4\r\nPI"[..]);
        assert_eq!(p.next(&mut buf), cmd(&["GET", "a"]));
        assert_eq!(p.next(&mut buf), cmd(&["PING"]));
        assert_eq!(p.next(&mut buf), Parsed::Incomplete);
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(p.next(&mut buf), cmd(&["PING"]));
        assert_eq!(p.next(&mut buf), Parsed::Incomplete);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_split_point_gives_the_same_commands() {
        let stream = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv\r\nv\r\n\r\n  ECHO   hi \r\n*0\r\n*1\r\n$0\r\n\r\n";
        let want = vec![
            cmd(&["SET", "k", "v\r\nv"]),
            cmd(&["ECHO", "hi"]),
            cmd(&[""]),
        ];
        for split in 0..stream.len() {
            let mut p = parser();
            let mut buf = BytesMut::from(&stream[..split]);
            let mut got = Vec::new();
            loop {
                match p.next(&mut buf) {
                    Parsed::Incomplete => break,
                    other => got.push(other),
                }
            }
            buf.extend_from_slice(&stream[split..]);
            loop {
                match p.next(&mut buf) {
                    Parsed::Incomplete => break,
                    other => got.push(other),
                }
            }
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn oversized_argument_is_skipped_and_the_next_command_parses() {
        let mut p = parser();
        let big = "x".repeat(40);
        let stream = format!("*3\r\n$3\r\nSET\r\n$40\r\n{big}\r\n$2\r\nab\r\nPING\r\n");
        // Feed in small pieces: the big argument is never buffered whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in stream.as_bytes().chunks(7) {
            buf.extend_from_slice(chunk);
            assert!(buf.len() <= 7 + 16 + 16, "buffered {}", buf.len());
            loop {
                match p.next(&mut buf) {
                    Parsed::Incomplete => break,
                    other => got.push(other),
                }
            }
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Parsed::Rejected(m) if m.contains("exceeds")));
        assert_eq!(got[1], cmd(&["PING"]));
    }

    #[test]
    fn broken_frames_clear_the_buffer_and_parsing_resumes() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n$x\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n:3\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*1\n",
            b"*99\r\n",
        ] {
            let mut p = parser();
            let mut buf = BytesMut::from(bad);
            assert!(matches!(p.next(&mut buf), Parsed::Broken(_)), "{bad:?}");
            assert!(buf.is_empty());
            buf.extend_from_slice(b"PING\r\n");
            assert_eq!(p.next(&mut buf), cmd(&["PING"]), "after {bad:?}");
        }
        let mut p = parser();
        let mut buf = BytesMut::from(&vec![b'a'; LINE_BYTES_MAX + 1][..]);
        assert!(matches!(p.next(&mut buf), Parsed::Broken(_)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut p = parser();
            let mut buf = BytesMut::new();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let b = b"*$\r\n0123-x "[(seed % 11) as usize];
                buf.extend_from_slice(&[b]);
                while !matches!(p.next(&mut buf), Parsed::Incomplete) {}
            }
        }
    }
}
