//! Replies and their encoding in RESP2 and RESP3 (after `HELLO 3`).
//!
//! ```text
//! simple  +<text>\r\n          error  -<PREFIX> <text>\r\n     integer  :<n>\r\n
//! bulk    $<len>\r\n<bytes>\r\n  nil    $-1\r\n  (RESP3: _\r\n)
//! array   *<n>\r\n<reply>...    nil array  *-1\r\n  (RESP3: _\r\n)
//! RESP3 only (RESP2 writes them as above):
//! map     %<n>\r\n<key><value>...    (RESP2: an array of 2n)
//! set     ~<n>\r\n<reply>...         (RESP2: an array)
//! double  ,<text>\r\n                (RESP2: a bulk string)
//! push    ><n>\r\n<reply>...         (RESP2: an array; pub/sub messages)
//! pairs   *<n>\r\n(*2\r\n<a><b>)...    (RESP2: a flat array of 2n)
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
    /// A map (HGETALL, CONFIG GET, HELLO).
    Map(Vec<(Reply, Reply)>),
    /// A set (SMEMBERS).
    Set(Vec<Reply>),
    /// A double, as its decimal text (`inf`, `-inf` included).
    Double(Bytes),
    /// Pairs (ZRANGE ... WITHSCORES): nested in RESP3, flat in RESP2.
    Pairs(Vec<(Reply, Reply)>),
    /// Out-of-band data (pub/sub messages).
    Push(Vec<Reply>),
    /// A reply encoded already, sent as it is (a script's reply, encoded
    /// where the script ran, for the connection's protocol).
    Raw(Bytes),
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

    /// Appends the encoding to `out`, in RESP3 if `resp3`.
    pub fn encode_as(&self, out: &mut BytesMut, resp3: bool) {
        match self {
            Reply::Ok => out.put_slice(b"+OK\r\n"),
            Reply::Raw(bytes) => out.put_slice(bytes),
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
            Reply::Nil | Reply::NilArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => put_aggregate(out, b'*', items, resp3),
            Reply::Set(items) => put_aggregate(out, if resp3 { b'~' } else { b'*' }, items, resp3),
            Reply::Push(items) => put_aggregate(out, if resp3 { b'>' } else { b'*' }, items, resp3),
            Reply::Many(replies) => {
                for r in replies {
                    r.encode_as(out, resp3);
                }
            }
            Reply::Map(pairs) | Reply::Pairs(pairs) if !resp3 => {
                put_header(out, b'*', pairs.len() * 2);
                for (a, b) in pairs {
                    a.encode_as(out, resp3);
                    b.encode_as(out, resp3);
                }
            }
            Reply::Map(pairs) => {
                put_header(out, b'%', pairs.len());
                for (a, b) in pairs {
                    a.encode_as(out, resp3);
                    b.encode_as(out, resp3);
                }
            }
            Reply::Pairs(pairs) => {
                put_header(out, b'*', pairs.len());
                for (a, b) in pairs {
                    out.put_slice(b"*2\r\n");
                    a.encode_as(out, resp3);
                    b.encode_as(out, resp3);
                }
            }
            Reply::Double(text) if resp3 => {
                out.put_u8(b',');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Double(text) => Reply::Bulk(text.clone()).encode_as(out, resp3),
        }
    }
}

/// Appends a push of bulk strings (a pub/sub message: `>` in RESP3, an
/// array in RESP2) without building a [`Reply`]: one per message and
/// subscriber, so nothing is allocated.
pub fn encode_push(out: &mut BytesMut, resp3: bool, parts: &[&[u8]]) {
    put_header(out, if resp3 { b'>' } else { b'*' }, parts.len());
    for p in parts {
        out.reserve(p.len() + 16);
        put_header(out, b'$', p.len());
        out.put_slice(p);
        out.put_slice(b"\r\n");
    }
}

fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    out.put_u8(kind);
    put_decimal(out, n as i64);
    out.put_slice(b"\r\n");
}

fn put_aggregate(out: &mut BytesMut, kind: u8, items: &[Reply], resp3: bool) {
    put_header(out, kind, items.len());
    for item in items {
        item.encode_as(out, resp3);
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
        r.encode_as(&mut out, false);
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

    fn enc3(r: &Reply) -> String {
        let mut out = BytesMut::new();
        r.encode_as(&mut out, true);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn resp3_types_and_their_resp2_forms() {
        let pair = || (Reply::text("a"), Reply::Double(Bytes::from_static(b"1.5")));
        let cases: Vec<(Reply, &str, &str)> = vec![
            (Reply::Nil, "$-1\r\n", "_\r\n"),
            (Reply::NilArray, "*-1\r\n", "_\r\n"),
            (
                Reply::Map(vec![pair()]),
                "*2\r\n$1\r\na\r\n$3\r\n1.5\r\n",
                "%1\r\n$1\r\na\r\n,1.5\r\n",
            ),
            (
                Reply::Pairs(vec![pair(), pair()]),
                "*4\r\n$1\r\na\r\n$3\r\n1.5\r\n$1\r\na\r\n$3\r\n1.5\r\n",
                "*2\r\n*2\r\n$1\r\na\r\n,1.5\r\n*2\r\n$1\r\na\r\n,1.5\r\n",
            ),
            (
                Reply::Set(vec![Reply::Int(1)]),
                "*1\r\n:1\r\n",
                "~1\r\n:1\r\n",
            ),
            (
                Reply::Push(vec![Reply::text("message"), Reply::Nil]),
                "*2\r\n$7\r\nmessage\r\n$-1\r\n",
                ">2\r\n$7\r\nmessage\r\n_\r\n",
            ),
            (
                Reply::Double(Bytes::from_static(b"-inf")),
                "$4\r\n-inf\r\n",
                ",-inf\r\n",
            ),
            (
                Reply::Array(vec![Reply::Map(vec![])]),
                "*1\r\n*0\r\n",
                "*1\r\n%0\r\n",
            ),
        ];
        // The allocation-free push of pub/sub messages is a `Push`.
        for resp3 in [false, true] {
            let mut direct = BytesMut::new();
            encode_push(&mut direct, resp3, &[b"message", b"ch", b""]);
            let mut built = BytesMut::new();
            Reply::Push(vec![
                Reply::text("message"),
                Reply::text("ch"),
                Reply::text(""),
            ])
            .encode_as(&mut built, resp3);
            assert_eq!(direct, built);
        }
        for (r, two, three) in cases {
            assert_eq!(enc(&r), two, "{r:?} in RESP2");
            assert_eq!(enc3(&r), three, "{r:?} in RESP3");
        }
    }
}
