//! openraft's snapshot data type: what a leader streams to a follower in
//! chunks and a follower writes the chunks into. It is a file in the
//! node's snapshot directory (see [`crate::sequencer::snapshot`]), so a
//! snapshot is never held whole in memory to be sent or received; engines
//! without a directory (tests) use bytes in memory.

use std::io::{self, Cursor, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::sequencer::SnapshotContent;

pub struct SnapshotData {
    body: Body,
    /// The file's path, for [`SnapshotData::into_content`].
    path: Option<PathBuf>,
}

enum Body {
    Memory(Cursor<Vec<u8>>),
    File(tokio::fs::File),
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
        }
    }
}

impl SnapshotData {
    /// The data, once every write to it has completed.
    pub async fn into_content(self) -> io::Result<SnapshotContent> {
        match (self.body, self.path) {
            (Body::Memory(cursor), _) => Ok(SnapshotContent::Bytes(cursor.into_inner())),
            (Body::File(mut file), Some(path)) => {
                file.flush().await?;
                Ok(SnapshotContent::File { file: file.into_std().await, path })
            }
            (Body::File(_), None) => unreachable!("file data is only made from a content with its path"),
        }
    }

    fn body(self: Pin<&mut Self>) -> Pin<&mut dyn Data> {
        match &mut self.get_mut().body {
            Body::Memory(cursor) => Pin::new(cursor),
            Body::File(file) => Pin::new(file),
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.body().poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.body().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.body().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.body().poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        self.body().start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        self.body().poll_complete(cx)
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
