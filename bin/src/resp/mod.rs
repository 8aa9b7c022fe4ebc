//! The Redis-protocol (RESP2) server of a node.
//!
//! One accept loop per client executor (all executors accept on the same
//! listening socket); one task per connection:
//!
//! ```text
//!  read ─► parse every complete command in the buffer (≤ PIPELINE_MAX)
//!       ─► prepare each (in order) ─► run the KV plans of the pipeline
//!          concurrently (one wave; the engine batches them per group)
//!       ─► encode every reply in order into one buffer ─► one write
//! ```
//!
//! A connection holds at most one pipeline (≤ `PIPELINE_MAX` commands) in
//! flight and at most one partial command (≤ `max_value_bytes` per argument)
//! in its buffer; oversized arguments are skipped without being buffered.
//! On shutdown a connection stops reading, finishes the pipeline in flight
//! and closes.

pub mod blocking;
pub mod command;
pub mod extras;
pub mod geo;
pub mod glob;
pub mod lua_bit;
pub mod lua_json;
pub mod multi;
pub mod parse;
pub mod pubsub;
pub mod reply;
pub mod script;
pub mod types;
pub mod xread;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use command::{Conn, Prepared, Shared};
use parse::{Parsed, Parser};
use reply::Reply;

/// Most commands of one pipeline run together.
pub const PIPELINE_MAX: usize = 1024;
/// Most arguments of one command.
const ARGS_MAX: usize = 1 << 20;
/// Largest read. A read starts at [`READ_CHUNK_MIN_BYTES`] and doubles while
/// reads fill it (a pipeline or a large value). Reads land in a scratch
/// buffer that is zeroed only when it grows, and only the bytes read are
/// copied into the connection buffer: zeroing the read size in the
/// connection buffer before every read (`resize`) was 1.3 % of a shard's
/// CPU under `redis-benchmark -t get`.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Smallest read.
const READ_CHUNK_MIN_BYTES: usize = 4 << 10;

/// Serves RESP connections from `listener` until `stop` fires (or its
/// sender is dropped); then waits for open connections to finish their
/// pipeline in flight.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: flume::Receiver<()>) {
    script::register(&shared);
    let gate = glommio::sync::Gate::new();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv_async().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                warn!(error = %e, "resp: accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.clients_accepted.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let stop = stop.clone();
        let spawned = gate.spawn(async move {
            let n = shared.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
            if n > shared.max_clients {
                let mut s = stream;
                let _ = s.write_all(b"-ERR max number of clients reached\r\n").await;
                let _ = s.close().await;
            } else {
                connection(stream, &shared, stop).await;
            }
            shared.clients_connected.fetch_sub(1, Ordering::Relaxed);
        });
        match spawned {
            Ok(task) => {
                task.detach();
            }
            Err(e) => {
                warn!(error = %e, "resp: cannot start a connection task");
                break;
            }
        }
    }
    drop(listener);
    if let Err(e) = gate.close().await {
        warn!(error = %e, "resp: closing the connection gate");
    }
    info!("resp server stopped");
}

/// One connection until the peer closes, QUIT, or shutdown.
async fn connection(mut stream: TcpStream, shared: &Shared, stop: flume::Receiver<()>) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    debug!(%peer, "resp: connection opened");
    let mut conn = Conn::new(shared, peer);
    let mut parser = Parser::new(shared.max_value_bytes, ARGS_MAX);
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut out = BytesMut::with_capacity(16 << 10);
    let mut chunk = READ_CHUNK_MIN_BYTES;
    // What a read fills: as long as the largest read so far, zeroed once.
    let mut scratch: Vec<u8> = Vec::new();
    // One wait for shutdown for the whole connection: a fresh `recv_async`
    // per read registered and dropped a waker hook in the channel each
    // time (4 % of a shard's CPU under `redis-benchmark -t ping`).
    let stopping = stop.recv_async();
    futures_lite::pin!(stopping);
    let mut pipeline = Pipeline::default();
    loop {
        pipeline.trim();
        let batch = &mut pipeline.batch;
        let mut broken = None;
        while batch.len() < PIPELINE_MAX {
            match parser.next(&mut buf) {
                Parsed::Command(argv) => {
                    let p = command::prepare(argv, &mut conn, shared);
                    let subscription = matches!(p, Prepared::PubSub(_));
                    batch.push(p);
                    if subscription {
                        // What follows may run in subscribed mode.
                        break;
                    }
                }
                Parsed::Rejected(m) => {
                    multi::refused(&mut conn);
                    batch.push(Prepared::Reply(Reply::Error(m)));
                }
                Parsed::Broken(m) => {
                    broken = Some(m);
                    break;
                }
                Parsed::Incomplete => break,
            }
        }
        // A broken frame leaves the stream out of step: what follows may be
        // the middle of a value, and must never run as commands. As Redis
        // does, answer the error (after the commands before it) and close.
        let broken = broken.is_some_and(|m| {
            batch.push(Prepared::Reply(Reply::err(m)));
            true
        });
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let mut client = blocking::Client {
                stream: &mut stream,
                input: &mut buf,
                stop: &stop,
            };
            let quit =
                execute(&mut pipeline, &mut conn, shared, &mut out, &mut client).await || broken;
            shared.commands_processed.fetch_add(n, Ordering::Relaxed);
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            if out.capacity() > (1 << 20) {
                out = BytesMut::with_capacity(16 << 10);
            }
            if quit {
                break;
            }
            if conn.pubsub.is_some() {
                let left = pubsub::serve(
                    &mut stream,
                    &mut buf,
                    &mut parser,
                    &mut conn,
                    shared,
                    &stop,
                    &mut out,
                )
                .await;
                match left {
                    pubsub::Left::Normal => {}
                    pubsub::Left::Close => break,
                }
            }
            continue;
        }
        // Need more input.
        if scratch.len() < chunk {
            scratch.resize(chunk, 0);
        }
        let into = &mut scratch[..chunk];
        let read = futures_lite::future::or(async { Some(stream.read(into).await) }, async {
            let _ = (&mut stopping).await;
            None
        })
        .await;
        match read {
            Some(Ok(0)) | Some(Err(_)) | None => break,
            Some(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                chunk = if n == chunk {
                    (chunk * 2).min(READ_CHUNK_BYTES)
                } else {
                    READ_CHUNK_MIN_BYTES
                };
            }
        }
        if buf.capacity() > (4 << 20) && buf.len() < (64 << 10) && !parser.is_skipping() {
            // Give back the memory of a large value once it is consumed.
            let rest = BytesMut::from(&buf[..]);
            buf = rest;
        }
    }
    let _ = stream.close().await;
    debug!(peer = %conn.peer, "resp: connection closed");
}

/// What a connection keeps from one pipeline to the next, so that a
/// pipeline allocates none of them (each is empty between pipelines).
#[derive(Default)]
struct Pipeline {
    /// The commands of the pipeline, prepared.
    batch: Vec<Prepared>,
    /// Replies in order: a slot per command, plans filled in after their
    /// wave.
    replies: Vec<Option<Reply>>,
    /// The KV plans of the current wave...
    wave: Vec<(Vec<command::Sub>, command::FinishBox)>,
    /// ...their slots in `replies`...
    wave_slots: Vec<usize>,
    /// ...and their replies, in order.
    done: Vec<Reply>,
}

/// Most entries a [`Pipeline`] vector keeps allocated after a pipeline.
const PIPELINE_KEPT_MAX: usize = 64;

impl Pipeline {
    /// Gives back the memory of a long pipeline.
    fn trim(&mut self) {
        debug_assert!(self.batch.is_empty() && self.replies.is_empty() && self.done.is_empty());
        if self.batch.capacity() > PIPELINE_KEPT_MAX {
            *self = Pipeline::default();
        }
    }
}

/// Runs a pipeline (`p.batch`): consecutive KV plans together,
/// INFO/KEYS/QUIT in order. Encodes every reply into `out`; true if the
/// connection must close (QUIT).
async fn execute(
    p: &mut Pipeline,
    conn: &mut Conn,
    shared: &Shared,
    out: &mut BytesMut,
    client: &mut blocking::Client<'_>,
) -> bool {
    let Pipeline {
        batch,
        replies,
        wave,
        wave_slots,
        done,
    } = p;
    let mut quit = false;
    for item in batch.drain(..) {
        match item {
            Prepared::Reply(r) => replies.push(Some(r)),
            Prepared::Plan(subs, f) => {
                wave_slots.push(replies.len());
                replies.push(None);
                wave.push((subs, f));
            }
            other => {
                flush_wave(wave, wave_slots, done, replies, conn, shared).await;
                match other {
                    Prepared::Info(section) => {
                        replies.push(Some(command::info(section, shared).await));
                    }
                    Prepared::Keys(pattern) => {
                        replies.push(Some(command::keys(pattern, conn, shared).await));
                    }
                    Prepared::Exec(t) => {
                        replies.push(Some(multi::exec(t, conn, shared).await));
                    }
                    Prepared::Script(e) => {
                        replies.push(Some(script::run(e, conn, shared).await));
                    }
                    Prepared::Unwatch(reply) => {
                        conn.watched.clear();
                        replies.push(Some(reply));
                    }
                    Prepared::Wait => {
                        replies.push(Some(command::wait(shared).await));
                    }
                    Prepared::Save { background } => {
                        replies.push(Some(command::save(background, shared).await));
                    }
                    Prepared::PubSub(change) => {
                        replies.push(Some(pubsub::apply(change, conn, shared).await));
                    }
                    Prepared::XRead(x) => match xread::run(x, conn, shared, client).await {
                        Some(reply) => replies.push(Some(reply)),
                        None => {
                            quit = true;
                            break;
                        }
                    },
                    Prepared::Block(b) => match blocking::run(b, conn, shared, client).await {
                        Some(reply) => replies.push(Some(reply)),
                        // The client left (or the node stops): no answer.
                        None => {
                            quit = true;
                            break;
                        }
                    },
                    _ => {
                        replies.push(Some(Reply::Ok));
                        quit = true;
                        break;
                    }
                }
            }
        }
    }
    flush_wave(wave, wave_slots, done, replies, conn, shared).await;
    for r in replies.drain(..) {
        r.unwrap_or_else(|| Reply::err("internal error: missing reply"))
            .encode_as(out, conn.resp3);
    }
    quit
}

async fn flush_wave(
    wave: &mut Vec<(Vec<command::Sub>, command::FinishBox)>,
    slots: &mut Vec<usize>,
    done: &mut Vec<Reply>,
    replies: &mut [Option<Reply>],
    conn: &mut Conn,
    shared: &Shared,
) {
    if wave.is_empty() {
        return;
    }
    command::run_wave(wave, conn, shared, done).await;
    debug_assert!(wave.is_empty());
    debug_assert_eq!(done.len(), slots.len());
    for (slot, r) in slots.drain(..).zip(done.drain(..)) {
        replies[slot] = Some(r);
    }
}
