//! The HTTP API of a node: hyper 1 (HTTP/1.1) on glommio sockets, JSON
//! bodies, errors as `{"code": "...", "message": "..."}` with a matching
//! status. Routes and codes: `bin/src/http/README.md`.
//!
//! ```text
//!  glommio executor (the launcher's, not a shard's)
//!  ┌───────────────────────────────────────────────────────────────┐
//!  │ serve_until: accept ─► one task per connection (Gate)          │
//!  │   hyper http1 conn over GlommioIo ─► routes::handle(req)      │
//!  │        │  KvClient / NodeHost calls (flume mailbox + oneshot)  │
//!  └────────┼──────────────────────────────────────────────────────┘
//!           ▼
//!   shard executors of the NodeHost (raft, WAL, state machines)
//! ```
//!
//! The server never blocks its executor: every engine call is an async
//! message to the owning shard with a deadline. Bounded everywhere: open
//! connections (`connections_max`), request bodies (`body_bytes_max`,
//! 413), header bytes (hyper's buffer), scan sizes (`scan_limit_max`),
//! request deadlines (`timeout_max`), idle connections (`idle_timeout`).
//!
//! # Examples
//! How the launcher wires it (on its own glommio executor thread):
//! ```no_run
//! # fn wire(kv: flotilla::kv::KvClient, stop: flume::Receiver<()>) {
//! use std::rc::Rc;
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
//!     .spawn(move || async move {
//!         let listener = glommio::net::TcpListener::bind("127.0.0.1:8081").unwrap();
//!         let state = Rc::new(http::HttpState::new(kv, 1));
//!         http::serve_until(listener, state, async move {
//!             let _ = stop.recv_async().await;
//!         })
//!         .await;
//!     })
//!     .unwrap();
//! # }
//! ```

// A module of a binary crate: its public interface (for the launcher) is
// wider than what any one build uses.
#![allow(dead_code, unused_imports)]

mod error;
mod io;
mod metrics;
mod routes;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use tracing::{debug, info, warn};

pub use error::ApiError;
pub use metrics::prometheus_text;

/// The whole answer to a connection over `connections_max`.
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\nConnection: close\r\nContent-Length: 67\r\n\r\n\
{\"code\":\"too_many_connections\",\"message\":\"connections_max reached\"}";

/// Period of the timer `serve_until` keeps armed (glommio 0.9.0 bug 2).
const KEEP_AWAKE_TICK: Duration = Duration::from_millis(10);

/// Limits and defaults of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body accepted (larger: 413). Default 1 MiB + 4 KiB,
    /// so a 1 MiB value fits with room for JSON framing.
    pub body_bytes_max: usize,
    /// Deadline of an engine call when the request names none.
    pub timeout: Duration,
    /// Largest deadline a request may ask for with `?timeout_ms=`.
    pub timeout_max: Duration,
    /// Open connections at most; more are closed right after accept.
    pub connections_max: usize,
    /// A connection without a request in flight for this long is closed:
    /// idle keep-alive connections, and clients that trickle their headers
    /// (the clock runs from the end of the previous request). A request
    /// being served is never cut; its body must arrive within
    /// `timeout_max` (else 408).
    pub idle_timeout: Duration,
    /// Default `limit` of a scan.
    pub scan_limit_default: u32,
    /// Largest `limit` of a scan.
    pub scan_limit_max: u32,
    /// How long `serve_until` waits for in-flight requests after the stop
    /// signal before it drops the remaining connections.
    pub shutdown_grace: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            body_bytes_max: (1 << 20) + 4096,
            timeout: Duration::from_secs(5),
            timeout_max: Duration::from_secs(60),
            connections_max: 1024,
            idle_timeout: Duration::from_secs(75),
            scan_limit_default: 100,
            scan_limit_max: 10_000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Counters of the HTTP server itself (exported by `/metrics`). Shared by
/// every client executor of a node (`Arc`, relaxed atomics: a few counters
/// touched once per connection or response), so `/metrics` reports the
/// node's totals whichever executor answers the scrape.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `connections_max` were open.
    pub connections_refused: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx.
    pub responses_by_class: [AtomicU64; 5],
}

impl HttpCounters {
    /// Fresh counters to share between the `HttpState`s of one node.
    pub fn shared() -> Arc<HttpCounters> {
        Arc::new(HttpCounters::default())
    }
}

/// Reads a counter.
pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What every connection of the HTTP server shares: the KV client (and
/// through it the `NodeHost`), this node's id and the limits. Lives on one
/// executor (`Rc`).
pub struct HttpState {
    kv: flotilla::kv::KvClient,
    node_id: u64,
    options: HttpOptions,
    counters: Arc<HttpCounters>,
}

impl HttpState {
    /// State for a node `node_id` whose KV store is `kv` (its groups are
    /// the KV groups), with default [`HttpOptions`].
    pub fn new(kv: flotilla::kv::KvClient, node_id: u64) -> Self {
        Self::with_options(kv, node_id, HttpOptions::default())
    }

    /// As [`HttpState::new`] with explicit limits.
    pub fn with_options(kv: flotilla::kv::KvClient, node_id: u64, options: HttpOptions) -> Self {
        Self::with_counters(kv, node_id, options, HttpCounters::shared())
    }

    /// As [`HttpState::with_options`], counting into `counters`: give every
    /// client executor of a node the same [`HttpCounters::shared`] so
    /// `/metrics` and `connections_max` cover the whole node.
    pub fn with_counters(
        kv: flotilla::kv::KvClient,
        node_id: u64,
        options: HttpOptions,
        counters: Arc<HttpCounters>,
    ) -> Self {
        HttpState {
            kv,
            node_id,
            options,
            counters,
        }
    }

    /// The limits in force.
    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// The server's own counters.
    pub fn counters(&self) -> &HttpCounters {
        &self.counters
    }

    pub(crate) fn kv(&self) -> &flotilla::kv::KvClient {
        &self.kv
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.node_id
    }

    pub(crate) fn host(&self) -> &flotilla::NodeHost {
        self.kv.host()
    }
}

/// Serves HTTP on `listener` until accepting fails. See [`serve_until`].
pub async fn serve(listener: TcpListener, state: Rc<HttpState>) {
    serve_until(listener, state, future::pending()).await
}

/// Serves HTTP on `listener`, one task per connection on the current
/// glommio executor, until `stop` completes (or accepting fails for good).
/// Then it stops accepting, asks every connection to finish its current
/// request and close (hyper's graceful shutdown), waits up to
/// `shutdown_grace` for them, and returns.
///
/// Must run inside a glommio executor.
pub async fn serve_until(
    listener: TcpListener,
    state: Rc<HttpState>,
    stop: impl Future<Output = ()>,
) {
    let addr = listener.local_addr().ok();
    info!(node = state.node_id, ?addr, "http server listening");
    // glommio 0.9.0 bug 2 (GLOMMIO.md): an executor can park with runnable
    // work; a parked executor still wakes for its timers, so one timer kept
    // armed bounds a missed wake-up to `KEEP_AWAKE_TICK`. Cancelled when
    // the server returns (the task handle is dropped).
    let _keep_awake = glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(KEEP_AWAKE_TICK).await;
        }
    });
    let gate = Gate::new();
    // Closed when stopping: every connection waits on it (a broadcast).
    let stopping = Rc::new(glommio::sync::Semaphore::new(0));
    let mut stop = pin!(stop);
    let mut accept_errors: u32 = 0;
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            (&mut stop).await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(stream)) => {
                accept_errors = 0;
                stream
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off and keep serving; give up only
                // after a long run of failures.
                accept_errors += 1;
                warn!(error = %e, accept_errors, "http accept failed");
                if accept_errors > 1000 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let counters = &state.counters;
        if get(&counters.connections_open) >= state.options.connections_max as u64 {
            bump(&counters.connections_refused);
            debug!("http connection refused: connections_max reached");
            // One small write into a fresh socket's buffer, then close; not
            // tracked by the gate (it cannot wait on anything).
            glommio::spawn_local(async move {
                use futures_lite::AsyncWriteExt;
                let mut stream = stream;
                let _ = stream.write_all(REFUSED_RESPONSE).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        bump(&counters.connections_accepted);
        // Counted here, before the task runs, so a burst of accepts cannot
        // overshoot `connections_max`; the task's guard takes it back.
        bump(&counters.connections_open);
        let conn_state = state.clone();
        let conn_stopping = stopping.clone();
        if gate
            .spawn(async move { routes::serve_connection(stream, conn_state, conn_stopping).await })
            .map(|t| t.detach())
            .is_err()
        {
            // The gate is closed: the task never ran, so nothing took the
            // count back.
            counters.connections_open.fetch_sub(1, Ordering::Relaxed);
            break;
        }
    }
    stopping.close();
    let grace = state.options.shutdown_grace;
    let drained = future::or(async { gate.close().await.is_ok() }, async {
        glommio::timer::sleep(grace).await;
        false
    })
    .await;
    info!(node = state.node_id, drained, "http server stopped");
}
