//! Read-index batching: concurrent linearizable reads of a group share one
//! leadership confirmation.
//!
//! A linearizable read needs a read index taken *after* the read arrived:
//! the leader confirms with a quorum that it still leads, and the read
//! waits until the state machine applied everything committed before that.
//! One confirmation (a heartbeat round) per read makes N concurrent reads
//! cost N rounds. Here a read joins the queue of the next round instead:
//! a round takes every read queued when it *starts*, so each read is served
//! by a confirmation that began after it arrived — exactly the guarantee of
//! its own round — and reads arriving during a round wait for the next one.
//! This is etcd's ReadIndex batching.
//!
//! The core is generic over the confirmation (`confirm`), so it is tested
//! without a Raft group.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Waiter<E> = oneshot::Sender<Result<(), E>>;

/// Queues reads for the next confirmation round. Cheap to clone.
pub struct ReadBarrier<E> {
    tx: mpsc::UnboundedSender<Waiter<E>>,
}

impl<E> Clone for ReadBarrier<E> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<E: Clone + Send + 'static> ReadBarrier<E> {
    /// Starts the round loop; `confirm` runs one confirmation. The loop
    /// ends when every `ReadBarrier` handle is dropped.
    pub fn spawn<F, Fut>(mut confirm: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter<E>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut round = vec![first];
                while let Ok(w) = rx.try_recv() {
                    round.push(w);
                }
                let result = confirm().await;
                for w in round {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Waits for a confirmation that started after this call; `None` if the
    /// loop is gone (the group is shutting down).
    pub async fn wait(&self) -> Option<Result<(), E>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_share_a_round_and_late_ones_wait_for_the_next() {
        let rounds = Arc::new(AtomicU64::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(0u64);
        let r = rounds.clone();
        // Round n starts, then waits until the test lets it finish.
        let barrier = ReadBarrier::<String>::spawn(move || {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            let mut gate = gate_rx.clone();
            async move {
                gate.wait_for(|&open| open >= n).await.map_err(|e| e.to_string())?;
                Ok(())
            }
        });
        let first = tokio::spawn({
            let b = barrier.clone();
            async move { b.wait().await }
        });
        while rounds.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Round 1 is under way: these three arrived after it started.
        let late: Vec<_> = (0..3)
            .map(|_| {
                let b = barrier.clone();
                tokio::spawn(async move { b.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate_tx.send_replace(1);
        assert_eq!(first.await.unwrap(), Some(Ok(())));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(late.iter().all(|h| !h.is_finished()), "a read that arrived mid-round waits for the next round");
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "one round for all three");
        gate_tx.send_replace(2);
        for h in late {
            assert_eq!(h.await.unwrap(), Some(Ok(())));
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_round_fails_every_read_in_it() {
        let barrier = ReadBarrier::<String>::spawn(|| async { Err("not the leader".to_string()) });
        let (a, b) = tokio::join!(barrier.wait(), barrier.wait());
        assert_eq!(a, Some(Err("not the leader".to_string())));
        assert_eq!(b, Some(Err("not the leader".to_string())));
    }
}
