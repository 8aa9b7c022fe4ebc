//! RESP2 replies and their encoding.
//!
//! ```text
//! simple  +<text>\r\n          error  -<PREFIX> <text>\r\n     integer  :<n>\r\n
//! bulk    $<len>\r\n<bytes>\r\n  nil    $-1\r\n
//! array   *<n>\r\n<reply>...    nil array  *-1\r\n
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A simple string (no CR/LF inside).
    Simple(String),
    /// An error; the text starts with its code (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null bulk string.
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// The null array (`*-1`: LPOP with a count on a missing key).
    NilArray,
    /// Several replies to one command, one after another (SUBSCRIBE
    /// answers once per channel).
    Many(Vec<Reply>),
}

impl Reply {
    /// An `ERR` error.
    pub fn err(text: impl AsRef<str>) -> Reply {
        Reply::Error(format!("ERR {}", text.as_ref()))
    }

    /// A bulk string from text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// A value or nil.
    pub fn opt(v: Option<Bytes>) -> Reply {
        v.map_or(Reply::Nil, Reply::Bulk)
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Ok => out.put_slice(b"+OK\r\n"),
            Reply::Simple(s) => {
                out.put_u8(b'+');
                put_line(out, s);
            }
            Reply::Error(s) => {
                out.put_u8(b'-');
                put_line(out, s);
            }
            Reply::Int(n) => {
                out.put_u8(b':');
                put_decimal(out, *n);
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                out.reserve(b.len() + 16);
                out.put_u8(b'$');
                put_decimal(out, b.len() as i64);
                out.put_slice(b"\r\n");
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                out.put_u8(b'*');
                put_decimal(out, items.len() as i64);
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
            Reply::Many(replies) => {
                for r in replies {
                    r.encode(out);
                }
            }
        }
    }
}

/// A line without CR or LF (they would break the framing): replaced by
/// spaces.
fn put_line(out: &mut BytesMut, s: &str) {
    if s.bytes().any(|b| b == b'\r' || b == b'\n') {
        out.put_slice(s.replace(['\r', '\n'], " ").as_bytes());
    } else {
        out.put_slice(s.as_bytes());
    }
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, n: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        out.put_u8(b'-');
    }
    out.put_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply) -> String {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn encodings() {
        assert_eq!(enc(&Reply::Ok), "+OK\r\n");
        assert_eq!(enc(&Reply::Int(-42)), ":-42\r\n");
        assert_eq!(enc(&Reply::Int(i64::MIN)), ":-9223372036854775808\r\n");
        assert_eq!(enc(&Reply::Int(0)), ":0\r\n");
        assert_eq!(enc(&Reply::text("ab")), "$2\r\nab\r\n");
        assert_eq!(enc(&Reply::Nil), "$-1\r\n");
        assert_eq!(enc(&Reply::err("bad\r\nthing")), "-ERR bad  thing\r\n");
        assert_eq!(
            enc(&Reply::Array(vec![Reply::Int(1), Reply::Nil])),
            "*2\r\n:1\r\n$-1\r\n"
        );
        assert_eq!(
            enc(&Reply::Many(vec![Reply::Int(1), Reply::Ok])),
            ":1\r\n+OK\r\n"
        );
    }
}
