//! Snapshot integrity: a snapshot's data carries a CRC-32 checked before it
//! is installed, and every Raft message (snapshot chunks included) carries a
//! CRC-32 of its payload checked before it reaches Raft. A flipped byte is
//! refused, names what it hit, and changes nothing.

mod common;

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use arbor::client::pb;
use arbor::config::Config;
use arbor::hlc::{Hlc, ManualClock, SystemClock};
use arbor::keys::Key;
use arbor::raft::network::{seal, verify};
use arbor::raft::{Entry, TypeConfig};
use arbor::routing::RangeDesc;
use arbor::sequencer::{GroupShared, GroupStateMachine};
use arbor::server::{serve, Node};
use arbor_storage::{Durability, Engine, Memory, WriteBatch};
use common::phase;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, Vote};

fn open(engine: Arc<dyn Engine>) -> GroupStateMachine {
    let hlc = Arc::new(Hlc::new(Arc::new(ManualClock::new(1_000)), 500));
    let range = RangeDesc { group: 1, start: Vec::new(), end: Vec::new() };
    GroupStateMachine::open(range, engine, 2, Arc::new(GroupShared::default()), hlc, Durability::Sync).unwrap()
}

/// A membership entry: it moves the applied index without any epoch.
fn membership_entry(index: u64, voters: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], ())),
    }
}

/// An engine holding one version of `key`, and a state machine on it that
/// applied `entries` membership entries.
fn replica(key: &str, entries: u64) -> (Arc<dyn Engine>, GroupStateMachine) {
    let engine: Arc<dyn Engine> = Arc::new(Memory::new());
    let mut b = WriteBatch::new();
    let record = arbor::tree::Record {
        value: format!("value of {key}").into_bytes().into(),
        version: 1,
        create_stamp: 1,
        mod_stamp: 1,
    };
    b.put(Key::Current(key.as_bytes()).encode(), arbor::tree::encode_stored(1, 0, Some(&record)));
    engine.write(b, Durability::Sync).unwrap();
    let mut sm = open(engine.clone());
    for i in 1..=entries {
        sm.apply(membership_entry(i, &[1, 2, 3])).unwrap();
    }
    (engine, sm)
}

fn version_keys(engine: &Arc<dyn Engine>) -> Vec<Vec<u8>> {
    let (start, end) = arbor::keys::current_bounds(b"", b"");
    let scan = engine.scan(Bound::Included(start), Bound::Excluded(end), arbor_storage::Direction::Forward);
    scan.map(|kv| kv.unwrap().0).collect()
}

#[test]
fn a_corrupted_snapshot_is_refused_before_anything_is_installed() {
    phase("replica A (key /a, 5 entries applied) builds a snapshot; replica B holds /b at index 2");
    let (_, a) = replica("/a", 5);
    let (meta, data) = a.snapshot_image().unwrap();
    let data = data.into_bytes().unwrap();
    let (b_engine, mut b) = replica("/b", 2);
    let before = b.applied().clone();
    let keys_before = version_keys(&b_engine);

    let mut flipped_image = data.clone();
    let mid = flipped_image.len() / 2;
    flipped_image[mid] ^= 0x40;
    let mut flipped_header = data.clone();
    flipped_header[2] ^= 0x01;
    let mut unknown_format = data.clone();
    unknown_format[0] = 0x7f;
    let truncated = data[..data.len() - 1].to_vec();
    let cases = [
        ("a byte of the compressed image", flipped_image, "checksum mismatch"),
        ("a byte of the stored checksum", flipped_header, "checksum mismatch"),
        ("the format byte", unknown_format, "unknown snapshot data format"),
        ("the last byte cut off", truncated, "checksum mismatch"),
    ];
    for (what, bad, expected) in cases {
        phase(&format!("installing the snapshot with {what} is refused"));
        let err = b.install_snapshot(&meta, bad.into()).unwrap_err();
        assert!(matches!(err, arbor::Error::Corruption(_)), "{what}: {err:?}");
        let msg = err.to_string();
        for part in ["group 1", meta.snapshot_id.as_str(), expected, "nothing installed"] {
            assert!(msg.contains(part), "{what}: {msg:?} does not mention {part:?}");
        }
        assert_eq!(b.applied(), &before, "{what}: the applied state did not move");
        assert_eq!(version_keys(&b_engine), keys_before, "{what}: the data did not change");
        assert!(b.current_snapshot().unwrap().is_none(), "{what}: no snapshot was stored");
    }

    phase("the intact snapshot installs: B now holds A's state");
    b.install_snapshot(&meta, data.clone().into()).unwrap();
    assert_eq!(b.applied().last_applied, meta.last_log_id);
    assert_eq!(version_keys(&b_engine), vec![Key::Current(b"/a").encode()]);
    assert_eq!(b.current_snapshot().unwrap().map(|(_, d)| d.into_bytes().unwrap()), Some(data));
}

type ChunkResult = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_chunk_is_refused_so_the_leader_restarts_the_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A joining node: its group waits for a leader, so it accepts a
    // snapshot stream from any leader vote.
    let config = Config {
        node_id: 3,
        listen: addr,
        data_dir: dir.path().join("n3"),
        peers: vec![format!("3={addr}")],
        join: true,
        vshards: 2,
        ..Default::default()
    };
    let cluster_id = config.cluster_id.clone();
    let node = Node::start(config, Arc::new(SystemClock)).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(node.clone(), listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut raft = pb::raft_transport_client::RaftTransportClient::new(channel);
    let client = arbor::client::Client::connect([addr.to_string()]).await.unwrap();

    let chunk = |offset: u64, fill: u8| {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 10)),
                last_membership: Default::default(),
                snapshot_id: "g1-i10-test".to_string(),
            },
            offset,
            data: vec![fill; 4096],
            done: false,
        };
        seal(cluster_id.clone(), 1, rmp_serde::to_vec(&req).unwrap())
    };
    let send = |msg: pb::RaftMessage| {
        let mut raft = raft.clone();
        async move {
            let reply = raft.install_snapshot(msg).await.expect("the chunk gets an answer").into_inner();
            verify(&reply).expect("replies carry a valid checksum");
            rmp_serde::from_slice::<ChunkResult>(&reply.payload).unwrap()
        }
    };

    phase("an intact first chunk starts the stream");
    assert!(send(chunk(0, 1)).await.is_ok());

    phase("the second chunk with a flipped byte is refused as a snapshot mismatch naming snapshot and offset");
    let mut bad = chunk(4096, 2);
    let at = bad.payload.len() - 10;
    bad.payload[at] ^= 0x01;
    match send(bad).await {
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
            assert_eq!((m.got.id.as_str(), m.got.offset), ("g1-i10-test", 4096));
            assert_eq!(m.expect.offset, 0, "the leader is told to start over");
        }
        other => panic!("a corrupted chunk was not refused: {other:?}"),
    }

    phase("the same chunk intact is accepted: the refusal came from the checksum");
    assert!(send(chunk(4096, 2)).await.is_ok());

    phase("other Raft messages with a flipped byte, or without a checksum, are refused too");
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let mut bad = seal(cluster_id.clone(), 1, rmp_serde::to_vec(&append).unwrap());
    bad.payload[0] ^= 0x01;
    let err = raft.append_entries(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err}");
    assert!(err.message().contains("checksum mismatch"), "{err}");
    let mut unsealed = seal(cluster_id.clone(), 1, rmp_serde::to_vec(&append).unwrap());
    unsealed.crc32 = None;
    let err = raft.append_entries(unsealed).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err}");

    phase("nothing was installed or applied");
    let status = client.status().await.unwrap();
    let g = &status.groups[0];
    assert_eq!((g.applied_index, g.snapshot_index, g.snapshots_installed), (0, 0, 0), "{g:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn a_damaged_stored_snapshot_is_replaced_by_an_image_rather_than_sent() {
    let (_, a) = replica("/a", 3);
    let (meta, data) = a.snapshot_image().unwrap();
    let (engine, mut sm) = replica("/other", 0);
    sm.install_snapshot(&meta, data).unwrap();
    assert!(sm.stored_snapshot().unwrap().is_some(), "the installed snapshot is stored with its data");
    // Flip the last byte of the stored snapshot: the end of its data.
    let key = Key::Snapshot(1).encode();
    let mut stored = engine.get(&key).unwrap().unwrap();
    *stored.last_mut().unwrap() ^= 0x40;
    let mut b = WriteBatch::new();
    b.put(key, stored);
    engine.write(b, Durability::Sync).unwrap();

    assert!(sm.stored_snapshot().unwrap().is_none(), "damaged data is never offered");
    let (meta, data) = sm.current_snapshot().unwrap().expect("an image of the current state");
    assert_eq!(meta.last_log_id.unwrap().index, 3);
    let (fresh_engine, mut fresh) = replica("/other", 0);
    fresh.install_snapshot(&meta, data).expect("the image verifies and installs");
    assert_eq!(version_keys(&fresh_engine), vec![Key::Current(b"/a").encode()]);
}
