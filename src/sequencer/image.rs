//! The images of a group's state written for followers behind the log (see
//! [`SnapshotStore::image`](super::snapshot::SnapshotStore::image)), and
//! how transfers share them.
//!
//! openraft asks for a snapshot each time it starts a transfer, and starts
//! one again after each failure: a follower cut off by a partition had its
//! leader write a new image every few hundred milliseconds. So the latest
//! image is kept, and every transfer that asks while its position is still
//! covered by the log gets it: a new reader of the finished file, or a wait
//! for the one being written. It is written once, by one thread, which stops
//! early if every transfer that wanted it is gone first. Its file is removed
//! once a newer image or a newer recorded position supersedes it; transfers
//! already reading it keep their open file.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::raft::SnapshotMeta;
use crate::sequencer::snapshot::SnapshotContent;

/// An image some transfer is waiting for. Its reads wait until it is
/// written; dropping every `Building` of an image stops its thread.
#[derive(Debug)]
pub struct Building {
    done: oneshot::Receiver<Result<SnapshotContent>>,
    _wanted: Arc<Wanted>,
}

impl Building {
    /// The finished image (blocking: not on a tokio worker).
    pub(super) fn wait(self) -> io::Result<SnapshotContent> {
        finished(self.done.blocking_recv())
    }

    /// The finished image, once ready.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<SnapshotContent>> {
        Pin::new(&mut self.done).poll(cx).map(finished)
    }
}

fn finished(
    received: std::result::Result<Result<SnapshotContent>, oneshot::error::RecvError>,
) -> io::Result<SnapshotContent> {
    match received {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(e)) => Err(io::Error::other(format!("snapshot image: {e}"))),
        Err(_) => Err(io::Error::other("the snapshot image thread ended without an image")),
    }
}

/// Shared by the transfers waiting for an image; when the last one goes,
/// its flag tells the image's thread to stop.
#[derive(Debug)]
pub(super) struct Wanted(Arc<AtomicBool>);

impl Drop for Wanted {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A finished image.
#[derive(Clone, Debug)]
pub(super) enum Written {
    /// In the snapshot directory.
    File(PathBuf),
    /// On engines without one (tests).
    Bytes(Arc<Vec<u8>>),
}

impl Written {
    /// The image's content for one more reader. A file is opened anew, so
    /// that each transfer reads at its own offset; its path is the shared
    /// image's, which no reader may store or remove.
    fn open(&self) -> Result<SnapshotContent> {
        match self {
            Written::File(path) => match File::open(path) {
                Ok(file) => Ok(SnapshotContent::File { file, path: path.clone() }),
                Err(e) => Err(Error::Storage(arbor_storage::Error::Io(format!(
                    "snapshot image {}: open: {e}",
                    path.display()
                )))),
            },
            Written::Bytes(bytes) => Ok(SnapshotContent::Bytes(bytes.as_ref().clone())),
        }
    }

    fn remove(&self) {
        if let Written::File(path) = self {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("could not remove the snapshot image {}: {e}", path.display());
                }
            }
        }
    }
}

/// How far an image got, and who waits for it.
#[derive(Default)]
pub(super) struct Progress {
    /// Set once the thread is done: the image, or why there is none.
    written: Option<std::result::Result<Written, String>>,
    waiting: Vec<oneshot::Sender<Result<SnapshotContent>>>,
}

/// One image: written once, read by any number of transfers.
struct Image {
    id: u64,
    meta: SnapshotMeta,
    progress: Arc<Mutex<Progress>>,
    wanted: Weak<Wanted>,
}

/// A group's latest image. Clones share it.
#[derive(Clone, Default)]
pub(super) struct Images(Arc<Mutex<Option<Image>>>);

/// Numbers images within the process.
static IMAGE_IDS: AtomicU64 = AtomicU64::new(0);

/// What the thread writing a new image reports to.
pub(super) struct Started {
    pub id: u64,
    pub progress: Arc<Mutex<Progress>>,
    /// Set when no transfer wants the image any more.
    pub stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Images {
    /// The latest image for one more transfer, if it is at `at_least` or
    /// past it and is still usable (written, or being written for someone).
    /// Otherwise `start` starts a new one and returns its meta, which
    /// becomes the latest (the one it replaces is removed once written).
    pub(super) fn get(
        &self,
        at_least: Option<&SnapshotMeta>,
        start: impl FnOnce(&Started) -> Result<SnapshotMeta>,
    ) -> Result<(SnapshotMeta, SnapshotContent)> {
        let mut latest = lock(&self.0);
        if let Some(image) = latest.as_ref() {
            let recent = at_least.is_none_or(|m| image.meta.last_log_id >= m.last_log_id);
            if recent {
                if let Some(content) = image.reader()? {
                    return Ok((image.meta.clone(), content));
                }
            }
        }
        if let Some(old) = latest.take() {
            old.forget();
        }
        let (tx, done) = oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let wanted = Arc::new(Wanted(stop.clone()));
        let progress = Arc::new(Mutex::new(Progress { written: None, waiting: vec![tx] }));
        let started = Started { id: IMAGE_IDS.fetch_add(1, Ordering::Relaxed), progress, stop };
        let meta = start(&started)?;
        *latest = Some(Image {
            id: started.id,
            meta: meta.clone(),
            progress: started.progress,
            wanted: Arc::downgrade(&wanted),
        });
        Ok((meta, SnapshotContent::Building(Building { done, _wanted: wanted })))
    }

    /// Called by an image's thread when it is done: hands the image to
    /// every transfer waiting for it, and removes it if it was superseded
    /// meanwhile.
    pub(super) fn finish(&self, id: u64, progress: &Mutex<Progress>, written: std::result::Result<Written, String>) {
        {
            let mut p = lock(progress);
            for waiting in p.waiting.drain(..) {
                let content = match &written {
                    Ok(image) => image.open(),
                    Err(why) => Err(Error::Unavailable(why.clone())),
                };
                let _ = waiting.send(content);
            }
            p.written = Some(written.clone());
        }
        let latest = lock(&self.0);
        if latest.as_ref().is_none_or(|image| image.id != id) {
            if let Ok(image) = &written {
                image.remove();
            }
        }
    }

    /// Drops the latest image: the state it was written from was replaced
    /// by an installed snapshot, which is what followers get from now on.
    pub(super) fn clear(&self) {
        if let Some(old) = lock(&self.0).take() {
            old.forget();
        }
    }

    /// Drops the latest image unless it is at `position` or past it: a
    /// newer recorded position lets the log be purged past it, so a
    /// follower that installed it would need another.
    pub(super) fn supersede_below(&self, position: &SnapshotMeta) {
        let mut latest = lock(&self.0);
        if latest.as_ref().is_some_and(|image| image.meta.last_log_id < position.last_log_id) {
            if let Some(old) = latest.take() {
                old.forget();
            }
        }
    }
}

impl Image {
    /// Content for one more transfer, or `None` if this image cannot serve
    /// one (its writing failed, or stopped because nobody wanted it).
    fn reader(&self) -> Result<Option<SnapshotContent>> {
        let mut p = lock(&self.progress);
        match &p.written {
            Some(Ok(image)) => image.open().map(Some),
            Some(Err(_)) => Ok(None),
            None => {
                let Some(wanted) = self.wanted.upgrade() else { return Ok(None) };
                let (tx, done) = oneshot::channel();
                p.waiting.push(tx);
                Ok(Some(SnapshotContent::Building(Building { done, _wanted: wanted })))
            }
        }
    }

    /// No longer the latest: its file goes now if written, else when its
    /// thread finishes (see [`Images::finish`]).
    fn forget(self) {
        if let Some(Ok(image)) = &lock(&self.progress).written {
            image.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("i{index}"),
        }
    }

    /// What a test's `start` saw of each image it was asked to write.
    type Threads = Vec<(u64, Arc<Mutex<Progress>>, Arc<AtomicBool>)>;

    fn start(threads: &mut Threads, index: u64) -> impl FnOnce(&Started) -> Result<SnapshotMeta> + '_ {
        move |s| {
            threads.push((s.id, s.progress.clone(), s.stop.clone()));
            Ok(meta(index))
        }
    }

    #[test]
    fn transfers_share_the_latest_image_until_it_fails_is_unwanted_or_superseded() {
        let tmp = tempfile::tempdir().unwrap();
        let file = |name: &str, body: &[u8]| {
            let path = tmp.path().join(name);
            std::fs::write(&path, body).unwrap();
            Written::File(path)
        };
        let images = Images::default();
        let mut threads = Threads::new();

        // Two transfers share one image; it stops once neither waits.
        let (m, first) = images.get(None, start(&mut threads, 5)).unwrap();
        let (same, second) = images.get(Some(&meta(5)), |_| panic!("shared")).unwrap();
        assert_eq!((m.clone(), same), (meta(5), meta(5)));
        drop(first);
        assert!(!threads[0].2.load(Ordering::Relaxed), "a transfer still waits");
        drop(second);
        assert!(threads[0].2.load(Ordering::Relaxed), "the thread is told to stop");

        // Unwanted before it was written: the next transfer gets a new one,
        // and the old one, written after all, is removed.
        let (_, third) = images.get(None, start(&mut threads, 6)).unwrap();
        assert_eq!(threads.len(), 2);
        let old = file("old.tmp", b"old");
        images.finish(threads[0].0, &threads[0].1, Ok(old.clone()));
        assert!(!tmp.path().join("old.tmp").exists());

        // Written: the waiting transfer gets it, and a later one reads the
        // file at once.
        images.finish(threads[1].0, &threads[1].1, Ok(file("new.tmp", b"image")));
        assert_eq!(third.into_bytes().unwrap(), b"image");
        let (_, fourth) = images.get(Some(&meta(6)), |_| panic!("shared")).unwrap();
        assert!(matches!(fourth, SnapshotContent::File { .. }), "{fourth:?}");
        assert_eq!(fourth.into_bytes().unwrap(), b"image");

        // A recorded position past it supersedes it; one at it does not.
        images.supersede_below(&meta(6));
        assert!(tmp.path().join("new.tmp").exists());
        images.supersede_below(&meta(7));
        assert!(!tmp.path().join("new.tmp").exists());

        // An image older than the recorded position is never handed out.
        let (_, fifth) = images.get(Some(&meta(7)), start(&mut threads, 8)).unwrap();
        let (_, _sixth) = images.get(Some(&meta(9)), start(&mut threads, 9)).unwrap();
        assert_eq!(threads.len(), 4);

        // A failed image fails its transfers, and is not handed out again.
        images.finish(threads[2].0, &threads[2].1, Err("disk full".to_string()));
        let err = fifth.into_bytes().unwrap_err().to_string();
        assert!(err.contains("disk full"), "{err}");
        images.finish(threads[3].0, &threads[3].1, Err("disk full".to_string()));
        let (_, _seventh) = images.get(None, start(&mut threads, 9)).unwrap();
        assert_eq!(threads.len(), 5);
    }
}
