//! [`ArborTarget`]: the workloads expressed with Arbor's own client. Each
//! connection is one [`Client`] (its own HTTP/2 channel per node, following
//! the leader); logical clients share them round-robin.

use std::time::Duration;

use crate::bench::{BenchError, OpError, Target, VERSION_BOUND};
use crate::client::{op, Client, ClientOptions, Txn};

pub struct ArborTarget {
    clients: Vec<Client>,
    endpoints: Vec<String>,
}

impl ArborTarget {
    /// `connections` clients of the cluster at `endpoints`; each call may
    /// take `op_timeout`, redirections and retries included.
    pub fn connect(endpoints: &[String], connections: usize, op_timeout: Duration) -> Result<Self, BenchError> {
        let clients = (0..connections.max(1))
            .map(|_| {
                Client::with_options(endpoints, ClientOptions { timeout: op_timeout, ..Default::default() })
                    .map_err(|e| BenchError::Connect { system: "arbor", message: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ArborTarget { clients, endpoints: endpoints.to_vec() })
    }

    fn client(&self, conn: usize) -> &Client {
        &self.clients[conn % self.clients.len()]
    }
}

impl Target for ArborTarget {
    fn system(&self) -> &'static str {
        "arbor"
    }

    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn connections(&self) -> usize {
        self.clients.len()
    }

    async fn put(&self, conn: usize, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.client(conn).put(key, value).await.map(|_| ()).map_err(OpError::new)
    }

    async fn get(&self, conn: usize, key: &[u8]) -> Result<bool, OpError> {
        self.client(conn).get(key).await.map(|kv| kv.is_some()).map_err(OpError::new)
    }

    async fn txn(&self, conn: usize, keys: &[Vec<u8>], value: &[u8]) -> Result<(), OpError> {
        let mut txn = Txn::new();
        for k in keys {
            txn = txn.if_version(k, "<", VERSION_BOUND).map_err(OpError::new)?;
        }
        for k in keys {
            txn = txn.then(op::put(k, value));
        }
        let resp = self.client(conn).txn(txn).await.map_err(OpError::new)?;
        if !resp.succeeded {
            return Err(OpError::new("transaction compares did not hold"));
        }
        Ok(())
    }

    async fn append(&self, conn: usize, key: &[u8], value: &[u8]) -> Result<u32, OpError> {
        let resp = self.client(conn).txn(Txn::new().then(op::append(key, value))).await.map_err(OpError::new)?;
        if !resp.succeeded {
            return Err(OpError::new("append did not apply"));
        }
        Ok(0)
    }
}
