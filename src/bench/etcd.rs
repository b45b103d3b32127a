//! `EtcdTarget`: the same workloads in etcd's KV/Txn API, through the
//! `etcd-client` crate (built only with the `etcd-client` feature: its build
//! script needs `protoc`, see `scripts/bench-vs-etcd.sh`).
//!
//! - put: `Put`. get: `Range` of one key, linearizable (etcd's default).
//! - get-follower: `Range` of one key, serializable: the member the request
//!   reaches answers from its own state, however stale (etcd has no bound).
//! - txn: `Txn` with `version(k) < 2^62` on each key, then a `Put` per key.
//! - append: etcd has no append, so the client does what an etcd user
//!   would: read the value and its `mod_revision`, then a `Txn` that puts
//!   old + new if `mod_revision` is unchanged, else returns the current
//!   value (`or_else get`), and tries again with it.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::bench::{BenchError, OpError, Target, VERSION_BOUND};

/// Compare-and-swap attempts of one append before it counts as an error.
const MAX_APPEND_ATTEMPTS: u32 = 100;

pub struct EtcdTarget {
    clients: Vec<Client>,
    endpoints: Vec<String>,
}

impl EtcdTarget {
    /// `connections` clients, each balancing over every endpoint (as
    /// etcd's own clients do); each request may take `op_timeout`.
    pub async fn connect(endpoints: &[String], connections: usize, op_timeout: Duration) -> Result<Self, BenchError> {
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| if e.starts_with("http://") { e.clone() } else { format!("http://{e}") })
            .collect();
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let options = ConnectOptions::new().with_timeout(op_timeout).with_connect_timeout(Duration::from_secs(2));
            let client = Client::connect(&urls, Some(options))
                .await
                .map_err(|e| BenchError::Connect { system: "etcd", message: e.to_string() })?;
            clients.push(client);
        }
        Ok(EtcdTarget { clients, endpoints: endpoints.to_vec() })
    }

    fn kv(&self, conn: usize) -> etcd_client::KvClient {
        self.clients[conn % self.clients.len()].kv_client()
    }
}

impl Target for EtcdTarget {
    fn system(&self) -> &'static str {
        "etcd"
    }

    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn connections(&self) -> usize {
        self.clients.len()
    }

    async fn put(&self, conn: usize, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.kv(conn).put(key, value, None).await.map(|_| ()).map_err(OpError::new)
    }

    async fn get(&self, conn: usize, key: &[u8]) -> Result<bool, OpError> {
        let resp = self.kv(conn).get(key, None).await.map_err(OpError::new)?;
        Ok(!resp.kvs().is_empty())
    }

    async fn get_follower(&self, conn: usize, key: &[u8], _max_staleness: Duration) -> Result<bool, OpError> {
        let resp = self.kv(conn).get(key, Some(GetOptions::new().with_serializable())).await.map_err(OpError::new)?;
        Ok(!resp.kvs().is_empty())
    }

    async fn txn(&self, conn: usize, keys: &[Vec<u8>], value: &[u8]) -> Result<(), OpError> {
        let compares: Vec<Compare> =
            keys.iter().map(|k| Compare::version(k.clone(), CompareOp::Less, VERSION_BOUND as i64)).collect();
        let puts: Vec<TxnOp> = keys.iter().map(|k| TxnOp::put(k.clone(), value, None)).collect();
        let resp = self.kv(conn).txn(Txn::new().when(compares).and_then(puts)).await.map_err(OpError::new)?;
        if !resp.succeeded() {
            return Err(OpError::new("transaction compares did not hold"));
        }
        Ok(())
    }

    async fn append(&self, conn: usize, key: &[u8], value: &[u8]) -> Result<u32, OpError> {
        let mut kv = self.kv(conn);
        let current = kv.get(key, None).await.map_err(OpError::new)?;
        // (value, mod_revision) as last seen; a missing key has revision 0.
        let mut seen = current.kvs().first().map(|k| (k.value().to_vec(), k.mod_revision())).unwrap_or_default();
        for attempt in 0..MAX_APPEND_ATTEMPTS {
            let mut next = seen.0.clone();
            next.extend_from_slice(value);
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, seen.1)])
                .and_then([TxnOp::put(key, next, None)])
                .or_else([TxnOp::get(key, None)]);
            let resp = kv.txn(txn).await.map_err(OpError::new)?;
            if resp.succeeded() {
                return Ok(attempt);
            }
            seen = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => Some(g.kvs().first().map(|k| (k.value().to_vec(), k.mod_revision()))),
                    _ => None,
                })
                .flatten()
                .unwrap_or_default();
        }
        Err(OpError::new(format!("append lost {MAX_APPEND_ATTEMPTS} compare-and-swap races in a row")))
    }
}
