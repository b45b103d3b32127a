//! The `KvBatch` service: many `Kv` calls over one stream (see the
//! service's comment in `proto/arbor.proto`). Each call runs through the
//! same [`KvService`] method as its unary form, so validation, routing,
//! errors and results are the unary ones; only the transport differs.

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{status, KvService, Reply, LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use crate::error::Error;
use arbor_proto as pb;
use arbor_proto::kv_call::Call;
use arbor_proto::kv_reply::Reply as Answer;
use arbor_proto::kv_server::Kv;

/// Calls one `KvCalls` message may carry.
pub const MAX_CALLS_PER_MESSAGE: usize = 1024;
/// Bytes one `KvCalls` message may take, unless `limits.max_request_bytes`
/// is larger (each call is also held to `limits.max_request_bytes`).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Calls one stream may have running; beyond it the server stops reading
/// the stream until some complete (HTTP/2 flow control then holds the
/// client back).
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;
/// A `KvReplies` message is sent once it holds this many bytes, even if
/// more replies are ready.
pub const REPLY_MESSAGE_BYTES: usize = 1 << 20;
/// `KvReplies` messages waiting for the client before the stream stops
/// taking replies from the calls.
const OUTBOX: usize = 16;

/// The `KvBatch` service.
pub struct KvBatchService {
    pub(super) kv: KvService,
}

type ReplyStream = tokio_stream::wrappers::ReceiverStream<Result<pb::KvReplies, Status>>;

#[tonic::async_trait]
impl pb::kv_batch_server::KvBatch for KvBatchService {
    type CallStream = ReplyStream;

    async fn call(&self, req: Request<Streaming<pb::KvCalls>>) -> Reply<Self::CallStream> {
        super::check_cluster(&self.kv.node, &req)?;
        let calls = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOX);
        tokio::spawn(serve(self.kv.clone(), calls, tx));
        Ok(Response::new(ReplyStream::new(rx)))
    }
}

/// Reads calls off the stream, runs them concurrently and sends their
/// replies as they complete, until the client closes its side (or the node
/// starts shutting down) and every call read has answered, or the client
/// goes away. A client whose stream ends with calls unanswered takes their
/// outcome as unknown and retries them elsewhere.
async fn serve(
    kv: KvService,
    mut calls: Streaming<pb::KvCalls>,
    out: tokio::sync::mpsc::Sender<Result<pb::KvReplies, Status>>,
) {
    let mut running = FuturesUnordered::new();
    let mut reading = true;
    let node = kv.node.clone();
    let stopping = node.stopping();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping, if reading => reading = false,
            msg = calls.message(), if reading && running.len() < MAX_CALLS_IN_FLIGHT => match msg {
                Ok(Some(msg)) if msg.calls.len() > MAX_CALLS_PER_MESSAGE => {
                    let why = format!(
                        "a KvCalls message carries {} calls; the limit is {MAX_CALLS_PER_MESSAGE}",
                        msg.calls.len()
                    );
                    let _ = out.send(Err(Status::invalid_argument(why))).await;
                    return;
                }
                Ok(Some(msg)) => running.extend(msg.calls.into_iter().map(|call| run(&kv, call))),
                Ok(None) => reading = false,
                Err(e) => {
                    // A broken or malformed stream: nothing more will come,
                    // and the client no longer waits for the replies.
                    tracing::debug!("KvBatch stream ended: {e}");
                    return;
                }
            },
            Some(first) = running.next(), if !running.is_empty() => {
                let mut size = first.encoded_len();
                let mut replies = vec![first];
                while size < REPLY_MESSAGE_BYTES {
                    let Some(Some(next)) = running.next().now_or_never() else { break };
                    size += next.encoded_len();
                    replies.push(next);
                }
                if out.send(Ok(pb::KvReplies { replies })).await.is_err() {
                    return;
                }
            },
            else => return,
        }
    }
}

/// One call, answered as its unary form would be.
async fn run(kv: &KvService, call: pb::KvCall) -> pb::KvReply {
    let id = call.id;
    let limit = kv.node.config.limits.max_request_bytes;
    let size = call.encoded_len();
    let answer = match call.call {
        _ if size > limit => Err(Status::out_of_range(format!(
            "the call is {size} bytes; the limit is {limit} bytes (limits.max_request_bytes)"
        ))),
        None => Err(status(Error::InvalidArgument("a KvCall carries no request".into()))),
        Some(Call::Get(r)) => kv.get(Request::new(r)).await.map(|r| Answer::Get(r.into_inner())),
        Some(Call::Range(r)) => kv.range(Request::new(r)).await.map(|r| Answer::Range(r.into_inner())),
        Some(Call::Put(r)) => kv.put(Request::new(r)).await.map(|r| Answer::Put(r.into_inner())),
        Some(Call::Delete(r)) => kv.delete(Request::new(r)).await.map(|r| Answer::Delete(r.into_inner())),
        Some(Call::DeleteRange(r)) => {
            kv.delete_range(Request::new(r)).await.map(|r| Answer::DeleteRange(r.into_inner()))
        }
        Some(Call::Txn(r)) => kv.txn(Request::new(r)).await.map(|r| Answer::Txn(r.into_inner())),
    };
    pb::KvReply { id, reply: Some(answer.unwrap_or_else(|s| Answer::Error(call_error(&s)))) }
}

/// A status as a reply: its code, message and leader hint.
pub fn call_error(s: &Status) -> pb::CallError {
    let meta = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    pb::CallError {
        code: s.code() as i32,
        message: s.message().to_string(),
        leader_id: meta(LEADER_ID_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0),
        leader_addr: meta(LEADER_ADDR_HEADER).unwrap_or_default(),
    }
}

/// The status a [`pb::CallError`] stands for, with the leader hint back in
/// the metadata where the unary call carries it.
pub fn call_status(e: pb::CallError) -> Status {
    let mut s = Status::new(tonic::Code::from(e.code), e.message);
    if e.leader_id != 0 {
        s.metadata_mut().insert(LEADER_ID_HEADER, e.leader_id.into());
    }
    if !e.leader_addr.is_empty() {
        if let Ok(addr) = e.leader_addr.parse() {
            s.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_error_carries_the_status_and_its_leader_hint_both_ways() {
        let mut s = Status::unavailable("not the leader of group 1; the leader is node 2");
        s.metadata_mut().insert(LEADER_ID_HEADER, 2u64.into());
        s.metadata_mut().insert(LEADER_ADDR_HEADER, "127.0.0.1:7002".parse().unwrap());
        let e = call_error(&s);
        assert_eq!(
            (e.code, e.leader_id, e.leader_addr.as_str()),
            (tonic::Code::Unavailable as i32, 2, "127.0.0.1:7002")
        );
        let back = call_status(e);
        assert_eq!(back.code(), tonic::Code::Unavailable);
        assert_eq!(back.message(), s.message());
        assert_eq!(back.metadata().get(LEADER_ADDR_HEADER).unwrap(), "127.0.0.1:7002");
        assert_eq!(back.metadata().get(LEADER_ID_HEADER).unwrap(), "2");

        let plain = call_status(call_error(&Status::invalid_argument("key is empty")));
        assert_eq!(plain.code(), tonic::Code::InvalidArgument);
        assert!(plain.metadata().get(LEADER_ADDR_HEADER).is_none());
        assert!(plain.metadata().get(LEADER_ID_HEADER).is_none());
    }
}
