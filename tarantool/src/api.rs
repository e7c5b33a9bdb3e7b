//! The operations the node needs from a Tarantool connection, as a trait,
//! so another client crate can take [`Client`](crate::Client)'s place.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// How a `select` walks the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Iter {
    /// Tuples equal to the key (all tuples for an empty key).
    #[default]
    Eq,
    /// Equal, in reverse order.
    Req,
    /// All tuples.
    All,
    /// Less than the key, descending.
    Lt,
    /// Less or equal, descending.
    Le,
    /// Greater or equal, ascending.
    Ge,
    /// Greater than the key, ascending.
    Gt,
}

impl Iter {
    pub(crate) fn code(self) -> u8 {
        match self {
            Iter::Eq => 0,
            Iter::Req => 1,
            Iter::All => 2,
            Iter::Lt => 3,
            Iter::Le => 4,
            Iter::Ge => 5,
            Iter::Gt => 6,
        }
    }
}

/// Options of a `select`. The default reads the primary index (0) with
/// [`Iter::Eq`], no limit, no offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Select {
    /// Index id within the space (0 is the primary key).
    pub index: u32,
    pub iter: Iter,
    pub limit: u32,
    pub offset: u32,
}

impl Default for Select {
    fn default() -> Self {
        Select {
            index: 0,
            iter: Iter::Eq,
            limit: u32::MAX,
            offset: 0,
        }
    }
}

/// A Tarantool connection as Shoal uses it.
///
/// Spaces are named; the implementation resolves and caches their ids.
/// Tuples, keys, arguments and operations are any `Serialize` value that
/// comes out as a msgpack array: a Rust tuple, slice, `Vec` or a struct
/// (structs serialize as arrays); `&()` stands for the empty array.
/// Results deserialize from msgpack arrays into the caller's type.
pub trait Tarantool: Send + Sync {
    /// Round trip to the server.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Calls a stored function (IPROTO CALL). The function's return values
    /// come back as one array: `call::<_, (u64,)>` for a function that
    /// returns one number.
    fn call<A, R>(&self, function: &str, args: &A) -> impl Future<Output = Result<R, Error>> + Send
    where
        A: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send;

    /// Evaluates a Lua chunk with `...` bound to `args`; its return values
    /// come back as one array, as for [`call`](Tarantool::call).
    fn eval<A, R>(&self, expr: &str, args: &A) -> impl Future<Output = Result<R, Error>> + Send
    where
        A: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send;

    /// The tuples of `space` that `key` selects in the index of `opts`.
    fn select<K, R>(
        &self,
        space: &str,
        key: &K,
        opts: Select,
    ) -> impl Future<Output = Result<Vec<R>, Error>> + Send
    where
        K: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send;

    /// Inserts a tuple; a duplicate key is a server error.
    fn insert<T>(&self, space: &str, tuple: &T) -> impl Future<Output = Result<(), Error>> + Send
    where
        T: Serialize + ?Sized + Sync;

    /// Inserts or replaces a tuple.
    fn replace<T>(&self, space: &str, tuple: &T) -> impl Future<Output = Result<(), Error>> + Send
    where
        T: Serialize + ?Sized + Sync;

    /// Applies update operations (e.g. `[("+", 4, 1)]`, field numbers
    /// 1-based as in Lua) to the tuple `key` finds in unique index `index`.
    fn update<K, O>(
        &self,
        space: &str,
        index: u32,
        key: &K,
        ops: &O,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        K: Serialize + ?Sized + Sync,
        O: Serialize + ?Sized + Sync;

    /// Deletes the tuple `key` finds in unique index `index` and returns
    /// it, if there was one (`serde::de::IgnoredAny` discards it).
    fn delete<K, R>(
        &self,
        space: &str,
        index: u32,
        key: &K,
    ) -> impl Future<Output = Result<Option<R>, Error>> + Send
    where
        K: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send;

    /// Inserts `tuple`, or applies `ops` to the tuple with its primary key
    /// (field numbers 1-based, as in Lua).
    fn upsert<T, O>(
        &self,
        space: &str,
        tuple: &T,
        ops: &O,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        T: Serialize + ?Sized + Sync,
        O: Serialize + ?Sized + Sync;
}
