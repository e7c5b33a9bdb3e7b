//! The client's errors.

use std::time::Duration;

/// Why bytes from the server could not be understood. The connection they
/// came on is dropped (and reconnected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The 128-byte greeting is not a Tarantool greeting.
    #[error("bad greeting: {0}")]
    Greeting(&'static str),
    /// A response announced a length over the configured limit.
    #[error("response of {len} bytes is over the limit of {max}")]
    FrameTooLarge { len: u64, max: usize },
    /// A response is not the msgpack it should be.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// What a request or a connection attempt can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not connected now (the client reconnects in the background); the
    /// request was not sent.
    #[error("not connected to the server")]
    Disconnected,
    /// The connection dropped while the request was in flight: it may or may
    /// not have been executed. Retry only what is idempotent.
    #[error("connection lost with the request in flight, outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// No answer in time: the request may or may not have been executed.
    #[error("no answer within {0:?}, outcome unknown")]
    Timeout(Duration),
    /// Connecting failed at the socket level.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting (greeting and authentication included) took too long.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The server refused the user or password.
    #[error("authentication failed (error {code}): {message}")]
    Auth { code: u32, message: String },
    /// The server executed the request and answered with an error
    /// (`code` is Tarantool's error code, e.g. 42 for access denied).
    #[error("server error {code}: {message}")]
    Server { code: u32, message: String },
    /// No space of that name is visible to the user.
    #[error("no space named {0:?}")]
    NoSuchSpace(String),
    /// A caller's value could not be serialized as the request needs.
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// The server's answer does not deserialize into the caller's type.
    #[error("cannot decode the answer: {0}")]
    Decode(String),
    /// The server's bytes are not IPROTO as this client knows it.
    #[error(transparent)]
    Protocol(#[from] DecodeError),
}

impl Error {
    /// Whether the request may have been executed although it failed
    /// ([`Error::OutcomeUnknown`], [`Error::Timeout`]).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown(_) | Error::Timeout(_))
    }
}
