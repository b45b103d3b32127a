//! [`ArborTarget`]: the workloads expressed with Arbor's own client. Each
//! connection is one [`Client`] (its own HTTP/2 channel per node, following
//! the leader); logical clients share them round-robin. The `get-follower`
//! reads go through a second client per connection that knows one node
//! only ([`reader_endpoint`]), so they are spread over every replica
//! instead of following the leader.

use std::time::Duration;

use crate::bench::{BenchError, OpError, Target, VERSION_BOUND};
use crate::client::{op, read, Client, ClientOptions, Txn};

pub struct ArborTarget {
    clients: Vec<Client>,
    /// Per connection, a client of [`reader_endpoint`] alone.
    readers: Vec<Client>,
    endpoints: Vec<String>,
}

/// The node connection `conn` reads from in the `get-follower` workload:
/// the connections take the endpoints in turn.
pub fn reader_endpoint(endpoints: &[String], conn: usize) -> &str {
    &endpoints[conn % endpoints.len()]
}

impl ArborTarget {
    /// `connections` clients of the cluster at `endpoints`; each call may
    /// take `op_timeout`, redirections and retries included.
    pub fn connect(endpoints: &[String], connections: usize, op_timeout: Duration) -> Result<Self, BenchError> {
        if endpoints.is_empty() {
            return Err(BenchError::Connect { system: "arbor", message: "no endpoint given".into() });
        }
        let client = |endpoints: &[&str]| {
            Client::with_options(endpoints, ClientOptions { timeout: op_timeout, ..Default::default() })
                .map_err(|e| BenchError::Connect { system: "arbor", message: e.to_string() })
        };
        let all: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let (mut clients, mut readers) = (Vec::new(), Vec::new());
        for conn in 0..connections.max(1) {
            clients.push(client(&all)?);
            readers.push(client(&[reader_endpoint(endpoints, conn)])?);
        }
        Ok(ArborTarget { clients, readers, endpoints: endpoints.to_vec() })
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

    async fn get_follower(&self, conn: usize, key: &[u8], max_staleness: Duration) -> Result<bool, OpError> {
        let bound = read::bounded_staleness(max_staleness.as_millis() as u64);
        let reader = &self.readers[conn % self.readers.len()];
        reader.get_with(key, bound).await.map(|r| r.kv.is_some()).map_err(OpError::new)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_reads_take_the_endpoints_in_turn() {
        let eps: Vec<String> = ["a:1", "b:2", "c:3"].iter().map(|e| e.to_string()).collect();
        let picked: Vec<&str> = (0..5).map(|conn| reader_endpoint(&eps, conn)).collect();
        assert_eq!(picked, ["a:1", "b:2", "c:3", "a:1", "b:2"]);
        let target = ArborTarget::connect(&eps, 4, Duration::from_secs(1)).unwrap();
        assert_eq!((target.clients.len(), target.readers.len()), (4, 4));
        assert!(ArborTarget::connect(&[], 4, Duration::from_secs(1)).is_err(), "no endpoint");
    }
}
