//! The Rust client. It connects to any node, follows `NOT_LEADER`
//! redirections (the leader's address comes back in the error's metadata),
//! retries unavailable nodes with exponential backoff, and gives every write
//! a request id so that a retry after an unknown outcome executes once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), arbor::client::ClientError> {
//! use arbor::client::{op, Client, Txn};
//! let client = Client::connect(["127.0.0.1:7001"]).await?;
//! client.put("/users/alice", r#"{"age":30}"#).await?;
//! let alice = client.get("/users/alice").await?;
//! let txn = Txn::new().if_value("/users/alice", "=", r#"{"age":30}"#)?.then(op::put("/users/bob", "{}"));
//! let resp = client.txn(txn).await?;
//! # Ok(()) }
//! ```

mod pipe;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use arbor_proto as pb;
use arbor_proto::cluster_client::ClusterClient;
use arbor_proto::kv_call::Call;
use arbor_proto::kv_client::KvClient;
use arbor_proto::kv_reply::Reply as Answer;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::api::{CLUSTER_ID_HEADER, LEADER_ADDR_HEADER};
use pipe::Pipe;

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Status),
    /// No node could be reached before the deadline.
    #[error("no Arbor node answered within {timeout:?} (tried {endpoints}); last error: {last}")]
    Unreachable { timeout: Duration, endpoints: String, last: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// Sends `req` as a `Call::$kind` and takes the `Answer::$kind` reply (any
/// other kind of reply is the server's bug).
macro_rules! kv_call {
    ($client:expr, $kind:ident, $req:expr) => {
        match $client.kv(Call::$kind($req)).await? {
            Answer::$kind(r) => Ok(r),
            other => Err(unexpected(stringify!($kind), other)),
        }
    };
}

/// A reply of another kind than the call's: the server's bug.
fn unexpected(call: &str, reply: Answer) -> ClientError {
    ClientError::Status(Status::internal(format!("the server answered a {call} call with {reply:?}")))
}

/// `InvalidArgument` -> `INVALID_ARGUMENT`, as gRPC spells its codes.
fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Total time a call may take, retries included.
    pub timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Sent with every request; a node of another cluster refuses it.
    pub cluster_id: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            cluster_id: None,
        }
    }
}

/// A connection to an Arbor cluster. Cheap to share across tasks: calls
/// made concurrently go to a node together, on one `KvBatch` stream.
pub struct Client {
    endpoints: Vec<String>,
    options: ClientOptions,
    channels: Mutex<HashMap<String, Channel>>,
    /// Per node, the stream `Kv` calls go on (see [`pipe`]).
    pipes: Mutex<HashMap<String, Pipe>>,
    /// Where the next call goes first.
    preferred: Mutex<String>,
    client_id: u64,
    next_request: AtomicU64,
}

fn normalize(addr: &str) -> String {
    addr.trim().trim_start_matches("http://").to_string()
}

impl Client {
    /// A client of the cluster reachable at any of `endpoints`
    /// (`host:port`). Connections are made lazily.
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options<I, S>(endpoints: I, options: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<String> =
            endpoints.into_iter().map(|e| normalize(e.as_ref())).filter(|e| !e.is_empty()).collect();
        let Some(first) = endpoints.first().cloned() else {
            return Err(ClientError::InvalidArgument("no endpoints given".into()));
        };
        Ok(Client {
            endpoints,
            options,
            channels: Mutex::new(HashMap::new()),
            pipes: Mutex::new(HashMap::new()),
            preferred: Mutex::new(first),
            client_id: rand::random(),
            next_request: AtomicU64::new(1),
        })
    }

    /// A fresh request id for a write.
    pub fn request_id(&self) -> String {
        format!("{:016x}-{}", self.client_id, self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::InvalidArgument(format!("bad endpoint {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The stream to `addr` (opened on the current runtime if it has none
    /// or its runtime ended).
    fn pipe(&self, addr: &str, channel: Channel) -> Pipe {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        match pipes.get(addr) {
            Some(p) if p.is_open() => p.clone(),
            _ => {
                let p = Pipe::open(channel, self.cluster_id());
                pipes.insert(addr.to_string(), p.clone());
                p
            }
        }
    }

    fn cluster_id(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        self.options.cluster_id.as_ref().and_then(|c| c.parse().ok())
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(id) = self.cluster_id() {
            req.metadata_mut().insert(CLUSTER_ID_HEADER, id);
        }
        req
    }

    /// One `Kv` call with retries (every Kv call is idempotent: reads, and
    /// writes carrying a request id). It goes on the node's stream, except
    /// range reads (their replies can be large) and calls over
    /// [`pipe::MAX_PIPED_CALL_BYTES`], which go as unary calls.
    async fn kv(&self, call: Call) -> Result<Answer, ClientError> {
        let unary = matches!(call, Call::Range(_)) || call.encoded_len() > pipe::MAX_PIPED_CALL_BYTES;
        self.retry(true, |ch, addr| {
            let call = call.clone();
            async move {
                if unary {
                    self.unary(KvClient::new(ch), call).await
                } else {
                    self.pipe(&addr, ch).call(call).await
                }
            }
        })
        .await
    }

    /// `call` as its own unary RPC.
    async fn unary(&self, mut kv: KvClient<Channel>, call: Call) -> Result<Answer, Status> {
        Ok(match call {
            Call::Get(r) => Answer::Get(kv.get(self.request(r)).await?.into_inner()),
            Call::Range(r) => Answer::Range(kv.range(self.request(r)).await?.into_inner()),
            Call::Put(r) => Answer::Put(kv.put(self.request(r)).await?.into_inner()),
            Call::Delete(r) => Answer::Delete(kv.delete(self.request(r)).await?.into_inner()),
            Call::DeleteRange(r) => Answer::DeleteRange(kv.delete_range(self.request(r)).await?.into_inner()),
            Call::Txn(r) => Answer::Txn(kv.txn(self.request(r)).await?.into_inner()),
        })
    }

    /// Runs `call` against the preferred node, following redirections and
    /// retrying retryable errors until the deadline. `idempotent` calls
    /// (reads, writes with a request id) are also retried after an unknown
    /// outcome.
    async fn retry<T, F, Fut>(&self, idempotent: bool, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.options.timeout;
        let mut backoff = self.options.initial_backoff;
        let mut rotation = 0usize;
        let mut attempts = 0u32;
        // The last error a server answered, which says more than a timeout.
        let mut answered: Option<String> = None;
        loop {
            let addr = self.preferred.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // One attempt never outlives the call's deadline (a leader that
            // lost its quorum may hold a request indefinitely).
            let left = deadline.saturating_duration_since(Instant::now());
            let status = match tokio::time::timeout(left, call(self.channel(&addr)?, addr.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) => {
                    answered = Some(s.message().to_string());
                    s
                }
                Err(_) => Status::deadline_exceeded(format!(
                    "{addr} did not answer within the client timeout of {:?}; the outcome is unknown{}",
                    self.options.timeout,
                    answered.as_ref().map(|a| format!(" (earlier answer: {a})")).unwrap_or_default()
                )),
            };
            let redirect = status
                .metadata()
                .get(LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(normalize)
                .filter(|a| *a != addr);
            let retryable = match status.code() {
                Code::Unavailable | Code::Cancelled => true,
                Code::Unknown | Code::DeadlineExceeded => idempotent,
                _ => false,
            };
            if !retryable || Instant::now() >= deadline {
                return Err(if retryable {
                    ClientError::Unreachable {
                        timeout: self.options.timeout,
                        endpoints: self.endpoints.join(","),
                        last: status.message().to_string(),
                    }
                } else {
                    ClientError::Status(status)
                });
            }
            attempts += 1;
            // Follow a redirection at once the first time; back off when
            // redirections bounce (an election in progress) or nobody knows.
            if redirect.is_none() || attempts > 2 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.options.max_backoff);
            }
            let next = match redirect {
                Some(leader) => leader,
                None => {
                    rotation += 1;
                    self.endpoints[rotation % self.endpoints.len()].clone()
                }
            };
            *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) = next;
        }
    }

    /// A linearizable read of one key.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<pb::KeyValue>, ClientError> {
        let req = pb::GetRequest { key: key.as_ref().to_vec(), read: None };
        kv_call!(self, Get, req).map(|r: pb::GetResponse| r.kv)
    }

    /// A read of one key in any mode (see [`read`]); the response header's
    /// `read_stamp` is the stamp of the state it returns. Snapshot and
    /// bounded-staleness reads are served by whichever node the client
    /// talks to (leader or follower).
    pub async fn get_with(&self, key: impl AsRef<[u8]>, read: pb::ReadOptions) -> Result<pb::GetResponse, ClientError> {
        let req = pb::GetRequest { key: key.as_ref().to_vec(), read: Some(read) };
        kv_call!(self, Get, req)
    }

    /// Watches one key or every key under a prefix, from now
    /// (`start_after` = 0) or after a past stamp. See [`Watcher`].
    pub fn watch(&self, target: WatchTarget, start_after: u64) -> Watcher<'_> {
        let (key, prefix) = match target {
            WatchTarget::Key(k) => (k, Vec::new()),
            WatchTarget::Prefix(p) => (Vec::new(), p),
        };
        Watcher { client: self, req: pb::WatchRequest { key, prefix, start_after }, stream: None, resumes: 0 }
    }

    /// A range read (linearizable unless `req.read` says otherwise).
    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, ClientError> {
        kv_call!(self, Range, req)
    }

    /// Every key under `prefix` (up to `limit`, 0 = the server's maximum).
    pub async fn scan(&self, prefix: impl AsRef<[u8]>, limit: u32) -> Result<pb::RangeResponse, ClientError> {
        self.range(pb::RangeRequest { prefix: prefix.as_ref().to_vec(), limit, ..Default::default() }).await
    }

    /// The immediate children of a path, like a directory listing.
    pub async fn list(&self, path: impl AsRef<[u8]>) -> Result<pb::RangeResponse, ClientError> {
        let mut prefix = path.as_ref().to_vec();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        self.range(pb::RangeRequest { prefix, delimiter: "/".into(), keys_only: true, ..Default::default() }).await
    }

    /// Writes `value` at `key`; the response's `prev` is empty (see
    /// [`Client::put_prev`]).
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<pb::PutResponse, ClientError> {
        self.put_with(key, value, false).await
    }

    /// Like [`Client::put`], and the response's `prev` holds the record the
    /// put replaced (none if the key did not exist). Asking costs the old
    /// value's bytes in the reply and in the request's dedup record.
    pub async fn put_prev(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<pb::PutResponse, ClientError> {
        self.put_with(key, value, true).await
    }

    async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        prev_kv: bool,
    ) -> Result<pb::PutResponse, ClientError> {
        let req = pb::PutRequest {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            request_id: self.request_id(),
            prev_kv,
        };
        kv_call!(self, Put, req)
    }

    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<pb::DeleteResponse, ClientError> {
        let req = pb::DeleteRequest { key: key.as_ref().to_vec(), request_id: self.request_id() };
        kv_call!(self, Delete, req)
    }

    pub async fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<pb::DeleteRangeResponse, ClientError> {
        let req = pb::DeleteRangeRequest {
            prefix: prefix.as_ref().to_vec(),
            request_id: self.request_id(),
            ..Default::default()
        };
        kv_call!(self, DeleteRange, req)
    }

    /// Runs a transaction (built with [`Txn`]).
    pub async fn txn(&self, txn: Txn) -> Result<pb::TxnResponse, ClientError> {
        let mut req = txn.0;
        if req.request_id.is_empty() {
            req.request_id = self.request_id();
        }
        kv_call!(self, Txn, req)
    }

    /// Adds `delta` to a counter; returns the new value.
    pub async fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64, ClientError> {
        let resp = self.txn(Txn::new().then(op::increment(key, delta))).await?;
        match resp.results.into_iter().next().and_then(|r| r.result) {
            Some(pb::op_result::Result::Increment(i)) => Ok(i.value),
            other => Err(ClientError::InvalidArgument(format!("unexpected increment result {other:?}"))),
        }
    }

    /// Adds node `id` at `addr` to `group` (learner, catch-up, then voter).
    pub async fn add_node(&self, group: u64, id: u64, addr: &str) -> Result<pb::ChangeMembershipResponse, ClientError> {
        let change = pb::change_membership_request::Change::Add(pb::Member { id, addr: addr.to_string() });
        self.change_membership(pb::ChangeMembershipRequest { group_id: group, change: Some(change), force: false })
            .await
    }

    /// Removes node `id` from `group`; `force` skips the quorum check.
    pub async fn remove_node(
        &self,
        group: u64,
        id: u64,
        force: bool,
    ) -> Result<pb::ChangeMembershipResponse, ClientError> {
        let change = pb::change_membership_request::Change::Remove(id);
        self.change_membership(pb::ChangeMembershipRequest { group_id: group, change: Some(change), force }).await
    }

    async fn change_membership(
        &self,
        req: pb::ChangeMembershipRequest,
    ) -> Result<pb::ChangeMembershipResponse, ClientError> {
        let resp = self
            .retry(true, |ch, _| {
                let r = self.request(req.clone());
                async move { ClusterClient::new(ch).change_membership(r).await }
            })
            .await?;
        Ok(resp.into_inner())
    }

    /// Moves the leadership of `group` to the voter `to` (served by the
    /// group's leader; redirections are followed). Returns the new leader
    /// and its term.
    pub async fn transfer_leader(&self, group: u64, to: u64) -> Result<pb::TransferLeaderResponse, ClientError> {
        let req = pb::TransferLeaderRequest { group_id: group, to };
        let resp = self
            .retry(true, |ch, _| {
                let r = self.request(req);
                async move { ClusterClient::new(ch).transfer_leader(r).await }
            })
            .await?;
        Ok(resp.into_inner())
    }

    /// The status of the node the client talks to.
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        let resp = self
            .retry(true, |ch, _| {
                let r = self.request(pb::StatusRequest {});
                async move { ClusterClient::new(ch).status(r).await }
            })
            .await?;
        Ok(resp.into_inner())
    }

    /// The status of the node at `addr` (no redirection).
    pub async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        let ch = self.channel(&normalize(addr))?;
        let resp = tokio::time::timeout(
            self.options.timeout,
            ClusterClient::new(ch).status(self.request(pb::StatusRequest {})),
        )
        .await
        .map_err(|_| ClientError::Unreachable {
            timeout: self.options.timeout,
            endpoints: addr.to_string(),
            last: "timeout".into(),
        })?
        .map_err(ClientError::Status)?;
        Ok(resp.into_inner())
    }
}

/// What a watch covers.
#[derive(Clone, Debug)]
pub enum WatchTarget {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
}

/// A watch that survives broken streams: when a stream ends or fails with
/// a retryable error (node down, snapshot installed, watcher too slow), it
/// reconnects — to any node — and resumes after the last progress stamp it
/// received, so no change is missed or repeated.
pub struct Watcher<'a> {
    client: &'a Client,
    req: pb::WatchRequest,
    stream: Option<tonic::Streaming<pb::WatchResponse>>,
    resumes: u64,
}

impl Watcher<'_> {
    /// The next batch of changes, or a progress notification (no events).
    pub async fn next(&mut self) -> Result<pb::WatchResponse, ClientError> {
        loop {
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => {
                    let client = self.client;
                    let req = self.req.clone();
                    let s = client
                        .retry(true, |ch, _| {
                            let req = client.request(req.clone());
                            async move { KvClient::new(ch).watch(req).await }
                        })
                        .await?
                        .into_inner();
                    self.stream.insert(s)
                }
            };
            let status = match stream.message().await {
                Ok(Some(resp)) => {
                    self.req.start_after = self.req.start_after.max(resp.progress_stamp);
                    return Ok(resp);
                }
                Ok(None) => Status::unavailable("the watch stream ended"),
                Err(s) => s,
            };
            match status.code() {
                Code::Unavailable | Code::ResourceExhausted | Code::Cancelled | Code::Unknown => {
                    tracing::debug!(error = %status, after = self.req.start_after, "watch stream broke; resuming");
                    self.stream = None;
                    self.resumes += 1;
                    if status.code() == Code::Unavailable {
                        // Try the next node: this one may be gone.
                        let mut preferred = self.client.preferred.lock().unwrap_or_else(|e| e.into_inner());
                        let i = self.client.endpoints.iter().position(|e| *e == *preferred).map_or(0, |i| i + 1);
                        *preferred = self.client.endpoints[i % self.client.endpoints.len()].clone();
                    }
                }
                _ => return Err(ClientError::Status(status)),
            }
        }
    }

    /// The stamp the watch would resume after.
    pub fn position(&self) -> u64 {
        self.req.start_after
    }

    /// How many times the stream was re-established.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }
}

/// Read options for [`Client::get_with`] and [`pb::RangeRequest::read`].
pub mod read {
    use super::pb;

    /// The latest committed state, via the leader (the default).
    pub fn linearizable() -> pb::ReadOptions {
        pb::ReadOptions::default()
    }

    /// The state at HLC `stamp`, from any replica once it can prove it.
    pub fn snapshot_at(stamp: u64) -> pb::ReadOptions {
        pb::ReadOptions { mode: pb::read_options::Mode::SnapshotAt as i32, stamp, ..Default::default() }
    }

    /// The replica's latest state if no older than `max_staleness_ms`.
    pub fn bounded_staleness(max_staleness_ms: u64) -> pb::ReadOptions {
        pb::ReadOptions {
            mode: pb::read_options::Mode::BoundedStaleness as i32,
            max_staleness_ms,
            ..Default::default()
        }
    }
}

/// Builders of transaction ops.
pub mod op {
    use super::pb;
    use pb::op::Op;

    fn wrap(op: Op) -> pb::Op {
        pb::Op { op: Some(op) }
    }
    pub fn get(key: impl AsRef<[u8]>) -> pb::Op {
        wrap(Op::Get(pb::GetRequest { key: key.as_ref().to_vec(), read: None }))
    }
    fn put_op(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, prev_kv: bool) -> pb::Op {
        wrap(Op::Put(pb::PutOp { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), prev_kv }))
    }
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> pb::Op {
        put_op(key, value, false)
    }
    /// A put whose result carries the record it replaced (`prev`).
    pub fn put_prev(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> pb::Op {
        put_op(key, value, true)
    }
    pub fn delete(key: impl AsRef<[u8]>) -> pb::Op {
        wrap(Op::Delete(pb::DeleteOp { key: key.as_ref().to_vec() }))
    }
    pub fn delete_prefix(prefix: impl AsRef<[u8]>) -> pb::Op {
        wrap(Op::DeleteRange(pb::DeleteRangeOp { prefix: prefix.as_ref().to_vec(), ..Default::default() }))
    }
    pub fn scan(prefix: impl AsRef<[u8]>, limit: u32) -> pb::Op {
        wrap(Op::Range(pb::RangeRequest { prefix: prefix.as_ref().to_vec(), limit, ..Default::default() }))
    }
    pub fn increment(key: impl AsRef<[u8]>, delta: i64) -> pb::Op {
        wrap(Op::Increment(pb::IncrementOp { key: key.as_ref().to_vec(), delta }))
    }
    pub fn append(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> pb::Op {
        wrap(Op::Append(pb::AppendOp { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), prev_kv: false }))
    }
}

/// A transaction builder: compares, then `then` ops (all compares held) or
/// `otherwise` ops.
#[derive(Clone, Debug, Default)]
pub struct Txn(pub pb::TxnRequest);

fn cmp_op(op: &str) -> Result<pb::compare::Op, ClientError> {
    Ok(match op {
        "=" | "==" => pb::compare::Op::Equal,
        "!=" => pb::compare::Op::NotEqual,
        "<" => pb::compare::Op::Less,
        ">" => pb::compare::Op::Greater,
        other => {
            return Err(ClientError::InvalidArgument(format!("unknown compare operator {other:?} (use = != < >)")))
        }
    })
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Compare the value of `key` (`op` is one of `= != < >`).
    pub fn if_value(mut self, key: impl AsRef<[u8]>, op: &str, value: impl AsRef<[u8]>) -> Result<Self, ClientError> {
        self.0.compare.push(pb::Compare {
            key: key.as_ref().to_vec(),
            target: pb::compare::Target::Value as i32,
            op: cmp_op(op)? as i32,
            value: value.as_ref().to_vec(),
            ..Default::default()
        });
        Ok(self)
    }

    /// Compare the version of `key` (0 when missing).
    pub fn if_version(mut self, key: impl AsRef<[u8]>, op: &str, version: u64) -> Result<Self, ClientError> {
        self.0.compare.push(pb::Compare {
            key: key.as_ref().to_vec(),
            target: pb::compare::Target::Version as i32,
            op: cmp_op(op)? as i32,
            version,
            ..Default::default()
        });
        Ok(self)
    }

    /// Require `key` to exist (or not).
    pub fn if_exists(mut self, key: impl AsRef<[u8]>, exists: bool) -> Self {
        self.0.compare.push(pb::Compare {
            key: key.as_ref().to_vec(),
            target: pb::compare::Target::Exists as i32,
            op: pb::compare::Op::Equal as i32,
            exists,
            ..Default::default()
        });
        self
    }

    pub fn then(mut self, op: pb::Op) -> Self {
        self.0.success.push(op);
        self
    }

    pub fn otherwise(mut self, op: pb::Op) -> Self {
        self.0.failure.push(op);
        self
    }

    /// Sets the request id (by default the client assigns one).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.0.request_id = id.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_grpc_code() {
        let e = ClientError::Status(Status::invalid_argument("key is empty"));
        assert_eq!(e.to_string(), "INVALID_ARGUMENT: key is empty");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }

    #[test]
    fn transaction_builder_rejects_unknown_operators() {
        assert!(Txn::new().if_value("/a", "~", "x").is_err());
        let t = Txn::new().if_version("/a", ">", 2).unwrap().if_exists("/b", false).then(op::get("/a"));
        assert_eq!(t.0.compare.len(), 2);
        assert_eq!(t.0.success.len(), 1);
    }
}
