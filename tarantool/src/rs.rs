//! [`RsClient`]: the `tarantool-rs` crate (0.0.10) behind the [`Tarantool`]
//! trait, for Tarantool 2.10 and newer only (cargo feature `tarantool-rs`,
//! off by default). Measured against [`Client`](crate::Client) by
//! `tests/rs_client.rs` and the `client-compare` bench; the decision and
//! the figures are in ARCHITECTURE.md.
//!
//! What the adapter has to add, because the crate does not do it:
//! - Connecting: the crate's `build` connects once, sends IPROTO_ID (which
//!   2.6 refuses: `Unknown request type 73`) and fails if the server is
//!   down; afterwards it reconnects in the background. [`RsClient::connect`]
//!   is that first connection, bounded by `connect_timeout`.
//! - Space ids by name (the crate takes ids): looked up in `_vspace`,
//!   cached, forgotten on `ER_NO_SUCH_SPACE`.
//! - Error mapping onto [`Error`]: a dropped connection or a timeout with the
//!   request sent is [`Error::OutcomeUnknown`] / [`Error::Timeout`].
//! - Every answer is decoded into an `rmpv::Value` tree first, then into the
//!   caller's type (the crate's only way), where [`Client`](crate::Client)
//!   deserializes from the bytes.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tarantool_rs::errors::EncodingError;
use tarantool_rs::{Connection, ExecutorExt, IteratorType, ReconnectInterval, Tuple};

use crate::api::{Iter, Select, Tarantool};
use crate::{ClientConfig, Error};

/// `_vspace` and its index by name (as in `client`).
const VSPACE: u32 = 281;
const VSPACE_NAME_INDEX: u32 = 2;
/// `ER_NO_SUCH_SPACE`.
const ER_NO_SUCH_SPACE: u32 = 36;

/// A serializable value that is already a msgpack array, as the crate's
/// `Tuple` (its own impls cover Rust tuples and `Vec`s only).
struct Ser<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Tuple for Ser<'_, T> {
    fn encode_into_writer<W: Write>(&self, mut buf: W) -> Result<(), EncodingError> {
        rmp_serde::encode::write(&mut buf, self.0)?;
        Ok(())
    }
}

/// A `tarantool-rs` connection with [`Client`](crate::Client)'s settings:
/// address, user, password, connect and request timeouts, reconnect
/// interval (fixed at `reconnect_min`; the crate's backoff prints each
/// attempt with `dbg!`), requests in flight (`max_in_flight` sizes its
/// queue).
#[derive(Clone)]
pub struct RsClient {
    conn: Connection,
    spaces: std::sync::Arc<Mutex<HashMap<String, u32>>>,
    timeout: Duration,
}

fn map_err(e: tarantool_rs::Error) -> Error {
    use tarantool_rs::Error as E;
    match e {
        E::Response(r) => Error::Server {
            code: r.code,
            message: r.description,
        },
        E::Auth(r) => Error::Auth {
            code: r.code,
            message: r.description,
        },
        E::CallEval(v) => Error::Server {
            code: 0,
            message: v.to_string(),
        },
        E::Timeout => Error::OutcomeUnknown("tarantool-rs: request timed out".into()),
        E::ConnectTimeout => Error::Disconnected,
        E::Encode(e) => Error::Encode(e.to_string()),
        E::Decode(e) => Error::Decode(e.to_string()),
        // The crate does not say whether the request was written before
        // the connection went: it may have been executed.
        E::Io(e) => Error::OutcomeUnknown(e.to_string()),
        E::ConnectionClosed => Error::OutcomeUnknown("tarantool-rs: connection closed".into()),
        other => Error::OutcomeUnknown(other.to_string()),
    }
}

fn iter(i: Iter) -> IteratorType {
    match i {
        Iter::Eq => IteratorType::Eq,
        Iter::Req => IteratorType::Req,
        Iter::All => IteratorType::All,
        Iter::Lt => IteratorType::Lt,
        Iter::Le => IteratorType::Le,
        Iter::Ge => IteratorType::Ge,
        Iter::Gt => IteratorType::Gt,
    }
}

impl RsClient {
    /// Connects (greeting, chap-sha1, IPROTO_ID) within
    /// `config.connect_timeout`; the crate reconnects in the background
    /// afterwards.
    pub async fn connect(config: &ClientConfig) -> Result<RsClient, Error> {
        let mut b = Connection::builder();
        if !config.user.is_empty() {
            b.auth(&config.user, Some(config.password.as_str()));
        }
        b.timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .reconnect_interval(ReconnectInterval::fixed(config.reconnect_min))
            .internal_simultaneous_requests_threshold(config.max_in_flight.max(1));
        let conn = tokio::time::timeout(config.connect_timeout, b.build(config.addr.clone()))
            .await
            .map_err(|_| Error::ConnectTimeout(config.connect_timeout))?
            .map_err(map_err)?;
        Ok(RsClient {
            conn,
            spaces: Default::default(),
            timeout: config.request_timeout,
        })
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn space_id(&self, name: &str) -> Result<u32, Error> {
        if let Some(id) = self
            .spaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(*id);
        }
        // A `_vspace` tuple has 7 fields; only the first, the id, is needed.
        let rows: Vec<Vec<tarantool_rs::Value>> = self
            .conn
            .select::<Vec<tarantool_rs::Value>, _>(
                VSPACE,
                VSPACE_NAME_INDEX,
                Some(1),
                None,
                Some(IteratorType::Eq),
                (name,),
            )
            .await
            .map_err(map_err)?;
        let id = rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| Error::NoSuchSpace(name.to_string()))?;
        self.spaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), id);
        Ok(id)
    }

    /// Forgets a cached id the server no longer knows.
    fn stale(&self, name: &str, e: &Error) {
        if matches!(e, Error::Server { code, .. } if *code == ER_NO_SUCH_SPACE) {
            self.spaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(name);
        }
    }
}

impl Tarantool for RsClient {
    async fn ping(&self) -> Result<(), Error> {
        self.conn.ping().await.map_err(map_err)
    }

    async fn call<A, R>(&self, function: &str, args: &A) -> Result<R, Error>
    where
        A: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        let r = self.conn.call(function, Ser(args)).await.map_err(map_err)?;
        r.decode_full().map_err(|e| Error::Decode(e.to_string()))
    }

    async fn eval<A, R>(&self, expr: &str, args: &A) -> Result<R, Error>
    where
        A: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        let r = self.conn.eval(expr, Ser(args)).await.map_err(map_err)?;
        r.decode_full().map_err(|e| Error::Decode(e.to_string()))
    }

    async fn select<K, R>(&self, space: &str, key: &K, opts: Select) -> Result<Vec<R>, Error>
    where
        K: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        let id = self.space_id(space).await?;
        let r = self
            .conn
            .select::<R, _>(
                id,
                opts.index,
                Some(opts.limit),
                Some(opts.offset),
                Some(iter(opts.iter)),
                Ser(key),
            )
            .await
            .map_err(map_err);
        if let Err(e) = &r {
            self.stale(space, e);
        }
        r
    }

    async fn insert<T>(&self, space: &str, tuple: &T) -> Result<(), Error>
    where
        T: Serialize + ?Sized + Sync,
    {
        let id = self.space_id(space).await?;
        let r = self
            .conn
            .insert(id, Ser(tuple))
            .await
            .map(drop)
            .map_err(map_err);
        if let Err(e) = &r {
            self.stale(space, e);
        }
        r
    }

    async fn replace<T>(&self, space: &str, tuple: &T) -> Result<(), Error>
    where
        T: Serialize + ?Sized + Sync,
    {
        let id = self.space_id(space).await?;
        let r = self
            .conn
            .replace(id, Ser(tuple))
            .await
            .map(drop)
            .map_err(map_err);
        if let Err(e) = &r {
            self.stale(space, e);
        }
        r
    }

    async fn update<K, O>(&self, space: &str, index: u32, key: &K, ops: &O) -> Result<(), Error>
    where
        K: Serialize + ?Sized + Sync,
        O: Serialize + ?Sized + Sync,
    {
        let id = self.space_id(space).await?;
        let r = self
            .conn
            .update(id, index, Ser(key), Ser(ops))
            .await
            .map(drop)
            .map_err(map_err);
        if let Err(e) = &r {
            self.stale(space, e);
        }
        r
    }

    async fn delete<K, R>(&self, space: &str, index: u32, key: &K) -> Result<Option<R>, Error>
    where
        K: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        let id = self.space_id(space).await?;
        let r = self.conn.delete(id, index, Ser(key)).await.map_err(map_err);
        match r {
            Ok(d) => d.decode_opt().map_err(|e| Error::Decode(e.to_string())),
            Err(e) => {
                self.stale(space, &e);
                Err(e)
            }
        }
    }

    async fn upsert<T, O>(&self, space: &str, tuple: &T, ops: &O) -> Result<(), Error>
    where
        T: Serialize + ?Sized + Sync,
        O: Serialize + ?Sized + Sync,
    {
        let id = self.space_id(space).await?;
        let r = self
            .conn
            .upsert(id, Ser(tuple), Ser(ops))
            .await
            .map(drop)
            .map_err(map_err);
        if let Err(e) = &r {
            self.stale(space, e);
        }
        r
    }
}
