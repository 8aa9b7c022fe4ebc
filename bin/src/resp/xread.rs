//! `XREAD [COUNT n] [BLOCK ms] STREAMS key... id...`: the entries of each
//! stream after an id, waiting for new ones with `BLOCK`.
//!
//! Each stream is read with `XRANGE`'s query from just after its id (keys
//! may live in different groups: one read each). With `BLOCK` and nothing
//! to answer, the connection sleeps until one of its keys' groups applies
//! something on this node (`NodeHost::wait_applied`, as blocked pops do),
//! reads those streams on the local replica (no log entry), and once a
//! second reads them linearizably in case the local replica lags; a group
//! whose applies cannot be waited for here is read every 100 ms. `$`
//! stands for each stream's last entry when the command arrives.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla::{GroupId, HostError, ReadConsistency};
use flotilla_rsm::{KvQuery, KvResult, TypedQuery as Q};
use futures_lite::AsyncReadExt;

use super::blocking::{any_applied, Client};
use super::command::{outcome_reply, CommandInfo, Conn, Shared};
use super::reply::Reply;

/// The commands served here, as `COMMAND` lists them.
pub const COMMANDS: &[CommandInfo] = &[(
    "xread",
    -4,
    &["readonly", "blocking", "movablekeys"],
    0,
    0,
    0,
)];

/// A stream's entries: id, then fields and values.
type Records = Vec<(Bytes, Vec<Bytes>)>;

/// The last possible stream id.
const ID_MAX: (u64, u64) = (u64::MAX, u64::MAX);
/// Reads through the leader at least this often while blocked.
const CONFIRMED_EVERY: Duration = Duration::from_secs(1);
/// How often a group whose applies cannot be waited for is read.
const POLL_FALLBACK: Duration = Duration::from_millis(100);
/// Most bytes a blocked client may send before its command returns.
const PENDING_INPUT_MAX: usize = 64 << 20;

/// Where a stream's read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Entries after this id.
    Id((u64, u64)),
    /// `$`: entries after the stream's last one now.
    Last,
}

/// A parsed `XREAD`.
#[derive(Debug, Clone, PartialEq)]
pub struct XRead {
    keys: Vec<Bytes>,
    after: Vec<After>,
    count: Option<u64>,
    /// `BLOCK`: `Some(None)` waits for ever (`BLOCK 0`).
    block: Option<Option<Duration>>,
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

/// Parses `XREAD`'s arguments as Redis does (its errors included).
pub fn parse(args: &[Bytes]) -> Result<XRead, Reply> {
    let mut count = None;
    let mut block = None;
    let mut i = 0;
    let number = |b: &Bytes| -> Option<i64> { std::str::from_utf8(b).ok()?.parse().ok() };
    loop {
        let Some(word) = args.get(i) else {
            return Err(syntax());
        };
        match String::from_utf8_lossy(word).to_ascii_uppercase().as_str() {
            "COUNT" => {
                let n = args
                    .get(i + 1)
                    .and_then(number)
                    .ok_or_else(|| Reply::err("value is not an integer or out of range"))?;
                // Redis: a count of 0 or less means no limit.
                count = (n > 0).then_some(n as u64);
                i += 2;
            }
            "BLOCK" => {
                let ms = args
                    .get(i + 1)
                    .and_then(number)
                    .ok_or_else(|| Reply::err("timeout is not an integer or out of range"))?;
                if ms < 0 {
                    return Err(Reply::err("timeout is negative"));
                }
                block = Some((ms > 0).then(|| Duration::from_millis(ms as u64)));
                i += 2;
            }
            "STREAMS" => {
                i += 1;
                break;
            }
            _ => return Err(syntax()),
        }
    }
    let rest = &args[i..];
    if rest.is_empty() || rest.len() % 2 != 0 {
        return Err(Reply::err(
            "Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.",
        ));
    }
    let (keys, ids) = rest.split_at(rest.len() / 2);
    let after = ids
        .iter()
        .map(|id| {
            if &id[..] == b"$" {
                return Ok(After::Last);
            }
            let (ms, seq) = super::types::stream_id(id)?;
            Ok(After::Id((ms, seq.unwrap_or(0))))
        })
        .collect::<Result<Vec<_>, Reply>>()?;
    Ok(XRead {
        keys: keys.to_vec(),
        after,
        count,
        block,
    })
}

/// The id just after `id` (`None` after the last possible one).
fn next_id(id: (u64, u64)) -> Option<(u64, u64)> {
    match id {
        ID_MAX => None,
        (ms, u64::MAX) => Some((ms + 1, 0)),
        (ms, seq) => Some((ms, seq + 1)),
    }
}

/// Parses a record id `ms-seq` as the store writes it.
fn record_id(id: &[u8]) -> Option<(u64, u64)> {
    let (ms, seq) = std::str::from_utf8(id).ok()?.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Runs an `XREAD` to its answer; `None` if the client left or the node
/// stops while it is blocked.
pub async fn run(
    x: XRead,
    conn: &mut Conn,
    shared: &Shared,
    client: &mut Client<'_>,
) -> Option<Reply> {
    let groups: Vec<GroupId> = x.keys.iter().map(|k| conn.kv.group_for(k)).collect();
    let base = conn.kv.consistency;
    // `$`: each stream's last entry now (through the usual consistency).
    let mut after = Vec::with_capacity(x.keys.len());
    for (i, a) in x.after.iter().enumerate() {
        after.push(match a {
            After::Id(id) => *id,
            After::Last => {
                let last = Q::StreamRange {
                    key: x.keys[i].clone(),
                    start: (0, 0),
                    end: ID_MAX,
                    count: Some(1),
                    rev: true,
                };
                match read(conn, groups[i], last, base).await {
                    Ok(records) => records
                        .first()
                        .and_then(|(id, _)| record_id(id))
                        .unwrap_or((0, 0)),
                    Err(reply) => return Some(reply),
                }
            }
        });
    }
    let started = Instant::now();
    let deadline = x.block.and_then(|b| b.map(|d| started + d));
    // Per group: the applied index last seen (None: cannot be waited for).
    let mut watched: Vec<(GroupId, Option<u64>)> = Vec::new();
    for g in &groups {
        if !watched.iter().any(|(w, _)| w == g) {
            watched.push((*g, Some(0)));
        }
    }
    let mut look: Vec<usize> = (0..x.keys.len()).collect();
    let mut consistency = base;
    let mut last_confirmed = started;
    let mut scratch = vec![0u8; 16 << 10];
    loop {
        let mut found: Vec<(Bytes, Records)> = Vec::new();
        for i in 0..x.keys.len() {
            if !look.contains(&i) {
                continue;
            }
            let Some(start) = next_id(after[i]) else {
                continue;
            };
            let q = Q::StreamRange {
                key: x.keys[i].clone(),
                start,
                end: ID_MAX,
                count: x.count,
                rev: false,
            };
            match read(conn, groups[i], q, consistency).await {
                Ok(records) if records.is_empty() => {}
                Ok(records) => found.push((x.keys[i].clone(), records)),
                Err(reply) => return Some(reply),
            }
        }
        if !found.is_empty() {
            return Some(answer(found, conn.resp3));
        }
        if x.block.is_none() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Reply::NilArray);
        }
        // Wait for a change to one of the keys' groups.
        let now = Instant::now();
        let mut next_timed = last_confirmed + CONFIRMED_EVERY;
        if watched.iter().any(|(_, a)| a.is_none()) {
            next_timed = next_timed.min(now + POLL_FALLBACK);
        }
        let until = deadline.map_or(next_timed, |d| next_timed.min(d));
        let nap = until.saturating_duration_since(now);
        let woke = futures_lite::future::or(
            async {
                glommio::timer::sleep(nap).await;
                Woke::Timer
            },
            futures_lite::future::or(
                async { Woke::Input(client.stream.read(&mut scratch).await) },
                futures_lite::future::or(
                    async {
                        let _ = client.stop.recv_async().await;
                        Woke::Stop
                    },
                    async {
                        let all = vec![true; watched.len()];
                        let deadline = nap + Duration::from_secs(1);
                        let (w, applied) = any_applied(shared, &watched, &all, deadline).await;
                        Woke::Applied(w, applied)
                    },
                ),
            ),
        )
        .await;
        match woke {
            Woke::Input(Ok(n)) if n > 0 => {
                if client.input.len() + n > PENDING_INPUT_MAX {
                    return None;
                }
                client.input.extend_from_slice(&scratch[..n]);
                look.clear();
            }
            Woke::Input(_) | Woke::Stop => return None,
            Woke::Applied(w, Ok(index)) => {
                let group = watched[w].0;
                watched[w].1 = Some(index);
                look = (0..x.keys.len()).filter(|&i| groups[i] == group).collect();
                consistency = ReadConsistency::Stale;
            }
            Woke::Applied(_, Err(HostError::Timeout(_))) => look.clear(),
            Woke::Applied(w, Err(e)) => {
                tracing::debug!(group = watched[w].0 .0, error = %e, "xread: cannot wait for applies: polling");
                watched[w].1 = None;
                look.clear();
            }
            Woke::Timer => {
                // Once a second through the leader (the local replica may
                // lag); groups that cannot be waited for every time.
                if last_confirmed.elapsed() >= CONFIRMED_EVERY {
                    last_confirmed = Instant::now();
                    look = (0..x.keys.len()).collect();
                    for (_, a) in watched.iter_mut() {
                        a.get_or_insert(0);
                    }
                } else {
                    look = (0..x.keys.len())
                        .filter(|&i| watched.iter().any(|(g, a)| *g == groups[i] && a.is_none()))
                        .collect();
                }
                consistency = base;
            }
        }
    }
}

/// Why a blocked `XREAD` woke.
enum Woke {
    Timer,
    Input(std::io::Result<usize>),
    Stop,
    Applied(usize, Result<u64, HostError>),
}

/// One stream range read with `consistency`; a wrong type or an engine
/// error is the command's reply.
async fn read(
    conn: &Conn,
    group: GroupId,
    q: Q,
    consistency: ReadConsistency,
) -> Result<Records, Reply> {
    let mut kv = conn.kv.clone();
    kv.consistency = consistency;
    match kv.query(group, &KvQuery::Typed(q)).await {
        Ok(KvResult::Records(records)) => Ok(records),
        other => Err(outcome_reply(other)),
    }
}

/// `[[key, [[id, [field, value, ...]], ...]], ...]`; a map of key to
/// entries in RESP3, as Redis answers.
fn answer(found: Vec<(Bytes, Records)>, resp3: bool) -> Reply {
    let entries = |records: Records| {
        Reply::Array(
            records
                .into_iter()
                .map(|(id, fields)| {
                    Reply::Array(vec![
                        Reply::Bulk(id),
                        Reply::Array(fields.into_iter().map(Reply::Bulk).collect()),
                    ])
                })
                .collect(),
        )
    };
    if resp3 {
        Reply::Map(
            found
                .into_iter()
                .map(|(k, r)| (Reply::Bulk(k), entries(r)))
                .collect(),
        )
    } else {
        Reply::Array(
            found
                .into_iter()
                .map(|(k, r)| Reply::Array(vec![Reply::Bulk(k), entries(r)]))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn err(a: &[&str]) -> String {
        match parse(&args(a)) {
            Err(Reply::Error(e)) => e,
            other => panic!("{a:?}: {other:?}"),
        }
    }

    #[test]
    fn parses_options_keys_and_ids() {
        let x = parse(&args(&[
            "COUNT", "2", "BLOCK", "0", "STREAMS", "a", "b", "5-1", "$",
        ]))
        .unwrap();
        assert_eq!(x.keys, args(&["a", "b"]));
        assert_eq!(x.after, vec![After::Id((5, 1)), After::Last]);
        assert_eq!(x.count, Some(2));
        assert_eq!(x.block, Some(None));
        let y = parse(&args(&["block", "150", "streams", "s", "7"])).unwrap();
        assert_eq!(y.block, Some(Some(Duration::from_millis(150))));
        assert_eq!(y.after, vec![After::Id((7, 0))]);
        assert_eq!(y.count, None);
        assert_eq!(parse(&args(&["STREAMS", "s", "0"])).unwrap().block, None);
    }

    #[test]
    fn refuses_what_redis_refuses() {
        assert!(err(&["STREAMS", "a", "b", "0"]).contains("Unbalanced"));
        assert!(err(&["STREAMS"]).contains("Unbalanced"));
        assert_eq!(err(&["a", "0"]), "ERR syntax error");
        assert_eq!(
            err(&["BLOCK", "-1", "STREAMS", "a", "0"]),
            "ERR timeout is negative"
        );
        assert!(err(&["COUNT", "x", "STREAMS", "a", "0"]).contains("not an integer"));
        assert!(err(&["STREAMS", "a", "x-1"]).contains("Invalid stream ID"));
    }

    #[test]
    fn ids_step_past_the_last() {
        assert_eq!(next_id((5, 1)), Some((5, 2)));
        assert_eq!(next_id((5, u64::MAX)), Some((6, 0)));
        assert_eq!(next_id(ID_MAX), None);
        assert_eq!(record_id(b"12-3"), Some((12, 3)));
        assert_eq!(record_id(b"nope"), None);
    }

    #[test]
    fn answers_arrays_in_resp2_and_a_map_in_resp3() {
        let found = || {
            vec![(
                Bytes::from_static(b"s"),
                vec![(Bytes::from_static(b"1-0"), args(&["f", "v"]))],
            )]
        };
        let entries = Reply::Array(vec![Reply::Array(vec![
            Reply::text("1-0"),
            Reply::Array(vec![Reply::text("f"), Reply::text("v")]),
        ])]);
        assert_eq!(
            answer(found(), false),
            Reply::Array(vec![Reply::Array(vec![Reply::text("s"), entries.clone()])])
        );
        assert_eq!(
            answer(found(), true),
            Reply::Map(vec![(Reply::text("s"), entries)])
        );
    }
}
