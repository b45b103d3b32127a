//! A [`Pipe`]: the client's `KvBatch` stream to one node. Callers hand it
//! calls; one task per pipe sends every call queued at that moment as one
//! message, and gives each reply back to its caller by id. A broken stream
//! fails the calls it carried (their outcome is unknown, so they are
//! retried like any unary call that failed so) and the next call opens a
//! new one.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::api::batch::{call_status, MAX_CALLS_PER_MESSAGE};
use crate::api::CLUSTER_ID_HEADER;
use arbor_proto as pb;
use arbor_proto::kv_batch_client::KvBatchClient;
use arbor_proto::kv_call::Call;
use arbor_proto::kv_reply::Reply as Answer;

/// Calls whose encoding is larger than this go as unary calls, so that no
/// single call can make a message the server refuses for its size.
pub const MAX_PIPED_CALL_BYTES: usize = 64 << 10;
/// A message is sent once its calls take this many bytes (well under the
/// server's 4 MiB per message).
const MESSAGE_BYTES: usize = 256 << 10;
/// Calls waiting for the pipe's task before callers wait too.
const QUEUE: usize = 1024;

struct Pending {
    call: Call,
    reply: oneshot::Sender<Result<Answer, Status>>,
}

/// A handle on one node's stream; clones share it.
#[derive(Clone)]
pub(super) struct Pipe {
    queue: mpsc::Sender<Pending>,
}

impl Pipe {
    /// Starts the pipe's task on the current runtime. The stream itself
    /// opens with the first call.
    pub fn open(channel: Channel, cluster_id: Option<MetadataValue<Ascii>>) -> Pipe {
        let (queue, calls) = mpsc::channel(QUEUE);
        tokio::spawn(drive(channel, cluster_id, calls));
        Pipe { queue }
    }

    /// False once the pipe's task has ended (its runtime shut down).
    pub fn is_open(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Sends `call` and waits for its reply (or the status it failed with).
    pub async fn call(&self, call: Call) -> Result<Answer, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { call, reply })
            .await
            .map_err(|_| Status::unavailable("the client's Kv stream had stopped; the call was not sent"))?;
        answer.await.map_err(|_| {
            Status::unknown("the client's Kv stream stopped before the call's reply; its outcome is unknown")
        })?
    }
}

/// The pipe's task: one stream at a time, opened for the first call after
/// the previous one ended; returns once every [`Pipe`] is dropped and
/// every call sent has its reply.
async fn drive(channel: Channel, cluster_id: Option<MetadataValue<Ascii>>, mut queue: mpsc::Receiver<Pending>) {
    let mut waiting = Waiting::default();
    while let Some(first) = queue.recv().await {
        // Unbounded: what it holds is bounded by the callers waiting, and
        // the task must never stop reading replies to send calls.
        let (send, calls) = mpsc::unbounded_channel();
        let _ = send.send(waiting.gather(first, &mut queue));
        let mut req = Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(calls));
        if let Some(id) = &cluster_id {
            req.metadata_mut().insert(CLUSTER_ID_HEADER, id.clone());
        }
        let mut client = KvBatchClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
        let mut replies = match client.call(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // The first calls may have reached the node before the
                // stream failed, unless no connection was made or the node
                // refused the stream itself.
                waiting.fail_all(&if never_connected(&s) { s } else { lost(s) });
                continue;
            }
        };
        let mut taking = true;
        loop {
            tokio::select! {
                biased;
                msg = replies.message() => match msg {
                    Ok(Some(msg)) => waiting.answer(msg),
                    Ok(None) => {
                        waiting.fail_all(&Status::unknown(
                            "the node ended the Kv stream before answering; the outcome is unknown",
                        ));
                        break;
                    }
                    Err(s) => {
                        waiting.fail_all(&lost(s));
                        break;
                    }
                },
                next = queue.recv(), if taking => match next {
                    Some(p) => {
                        let _ = send.send(waiting.gather(p, &mut queue));
                    }
                    None => taking = false,
                },
            }
            if !taking && waiting.is_empty() {
                return;
            }
        }
    }
}

/// A transport failure of the stream leaves the outcome of every call it
/// carried unknown; a status the server chose (a wrong cluster id, say)
/// stands as it is.
fn lost(s: Status) -> Status {
    match s.code() {
        Code::Unknown | Code::Unavailable | Code::Cancelled | Code::Internal => {
            Status::unknown(format!("the Kv stream broke ({}: {}); the outcome is unknown", s.code(), s.message()))
        }
        _ => s,
    }
}

/// True when `s` failed a call because no connection could be made (the
/// node refused it or could not be reached): nothing was sent.
fn never_connected(s: &Status) -> bool {
    use std::error::Error;
    use std::io::ErrorKind::{ConnectionRefused, HostUnreachable, NetworkUnreachable};
    let mut cause: Option<&(dyn Error + 'static)> = s.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable);
        }
        cause = e.source();
    }
    false
}

/// The calls sent on the current stream, by id.
#[derive(Default)]
struct Waiting {
    callers: HashMap<u64, oneshot::Sender<Result<Answer, Status>>>,
    next_id: u64,
    /// `callers.len()` after the last sweep of callers that gave up.
    swept: usize,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// `first` and whatever else is queued, as one message.
    fn gather(&mut self, first: Pending, queue: &mut mpsc::Receiver<Pending>) -> pb::KvCalls {
        let mut calls = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            // A caller that timed out while queued: nothing to send.
            if !p.reply.is_closed() {
                self.next_id += 1;
                bytes += p.call.encoded_len();
                calls.push(pb::KvCall { id: self.next_id, call: Some(p.call) });
                self.callers.insert(self.next_id, p.reply);
            }
            if calls.len() < MAX_CALLS_PER_MESSAGE && bytes < MESSAGE_BYTES {
                next = queue.try_recv().ok();
            }
        }
        self.sweep();
        pb::KvCalls { calls }
    }

    /// Callers whose attempt timed out are forgotten once the map has
    /// doubled since the last sweep (a node that holds calls for ever must
    /// not grow it for ever).
    fn sweep(&mut self) {
        if self.callers.len() > 2 * self.swept + 64 {
            self.callers.retain(|_, c| !c.is_closed());
            self.swept = self.callers.len();
        }
    }

    fn answer(&mut self, msg: pb::KvReplies) {
        for r in msg.replies {
            if let Some(caller) = self.callers.remove(&r.id) {
                let answer = match r.reply {
                    Some(Answer::Error(e)) => Err(call_status(e)),
                    Some(a) => Ok(a),
                    None => Err(Status::internal("a KvReply carried no reply")),
                };
                let _ = caller.send(answer);
            }
        }
    }

    fn fail_all(&mut self, s: &Status) {
        for (_, caller) in self.callers.drain() {
            let _ = caller.send(Err(Status::new(s.code(), s.message())));
        }
        self.swept = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Call {
        Call::Put(pb::PutRequest { key: key.into(), value: b"v".to_vec(), request_id: key.into(), prev_kv: false })
    }

    fn pending(call: Call) -> (Pending, oneshot::Receiver<Result<Answer, Status>>) {
        let (reply, rx) = oneshot::channel();
        (Pending { call, reply }, rx)
    }

    #[test]
    fn calls_queued_together_go_in_one_message_and_replies_find_their_callers() {
        let (tx, mut queue) = mpsc::channel(QUEUE);
        let (first, mut r1) = pending(put("/a"));
        let (second, mut r2) = pending(put("/b"));
        let (gave_up, r3) = pending(put("/c"));
        let (fourth, mut r4) = pending(put("/d"));
        drop(r3);
        for p in [second, gave_up, fourth] {
            tx.try_send(p).ok().unwrap();
        }
        let mut waiting = Waiting::default();
        let msg = waiting.gather(first, &mut queue);
        let keys: Vec<_> = msg.calls.iter().map(|c| (c.id, c.call.clone())).collect();
        assert_eq!(
            keys,
            vec![(1, Some(put("/a"))), (2, Some(put("/b"))), (3, Some(put("/d")))],
            "the caller that gave up is skipped"
        );

        let ok = |id| pb::KvReply { id, reply: Some(Answer::Put(pb::PutResponse::default())) };
        let err = pb::KvReply {
            id: 1,
            reply: Some(Answer::Error(pb::CallError {
                code: Code::InvalidArgument as i32,
                message: "bad".into(),
                ..Default::default()
            })),
        };
        waiting.answer(pb::KvReplies { replies: vec![ok(3), err, ok(99)] });
        assert_eq!(r1.try_recv().unwrap().unwrap_err().code(), Code::InvalidArgument);
        assert!(matches!(r4.try_recv().unwrap(), Ok(Answer::Put(_))));
        assert!(r2.try_recv().is_err(), "no reply yet");
        waiting.fail_all(&lost(Status::unavailable("connection reset")));
        let failed = r2.try_recv().unwrap().unwrap_err();
        assert_eq!(failed.code(), Code::Unknown, "a broken stream leaves the outcome unknown: {failed:?}");
        assert!(failed.message().contains("connection reset"), "{failed:?}");
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_message_holds_at_most_the_server_limit_of_calls() {
        let (tx, mut queue) = mpsc::channel(MAX_CALLS_PER_MESSAGE + 10);
        let mut receivers = Vec::new();
        for i in 0..MAX_CALLS_PER_MESSAGE + 5 {
            let (p, rx) = pending(put(&format!("/k{i}")));
            tx.try_send(p).ok().unwrap();
            receivers.push(rx);
        }
        let (first, _r) = pending(put("/first"));
        let mut waiting = Waiting::default();
        assert_eq!(waiting.gather(first, &mut queue).calls.len(), MAX_CALLS_PER_MESSAGE);
        let next = queue.try_recv().ok().unwrap();
        assert_eq!(waiting.gather(next, &mut queue).calls.len(), 6, "the rest goes in the next message");
    }

    #[test]
    fn a_refused_connection_is_told_apart_from_a_broken_one() {
        #[derive(Debug)]
        struct Transport(std::io::Error);
        impl std::fmt::Display for Transport {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl std::error::Error for Transport {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let failed = |kind: std::io::ErrorKind| {
            let mut s = Status::unavailable("tcp connect error");
            s.set_source(std::sync::Arc::new(Transport(kind.into())));
            s
        };
        assert!(never_connected(&failed(std::io::ErrorKind::ConnectionRefused)));
        assert!(
            !never_connected(&failed(std::io::ErrorKind::ConnectionReset)),
            "a reset connection may have carried the calls"
        );
        assert!(!never_connected(&Status::unavailable("no source")));
    }

    #[test]
    fn a_status_the_server_chose_stands_but_a_transport_failure_is_an_unknown_outcome() {
        let wrong = lost(Status::failed_precondition("this node belongs to cluster a, the request to b"));
        assert_eq!(wrong.code(), Code::FailedPrecondition);
        for code in [Code::Unavailable, Code::Cancelled, Code::Unknown, Code::Internal] {
            assert_eq!(lost(Status::new(code, "h2 error")).code(), Code::Unknown, "{code:?}");
        }
    }
}
