//! Watches: the changes a replica applies to a key range, in commit order,
//! from now or resumed after a past stamp.
//!
//! A watcher subscribes to its group's feed (every applied epoch's changes,
//! published by the state machine after the epoch's batch is durable) and
//! *then* fixes its starting point, so no epoch falls between the two:
//!
//! - from now: the replica's closed timestamp `c`; feed epochs at or below
//!   `c` are skipped;
//! - after a past stamp `s`: one engine snapshot gives the applied stamp `c`
//!   and every stored version in the range with `s < stamp <= c` (the
//!   replay, in commit order); feed epochs at or below `c` are skipped.
//!
//! Every batch sent carries a progress stamp: all changes at or below it
//! have been sent. A client that reconnects with `start_after` = the last
//! progress stamp it received misses nothing and sees nothing twice, on any
//! replica. One epoch's changes always travel in one batch.
//!
//! A watcher that falls more than [`WATCH_FEED_CAPACITY`] epochs behind (a
//! slow client) is cancelled with an error naming the stamp to resume from,
//! rather than buffering without bound; so is one on a replica that
//! installs a snapshot (its feed has a hole; the versions came with the
//! snapshot, so resuming works).
//!
//! [`WATCH_FEED_CAPACITY`]: crate::sequencer::apply::WATCH_FEED_CAPACITY

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use arbor_storage::{Direction, Engine, ReadView};
use tokio::sync::{broadcast, mpsc};

use crate::error::{Error, Result};
use crate::keys;
use crate::sequencer::apply::read_applied;
use crate::sequencer::Feed;
use crate::server::Node;
use crate::tree::{stored_position, stored_record, KeyRange, Record};

/// One change: the key's new record, or `None` for a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub key: Vec<u8>,
    pub record: Option<Record>,
    pub stamp: u64,
}

/// What a watcher receives: changes (possibly none) and a progress stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<Event>,
    pub progress: u64,
}

/// Every stored version in `range` (held by `group`) with `after < stamp <=
/// upto`, in commit order, one batch per stamp. Each is either its key's
/// current version or one that a later write superseded, so in the group's
/// history after `after`.
pub fn replay(view: &dyn ReadView, group: u64, range: &KeyRange, after: u64, upto: u64) -> Result<Vec<Batch>> {
    let mut found: Vec<(u64, u64, Event)> = Vec::new();
    let mut take = |key: Vec<u8>, stored: &[u8]| -> Result<()> {
        let (stamp, pos) = stored_position(stored)?;
        if stamp > after && stamp <= upto {
            found.push((stamp, pos, Event { key, record: stored_record(stored)?, stamp }));
        }
        Ok(())
    };
    let (lo, hi) = keys::current_bounds(&range.start, &range.end);
    for item in view.scan(Bound::Included(lo), Bound::Excluded(hi), Direction::Forward) {
        let (k, v) = item?;
        take(keys::decode_current(&k).map_err(corrupt)?.to_vec(), &v)?;
    }
    let (lo, hi) = (keys::history_after(group, after), keys::history_prefix(group + 1));
    for item in view.scan(Bound::Included(lo), Bound::Excluded(hi), Direction::Forward) {
        let (k, v) = item?;
        let (_, _, key) = keys::decode_history(&k).map_err(corrupt)?;
        if range.contains(&key) {
            take(key, &v)?;
        }
    }
    // Commit order is (stamp, position in the epoch).
    found.sort_by_key(|(stamp, pos, _)| (*stamp, *pos));
    let mut batches: Vec<Batch> = Vec::new();
    for (stamp, _, event) in found {
        match batches.last_mut() {
            Some(b) if b.progress == stamp => b.events.push(event),
            _ => batches.push(Batch { events: vec![event], progress: stamp }),
        }
    }
    Ok(batches)
}

/// Streams the changes of `range` (held by `group`) into `out` until the
/// receiver goes away or an error ends the watch (sent as the last item).
pub async fn run(node: Arc<Node>, group: u64, range: KeyRange, start_after: u64, out: mpsc::Sender<Result<Batch>>) {
    if let Err(e) = stream(&node, group, &range, start_after, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

async fn stream(
    node: &Node,
    group: u64,
    range: &KeyRange,
    start_after: u64,
    out: &mpsc::Sender<Result<Batch>>,
) -> Result<()> {
    let shared = node.group(group)?.shared.clone();
    let mut feed = shared.feed.subscribe();
    let (mut seen, replayed) = if start_after == 0 {
        (*shared.closed.borrow(), Vec::new())
    } else {
        let engine = node.engine.clone();
        let range = range.clone();
        tokio::task::spawn_blocking(move || -> Result<(u64, Vec<Batch>)> {
            let view = engine.snapshot();
            let applied = read_applied(view.as_ref(), group)?;
            if start_after < applied.gc_horizon {
                return Err(Error::OutOfRange { group, requested: start_after, oldest: applied.gc_horizon });
            }
            Ok((applied.stamp.max(start_after), replay(view.as_ref(), group, &range, start_after, applied.stamp)?))
        })
        .await
        .map_err(|e| Error::Fatal(e.to_string()))??
    };
    for batch in replayed {
        if out.send(Ok(batch)).await.is_err() {
            return Ok(());
        }
    }
    // Tell the client where it starts.
    if out.send(Ok(Batch { events: Vec::new(), progress: seen })).await.is_err() {
        return Ok(());
    }
    let mut progress = tokio::time::interval(Duration::from_millis(node.config.reads.watch_progress_ms));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    progress.tick().await;
    // A stopping node ends its watches rather than hold its graceful
    // shutdown: the client's Watcher resumes on another node.
    let stopping = node.stopping();
    tokio::pin!(stopping);
    loop {
        let batch = tokio::select! {
            _ = out.closed() => return Ok(()),
            () = &mut stopping => {
                return Err(Error::Unavailable(format!(
                    "the node is shutting down; resume the watch on another node with start_after = {seen}"
                )))
            }
            _ = progress.tick() => Batch { events: Vec::new(), progress: seen },
            item = feed.recv() => match item {
                Ok(Feed::Epoch(epoch)) => {
                    if epoch.stamp <= seen {
                        continue;
                    }
                    seen = epoch.stamp;
                    let events: Vec<Event> = epoch
                        .changes
                        .iter()
                        .filter(|(key, _)| range.contains(key))
                        .map(|(key, record)| Event { key: key.clone(), record: record.clone(), stamp: epoch.stamp })
                        .collect();
                    if events.is_empty() {
                        continue;
                    }
                    Batch { events, progress: seen }
                }
                Ok(Feed::Reset { .. }) => {
                    return Err(Error::Unavailable(format!(
                        "the replica installed a snapshot of group {group}; resume the watch with start_after = {seen}"
                    )))
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Err(Error::Overloaded(format!(
                        "the watcher fell {n} epochs behind (at most {} are buffered); resume with start_after = {seen}",
                        crate::sequencer::apply::WATCH_FEED_CAPACITY
                    )))
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Unavailable(format!("group {group} stopped on this node")))
                }
            },
        };
        if out.send(Ok(batch)).await.is_err() {
            return Ok(());
        }
    }
}

fn corrupt(e: arbor_storage::keycode::DecodeError) -> Error {
    Error::Corruption(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{put_versions, VersionedTree};
    use arbor_storage::{Durability, Memory, WriteBatch};

    fn rec(v: &str) -> Record {
        Record { value: v.as_bytes().to_vec().into(), version: 1, create_stamp: 1, mod_stamp: 1 }
    }

    #[test]
    fn replay_is_in_commit_order_grouped_by_epoch_and_bounded() {
        let mem = Memory::new();
        let versions: [(&[u8], u64, u64, Option<Record>); 7] = [
            (b"/w/b", 10, 0, Some(rec("b1"))),
            (b"/w/a", 10, 1, Some(rec("a1"))),
            (b"/w/a", 20, 0, None),
            (b"/x", 20, 1, Some(rec("x"))),
            (b"/w/c", 20, 3, Some(rec("c1"))),
            (b"/w/a", 30, 0, Some(rec("a2"))),
            (b"/x", 30, 1, Some(rec("x2"))),
        ];
        // One epoch per stamp, as the state machine writes them.
        for stamp in [10, 20, 30] {
            let mut wb = WriteBatch::new();
            let epoch = versions.iter().filter(|v| v.1 == stamp).map(|(k, _, p, r)| (*p, *k, r.as_ref()));
            put_versions(1, stamp, epoch, |k| VersionedTree::latest(&mem).current(k), &mut wb).unwrap();
            mem.write(wb, Durability::Sync).unwrap();
        }
        let got = replay(&mem, 1, &KeyRange::prefix(b"/w/"), 5, 25).unwrap();
        let flat: Vec<(u64, &[u8], bool)> = got
            .iter()
            .flat_map(|b| b.events.iter().map(|e| (b.progress, e.key.as_slice(), e.record.is_some())))
            .collect();
        assert_eq!(flat, [(10, &b"/w/b"[..], true), (10, b"/w/a", true), (20, b"/w/a", false), (20, b"/w/c", true)]);
        assert_eq!(got.len(), 2, "one batch per epoch");
        assert!(replay(&mem, 1, &KeyRange::prefix(b"/w/"), 30, 40).unwrap().is_empty(), "nothing after 30");
        let all = replay(&mem, 1, &KeyRange::prefix(b"/"), 0, 30).unwrap();
        let count: Vec<usize> = all.iter().map(|b| b.events.len()).collect();
        assert_eq!(count, [2, 3, 2], "every version, current or superseded, once");
    }
}
