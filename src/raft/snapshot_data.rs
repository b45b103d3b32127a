//! openraft's snapshot data type: what a leader streams to a follower in
//! chunks and a follower writes the chunks into. It is a file in the
//! node's snapshot directory (see [`crate::sequencer::snapshot`]), so a
//! snapshot is never held whole in memory to be sent or received; engines
//! without a directory (tests) use bytes in memory.

use std::io::{self, Cursor, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::sequencer::image::Building;
use crate::sequencer::SnapshotContent;

pub struct SnapshotData {
    body: Body,
    /// The file's path, for [`SnapshotData::into_content`].
    path: Option<PathBuf>,
}

enum Body {
    Memory(Cursor<Vec<u8>>),
    File(tokio::fs::File),
    /// An image still being written: becomes one of the others when done.
    /// A seek asked for meanwhile is started then.
    Building(Building, Option<SeekFrom>),
}

/// What both bodies are.
trait Data: AsyncRead + AsyncWrite + AsyncSeek + Unpin {}
impl<T: AsyncRead + AsyncWrite + AsyncSeek + Unpin> Data for T {}

impl From<SnapshotContent> for SnapshotData {
    fn from(content: SnapshotContent) -> Self {
        match content {
            SnapshotContent::Bytes(bytes) => SnapshotData { body: Body::Memory(Cursor::new(bytes)), path: None },
            SnapshotContent::File { file, path } => {
                SnapshotData { body: Body::File(tokio::fs::File::from_std(file)), path: Some(path) }
            }
            SnapshotContent::Building(building) => SnapshotData { body: Body::Building(building, None), path: None },
        }
    }
}

impl SnapshotData {
    /// The data, once every write to it has completed.
    pub async fn into_content(mut self) -> io::Result<SnapshotContent> {
        std::future::poll_fn(|cx| self.poll_built(cx)).await?;
        match (self.body, self.path) {
            (Body::Memory(cursor), _) => Ok(SnapshotContent::Bytes(cursor.into_inner())),
            (Body::File(mut file), Some(path)) => {
                file.flush().await?;
                Ok(SnapshotContent::File { file: file.into_std().await, path })
            }
            (Body::File(_), None) => unreachable!("file data is only made from a content with its path"),
            (Body::Building(..), _) => unreachable!("built above"),
        }
    }

    /// Waits for an image being built; then starts the seek asked for
    /// meanwhile, if any.
    fn poll_built(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Body::Building(building, seek) = &mut self.body else { return Poll::Ready(Ok(())) };
        let content = ready!(building.poll_done(cx))?;
        let seek = seek.take();
        // Read-only: the path of an image is never used.
        self.body = SnapshotData::from(content).body;
        if let Some(position) = seek {
            self.body_mut().start_seek(position)?;
        }
        Poll::Ready(Ok(()))
    }

    fn body_mut(&mut self) -> Pin<&mut dyn Data> {
        match &mut self.body {
            Body::Memory(cursor) => Pin::new(cursor),
            Body::File(file) => Pin::new(file),
            Body::Building(..) => unreachable!("callers wait for the image first"),
        }
    }

    /// The body, once built.
    fn poll_body(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<Pin<&mut dyn Data>>> {
        let this = self.get_mut();
        ready!(this.poll_built(cx))?;
        Poll::Ready(Ok(this.body_mut()))
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_body(cx))?.poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_body(cx))?.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_body(cx))?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_body(cx))?.poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    /// While an image is being built, the seek is kept and started once it
    /// is done ([`AsyncSeek::poll_complete`] waits for that).
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.body {
            Body::Building(_, seek) => {
                *seek = Some(position);
                Ok(())
            }
            _ => this.body_mut().start_seek(position),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        ready!(self.poll_body(cx))?.poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::*;

    /// openraft's chunked transfer seeks, then reads or writes: both bodies
    /// behave alike, and a file's writes are all in it once converted back.
    #[tokio::test]
    async fn chunks_written_at_offsets_read_back_from_memory_and_from_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("recv.tmp");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        for content in [SnapshotContent::Bytes(Vec::new()), SnapshotContent::File { file, path: path.clone() }] {
            let mut data = SnapshotData::from(content);
            data.write_all(b"hello ").await.unwrap();
            data.write_all(b"world").await.unwrap();
            data.seek(SeekFrom::Start(6)).await.unwrap();
            data.write_all(b"W").await.unwrap();
            assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), 11);
            data.seek(SeekFrom::Start(0)).await.unwrap();
            let mut read = String::new();
            data.read_to_string(&mut read).await.unwrap();
            assert_eq!(read, "hello World");
            assert_eq!(data.into_content().await.unwrap().into_bytes().unwrap(), b"hello World");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hello World");
    }
}
