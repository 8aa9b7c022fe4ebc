//! `--target`: drives an already-running cluster through its Redis-protocol
//! endpoints with a minimal pipelined RESP2 client (`SET key value` /
//! `GET key`), several connections per endpoint, one plain thread each
//! (`bench-resp-N`): the load generator must not share a core's executor
//! with anything, and blocking sockets on a dedicated thread are the
//! simplest correct client.
//!
//! Each connection keeps up to `--concurrency` commands in flight: closed
//! loop, it refills the pipeline as replies arrive (all refills of one read
//! go out in one write); open loop, it sends commands when they are due
//! (rate / connections each) and charges latency from the due time.
//! Replies are matched to commands in order (RESP guarantees it).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::stats::{OpKind, Recorder, Report, Summary};
use super::{BenchOptions, Rng, Timeline};

/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Deadline to connect to an endpoint.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// Largest reply the client accepts (a GET of a huge value is a bug here).
const REPLY_BYTES_MAX: usize = 512 << 20;

/// What one connection thread needs.
#[derive(Clone)]
struct ConnSetup {
    index: usize,
    endpoint: SocketAddr,
    depth: usize,
    rate: Option<f64>,
    /// Where in its period this connection's schedule starts (0..1): the
    /// connections take turns instead of all sending at the same instants
    /// (which made bursts of one command per connection: with 24
    /// connections at 5,000 SET/s, p50 7 ms where evenly spread clients see
    /// 1.2 ms).
    phase: f64,
    reads: f64,
    keys: u64,
    value: Vec<u8>,
    timeout: Duration,
    timeline: Timeline,
    reports: flume::Sender<Report>,
}

/// Runs the `--target` benchmark.
pub(super) fn run(args: &BenchOptions, out: &mut dyn Write) -> Result<Summary, String> {
    let endpoints = args.target.clone().map(|t| t.0).unwrap_or_default();
    for ep in &endpoints {
        ping(*ep)?;
    }
    let conns = endpoints.len() * args.connections;
    let _ = writeln!(
        out,
        "driving {} endpoints over {conns} RESP connections (pipeline depth {})",
        endpoints.len(),
        args.concurrency
    );
    let (tx, rx) = flume::bounded(4096);
    let timeline = Timeline::new(args, Instant::now() + Duration::from_millis(50));
    let value: Vec<u8> = (0..args.payload).map(|i| b'a' + (i % 26) as u8).collect();
    let mut threads = Vec::with_capacity(conns);
    for index in 0..conns {
        let setup = ConnSetup {
            index,
            endpoint: endpoints[index % endpoints.len()],
            depth: args.concurrency,
            rate: args.rate.map(|r| r as f64 / conns as f64),
            phase: index as f64 / conns as f64,
            reads: args.reads,
            keys: args.keys,
            value: value.clone(),
            timeout: args.timeout,
            timeline,
            reports: tx.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("bench-resp-{index}"))
            .spawn(move || {
                let reports = setup.reports.clone();
                let report = match connection(&setup) {
                    Ok(measured) => Report::Done {
                        measured: Box::new(measured),
                    },
                    Err(e) => Report::Failed(format!("connection to {}: {e}", setup.endpoint)),
                };
                let _ = reports.send(report);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => return Err(format!("cannot start a connection thread: {e}")),
        }
    }
    drop(tx);
    let collected = super::collect(
        timeline,
        conns,
        &rx,
        out,
        &mut || None,
        args.timeout + Duration::from_secs(10),
    );
    for t in threads {
        if t.join().is_err() {
            return Err("a connection thread panicked".into());
        }
    }
    super::finish(args, "target", timeline, collected?, Vec::new(), out)
}

/// Checks that `ep` answers `PING`.
fn ping(ep: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&ep, CONNECT_DEADLINE)
        .map_err(|e| format!("target {ep}: cannot connect: {e}"))?;
    s.set_read_timeout(Some(CONNECT_DEADLINE))
        .map_err(|e| format!("target {ep}: {e}"))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| format!("target {ep}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("target {ep}: no answer to PING: {e}"))?;
        if n == 0 {
            return Err(format!("target {ep}: closed the connection on PING"));
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_reply(&buf) {
            Ok(Some((Reply::Ok, _))) => return Ok(()),
            Ok(Some((Reply::Error(e), _))) => {
                return Err(format!("target {ep}: PING answered with an error: {e}"))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("target {ep}: not a Redis-protocol endpoint: {e}")),
        }
    }
}

/// Appends `*n $len arg ...` for `args` to `out`.
fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Shortest and longest wait of an open-loop connection for its next due
/// command (the longest also bounds how late a progress report is).
const WAIT_MIN: Duration = Duration::from_micros(20);
const WAIT_MAX: Duration = Duration::from_millis(50);

fn connection(s: &ConnSetup) -> Result<super::stats::Tally, String> {
    let mut stream = TcpStream::connect_timeout(&s.endpoint, CONNECT_DEADLINE)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    stream.set_nodelay(true).map_err(io)?;
    // Closed loop wakes without replies only to report; open loop sets its
    // timeout to the next due command before each read.
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(io)?;
    let t = s.timeline;
    let mut rec = Recorder::new(t.measure_start, t.measure_end);
    let mut rng = Rng::new(s.index as u64 + 1);
    let mut in_flight: VecDeque<(Instant, Instant, OpKind)> = VecDeque::with_capacity(s.depth);
    let mut outbuf: Vec<u8> = Vec::with_capacity(s.depth * (s.value.len() + 64));
    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut second = 1u64;
    let mut issued: u64 = 0;
    let scheduled = |n: u64| super::due_at(t.start, s.rate.unwrap_or(1.0), s.phase, n);
    while Instant::now() < t.start {
        std::thread::park_timeout(t.start - Instant::now());
    }
    loop {
        let now = Instant::now();
        if now >= t.start + Duration::from_secs(second) {
            let _ = s.reports.try_send(Report::Interval {
                second,
                tally: Box::new(rec.take_interval()),
                in_flight: in_flight.len() as u64,
            });
            second += 1;
        }
        let stopping = now >= t.measure_end;
        if !stopping {
            let room = s.depth.saturating_sub(in_flight.len());
            let count = match s.rate {
                None => room,
                Some(_) => {
                    let mut k = 0;
                    while k < room && scheduled(issued + k as u64) <= now {
                        k += 1;
                    }
                    k
                }
            };
            for _ in 0..count {
                let intended = match s.rate {
                    None => now,
                    Some(_) => scheduled(issued),
                };
                issued += 1;
                let key = format!("key:{:012}", rng.below(s.keys));
                let kind = if s.reads > 0.0 && rng.unit() < s.reads {
                    encode_command(&mut outbuf, &[b"GET", key.as_bytes()]);
                    OpKind::Read
                } else {
                    encode_command(&mut outbuf, &[b"SET", key.as_bytes(), &s.value]);
                    OpKind::Write
                };
                in_flight.push_back((intended, now, kind));
            }
        }
        if !outbuf.is_empty() {
            stream
                .write_all(&outbuf)
                .map_err(|e| format!("write failed: {e}"))?;
            outbuf.clear();
        }
        // Open loop: sleep until the next command is due (or, below, until
        // a reply comes), not in fixed slices: dozens of client threads
        // polling every 100-200 µs took the cores the server needed (with 8
        // connections per endpoint, p50 6.7 ms at 5,000 SET/s).
        let until_due = s.rate.map(|_| {
            scheduled(issued)
                .saturating_duration_since(Instant::now())
                .clamp(WAIT_MIN, WAIT_MAX)
        });
        if in_flight.is_empty() {
            if stopping {
                break;
            }
            std::thread::park_timeout(until_due.unwrap_or(Duration::from_micros(100)));
            continue;
        }
        if let Some(wait) = until_due {
            stream.set_read_timeout(Some(wait)).map_err(io)?;
        }
        if stopping && now >= t.measure_end + s.timeout {
            // Replies that never came count as errors.
            for _ in 0..in_flight.len() {
                rec.error(now, "no reply");
            }
            break;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("read failed: {e}")),
        };
        inbuf.extend_from_slice(&chunk[..n]);
        let now = Instant::now();
        let mut pos = 0;
        while let Some((reply, used)) =
            parse_reply(&inbuf[pos..]).map_err(|e| format!("malformed reply: {e}"))?
        {
            pos += used;
            let (intended, issued, kind) = in_flight
                .pop_front()
                .ok_or("a reply to no request (the server sent more replies than commands)")?;
            match reply {
                Reply::Ok => rec.success(kind, intended, issued, now),
                Reply::Error(e) => {
                    // The error code: `-ERR ...`, `-MOVED`, `-TRYAGAIN`...
                    let code: String = e.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                    rec.error(now, &code.chars().take(40).collect::<String>());
                }
            }
        }
        inbuf.drain(..pos);
        if inbuf.len() > REPLY_BYTES_MAX {
            return Err(format!("a reply is over {REPLY_BYTES_MAX} bytes"));
        }
    }
    Ok(rec.measured)
}

/// A reply, as far as the benchmark cares.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Anything but an error.
    Ok,
    /// `-ERR ...`.
    Error(String),
}

/// The position just past the `\r\n` ending the line that starts at
/// `from`, and the line.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(from..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], from + end + 2))
}

fn int_of(s: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("`{}` is not an integer", String::from_utf8_lossy(s)))
}

/// Parses one RESP2 reply at the start of `buf`: `Ok(None)` if it is not
/// complete yet, else the reply and the bytes it used.
///
/// # Errors
/// A description of malformed input.
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    skip_value(buf, 0, 0)
}

/// Nesting bound of arrays (a hostile server cannot blow the stack).
const NESTING_MAX: usize = 32;

fn skip_value(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > NESTING_MAX {
        return Err(format!("arrays nested deeper than {NESTING_MAX}"));
    }
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    let Some((body, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    match tag {
        b'+' | b':' => Ok(Some((Reply::Ok, next))),
        b'-' => Ok(Some((
            Reply::Error(String::from_utf8_lossy(body).into_owned()),
            next,
        ))),
        b'$' => {
            let len = int_of(body)?;
            if len < 0 {
                return Ok(Some((Reply::Ok, next)));
            }
            let len = usize::try_from(len).map_err(|_| "bulk length overflows".to_string())?;
            if len > REPLY_BYTES_MAX {
                return Err(format!("bulk of {len} bytes"));
            }
            let end = next + len + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            Ok(Some((Reply::Ok, end)))
        }
        b'*' => {
            let n = int_of(body)?;
            let mut pos = next;
            let mut error = None;
            for _ in 0..n.max(0) {
                match skip_value(buf, pos, depth + 1)? {
                    None => return Ok(None),
                    Some((r, end)) => {
                        if let Reply::Error(e) = r {
                            error.get_or_insert(e);
                        }
                        pos = end;
                    }
                }
            }
            Ok(Some((error.map_or(Reply::Ok, Reply::Error), pos)))
        }
        other => Err(format!("unknown reply type byte 0x{other:02x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        assert_eq!(parse_reply(b"+OK\r\n"), Ok(Some((Reply::Ok, 5))));
        assert_eq!(parse_reply(b"+OK\r"), Ok(None));
        assert_eq!(parse_reply(b""), Ok(None));
        assert_eq!(parse_reply(b":42\r\n+OK\r\n"), Ok(Some((Reply::Ok, 5))));
        assert_eq!(
            parse_reply(b"-ERR no leader\r\n"),
            Ok(Some((Reply::Error("ERR no leader".into()), 16)))
        );
        assert_eq!(parse_reply(b"$-1\r\n"), Ok(Some((Reply::Ok, 5))));
        assert_eq!(parse_reply(b"$3\r\nabc\r\n"), Ok(Some((Reply::Ok, 9))));
        assert_eq!(parse_reply(b"$3\r\nab"), Ok(None));
        assert_eq!(parse_reply(b"$3\r\nabc\r"), Ok(None));
        assert!(parse_reply(b"$3\r\nabcde").is_err());
        assert_eq!(
            parse_reply(b"*2\r\n$1\r\na\r\n$-1\r\n"),
            Ok(Some((Reply::Ok, 16)))
        );
        assert_eq!(parse_reply(b"*2\r\n$1\r\na\r\n"), Ok(None));
        assert_eq!(parse_reply(b"*-1\r\n"), Ok(Some((Reply::Ok, 5))));
        assert!(parse_reply(b"?what\r\n").is_err());
        assert!(parse_reply(b"$x\r\n").is_err());
        let deep = "*1\r\n".repeat(100);
        assert!(parse_reply(deep.as_bytes()).is_err());
    }

    #[test]
    fn commands_encode_as_resp_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"v1"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n");
    }

    /// A fake RESP server: answers PING, SET and GET of any pipelined
    /// commands; counts SETs.
    fn fake_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sets = std::sync::Arc::new(AtomicU64::new(0));
        let counter = sets.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        let n = match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let mut out = Vec::new();
                        let mut pos = 0;
                        // Requests are arrays of bulk strings: the reply
                        // parser finds where each ends; the verb is the
                        // first bulk.
                        while let Ok(Some((_, used))) = parse_reply(&buf[pos..]) {
                            let cmd = &buf[pos..pos + used];
                            if cmd.windows(3).any(|w| w == b"SET") {
                                counter.fetch_add(1, Ordering::Relaxed);
                                out.extend_from_slice(b"+OK\r\n");
                            } else if cmd.windows(3).any(|w| w == b"GET") {
                                out.extend_from_slice(b"$-1\r\n");
                            } else {
                                out.extend_from_slice(b"+PONG\r\n");
                            }
                            pos += used;
                        }
                        buf.drain(..pos);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, sets)
    }

    fn target_args(addr: SocketAddr, rate: Option<u64>) -> BenchOptions {
        BenchOptions {
            nodes: 3,
            shards: None,
            groups: 48,
            payload: 32,
            concurrency: 16,
            rate,
            duration: Duration::from_millis(600),
            warmup: Duration::from_millis(100),
            reads: 0.5,
            read_consistency: super::super::Consistency::Linearizable,
            keys: 1000,
            placement: super::super::PlacementArg::Unbound,
            clients: None,
            io_memory: 1 << 20,
            preempt_timer: Duration::from_millis(2),
            data_dir: None,
            timeout: Duration::from_secs(2),
            json: true,
            target: Some(super::super::Targets(vec![addr])),
            connections: 2,
            idle: false,
            idle_writes: 0,
            start_concurrency: 16,
            quiesce_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn target_mode_drives_a_resp_server_closed_and_open_loop() {
        let (addr, sets) = fake_server();
        let mut out = Vec::new();
        let s = super::super::execute(&target_args(addr, None), &mut out)
            .unwrap()
            .load();
        let text = String::from_utf8(out).unwrap();
        assert!(s.writes > 0 && s.reads > 0, "{text}");
        assert_eq!(s.errors, 0, "{text}");
        assert!(sets.load(std::sync::atomic::Ordering::Relaxed) >= s.writes);
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(v["config"]["mode"], "target");
        assert!(v["fsyncs_per_sec"].is_null());

        // Open loop at 2,000 ops/s for 0.6 s: about 1,200 ops.
        let mut out = Vec::new();
        let s = super::super::execute(&target_args(addr, Some(2000)), &mut out)
            .unwrap()
            .load();
        let text = String::from_utf8(out).unwrap();
        let ops = s.writes + s.reads;
        assert!((900..=1500).contains(&ops), "{ops} ops\n{text}");
    }

    #[test]
    fn unreachable_target_fails_with_a_clear_message() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut out = Vec::new();
        let err = super::super::execute(&target_args(addr, None), &mut out).unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }

    /// Open-loop connections take turns: their schedules are spread evenly
    /// over each period instead of all falling on the same instants.
    #[test]
    fn open_loop_connections_take_turns() {
        let start = Instant::now();
        let conns = 4;
        let rate = 100.0; // per connection: one every 10 ms
        let mut firsts: Vec<Instant> = (0..conns)
            .flat_map(|k| {
                (0..3).map(move |n| super::super::due_at(start, rate, k as f64 / conns as f64, n))
            })
            .collect();
        firsts.sort();
        for w in firsts.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap.abs_diff(Duration::from_micros(2500)) < Duration::from_micros(5),
                "{gap:?}"
            );
        }
    }
}
