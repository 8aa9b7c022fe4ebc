//! API errors: a stable machine-readable `code`, a human `message`, and the
//! HTTP status that goes with it. Every failure of a route becomes one.
//!
//! | status | codes |
//! |---|---|
//! | 400 | `bad_request`, `invalid_json`, `bad_encoding`, `bad_key`, `key_too_large`, `invalid_membership_change`, `invalid_target`, `not_integer`, `result_too_large` |
//! | 404 | `not_found` (route), `key_not_found`, `group_not_found` |
//! | 405 | `method_not_allowed` |
//! | 409 | `cas_failed`, `condition_failed`, `conf_change_pending`, `not_caught_up`, `leader_refused`, `kv_group` |
//! | 408 | `request_timeout` |
//! | 413 | `body_too_large`, `value_too_large` |
//! | 500 | `internal`, `storage` |
//! | 503 | `not_leader`, `no_leader`, `busy`, `retry`, `witness`, `shutting_down` |
//! | 504 | `timeout` |

use flotilla::{HostError, RequestError};
use flotilla_rsm::KvError;
use hyper::StatusCode;
use serde_json::{json, Value};

/// An error answer of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable code (snake case), part of the API.
    pub code: &'static str,
    /// What happened, for humans.
    pub message: String,
    /// Extra fields merged into the JSON body (e.g. `leader`, `previous`).
    pub extra: Option<Value>,
    /// Close the connection after the answer (the request could not be
    /// read to its end).
    pub close_connection: bool,
}

impl ApiError {
    /// An error with no extra fields.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            close_connection: false,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found` for an unknown route.
    pub fn no_route(method: &hyper::Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {method} {path}"),
        )
    }

    /// 404 `key_not_found`.
    pub fn key_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "key_not_found", "no such key")
    }

    /// Adds extra JSON fields to the body.
    pub fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Marks the answer as closing the connection.
    pub fn closing(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// The JSON body: `{"code", "message", ...extra}`.
    pub fn body(&self) -> Value {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (&self.extra, &mut body) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let message = e.to_string();
        match e {
            HostError::Timeout(_) => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            HostError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            HostError::Request(r) => from_request(r, message),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

fn from_request(r: RequestError, message: String) -> ApiError {
    use flotilla::raft::ProposeError as P;
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match r {
        RequestError::NotLeader { leader, .. }
        | RequestError::Rejected(P::NotLeader { leader, .. }) => {
            not_leader(leader.map(|n| n.0), message)
        }
        RequestError::GroupNotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "group_not_found", message)
        }
        RequestError::Dropped { .. } | RequestError::ReadAborted { .. } => {
            ApiError::new(unavailable, "retry", message)
        }
        RequestError::Witness { .. } => ApiError::new(unavailable, "witness", message),
        RequestError::EntryTooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "entry_too_large", message)
        }
        RequestError::ShuttingDown { .. } => ApiError::new(unavailable, "shutting_down", message),
        RequestError::Storage { .. } => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
        }
        RequestError::AddressConflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, "address_conflict", message)
        }
        // A forwarded request the leader refused (its reason as text): a
        // conflict with the group's current state.
        RequestError::Remote { .. } => {
            ApiError::new(StatusCode::CONFLICT, "leader_refused", message)
        }
        RequestError::Kv { error, .. } => ApiError::from(error),
        RequestError::Rejected(p) => match p {
            P::Busy { .. } | P::TooManyReads { .. } | P::TransferInProgress { .. } => {
                ApiError::new(unavailable, "busy", message)
            }
            P::NotCommittedInTerm { .. } => ApiError::new(unavailable, "retry", message),
            P::ConfChangePending { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conf_change_pending", message)
            }
            P::NotCaughtUp { .. } => ApiError::new(StatusCode::CONFLICT, "not_caught_up", message),
            P::ConfChange(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_membership_change",
                message,
            ),
            P::InvalidTarget { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_target", message)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        },
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

/// 503 `not_leader` (a leader is known: `leader` names it) or `no_leader`.
pub(crate) fn not_leader(leader: Option<u64>, message: String) -> ApiError {
    match leader {
        Some(node) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
            .with(json!({ "leader": node })),
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message),
    }
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        let message = e.to_string();
        match e {
            KvError::KeyTooLarge => Self::new(StatusCode::BAD_REQUEST, "key_too_large", message),
            KvError::ValueTooLarge => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", message)
            }
            KvError::NotInteger | KvError::Overflow => {
                Self::new(StatusCode::BAD_REQUEST, "not_integer", message)
            }
            KvError::ResultTooLarge => {
                Self::new(StatusCode::BAD_REQUEST, "result_too_large", message)
            }
            // The key holds a list, set, hash, sorted set or stream (made
            // through the Redis protocol); the HTTP API reads strings.
            KvError::WrongType | KvError::NotHyperLogLog => {
                Self::new(StatusCode::CONFLICT, "wrong_type", message)
            }
            KvError::NotFloat
            | KvError::ScoreNaN
            | KvError::IndexOutOfRange
            | KvError::NoSuchKey
            | KvError::HashNotInteger
            | KvError::StreamIdTooSmall
            | KvError::StreamIdZero
            | KvError::StreamIdExhausted => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}
