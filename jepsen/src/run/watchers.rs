//! The watch workload's watchers: tasks that stream every change under the workload's
//! prefix (`Client::watch`) for the whole run, and record what they saw.
//!
//! Watchers, one client process each (process ids after the writers' lanes, never retired):
//! - `n1`..`nN`: one per node, with a client that knows only that node, so each replica's
//!   own stream is checked (a killed, paused or partitioned node's watcher stalls, then
//!   resumes on the same node once it is back);
//! - `roaming`: drops its stream every 1.5–3.5 s and resumes from its last progress stamp on
//!   the next node (resume across replicas: nothing missed, nothing repeated);
//! - `late`: starts half-way through the main phase and replays everything from the start
//!   stamp (the version-replay path), then follows the live feed.
//!
//! Every watcher starts after the same stamp: that of a linearizable read of the empty
//! prefix taken before any write ([`start_stamp`]), so all of them must see every change.
//! A stream that stays silent for [`STALL`] (progress comes every second from a healthy
//! replica) is dropped and resumed from the last progress stamp, as is one that ends in an
//! error (after [`RETRY_PAUSE`]); `Watcher::next` itself resumes broken streams.
//!
//! What a watcher saw is recorded in chunks of about [`CHUNK`]: a `watch` op whose `ok`
//! value holds the events (`[key, value or null, stamp]`), the progress stamp reached,
//! the streams it (re)opened and the errors met. After the final read, [`Watchers::finish`]
//! hands every watcher the read's stamp (the barrier): each stops once its progress passes
//! it, or after [`CATCH_UP_LIMIT`] (the checker then calls it lagging: `unknown`).

use super::client::{watch_events, WATCH_PREFIX};
use super::recorder::{Outcome, Recorder};
use super::workload::Op;
use anyhow::{bail, Context, Result};
use arbor::client::{Client, ClientOptions, WatchTarget};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A chunk of a watcher's stream is recorded about this often.
pub const CHUNK: Duration = Duration::from_secs(1);
/// A stream silent for this long is resumed elsewhere (or on its node again); a healthy
/// replica sends progress every `reads.watch_progress_ms` (1 s).
pub const STALL: Duration = Duration::from_secs(3);
/// After an error, wait this long before resuming.
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long watchers may take, after the final read, to reach its stamp.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// Without a final read (the cluster did not recover), how long watchers go on.
const NO_BARRIER_GRACE: Duration = Duration::from_secs(3);
/// The roaming watcher moves to the next node after a random time in this range (ms).
const ROAM_MS: std::ops::Range<u64> = 1500..3500;
/// Errors kept per chunk (all are counted).
const ERRORS_PER_CHUNK: usize = 3;

/// What a watcher does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bound to node `i` (0-based).
    Node(usize),
    /// Moves to the next node every few seconds.
    Roaming,
    /// Starts late and replays from the start stamp.
    Late,
}

/// One watcher of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// What it does.
    pub kind: Kind,
    /// `n1`, `roaming`, `late`.
    pub name: String,
    /// Its client process.
    pub process: u64,
}

/// The watchers of a run on `nodes` nodes, with processes from `first_process` on.
pub fn specs(nodes: usize, first_process: u64) -> Vec<Spec> {
    let kinds = (0..nodes).map(Kind::Node).chain([Kind::Roaming, Kind::Late]);
    kinds
        .enumerate()
        .map(|(i, kind)| Spec {
            kind,
            name: match kind {
                Kind::Node(n) => format!("n{}", n + 1),
                Kind::Roaming => "roaming".into(),
                Kind::Late => "late".into(),
            },
            process: first_process + i as u64,
        })
        .collect()
}

/// How many watchers a run on `nodes` nodes has.
pub fn count(nodes: usize) -> usize {
    nodes + 2
}

/// The stamp every watcher starts after: a linearizable read of the (still empty) prefix.
/// A group that has applied no epoch yet answers with stamp 0 (which would mean "from now"
/// to a watch), so the read is repeated until the stamp is set.
pub async fn start_stamp(endpoints: &[String]) -> Result<u64> {
    let client =
        Client::with_options(endpoints, ClientOptions { timeout: Duration::from_secs(20), ..Default::default() })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = client.scan(WATCH_PREFIX, 0).await.context("reading the watch prefix before the run")?;
        if !resp.kvs.is_empty() {
            bail!("the watch prefix {WATCH_PREFIX} is not empty before the run");
        }
        match resp.header.map(|h| h.read_stamp) {
            Some(s) if s > 0 => return Ok(s),
            _ if Instant::now() >= deadline => bail!("reads of the watch prefix carried no stamp for 20 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// When and how watchers stop.
#[derive(Debug, Clone, Copy)]
struct Stop {
    /// The final read's stamp: stop once progress reaches it.
    barrier: Option<u64>,
    /// Stop anyway at this time.
    deadline: Instant,
}

/// The running watchers.
pub struct Watchers {
    tasks: JoinSet<Result<()>>,
    stop: watch::Sender<Option<Stop>>,
}

/// What every watcher task shares.
#[derive(Clone)]
pub struct Setup {
    /// Client addresses of the nodes.
    pub endpoints: Vec<String>,
    /// The run's history.
    pub rec: Arc<Recorder>,
    /// Every watcher starts after this stamp.
    pub start_after: u64,
    /// Client timeout (establishing a stream).
    pub op_timeout: Duration,
    /// Seeds the roaming times.
    pub seed: u64,
    /// When the late watcher starts.
    pub late_start: Duration,
}

impl Watchers {
    /// Starts one task per spec.
    pub fn start(specs: Vec<Spec>, setup: Setup) -> Watchers {
        let (stop, _) = watch::channel(None);
        let mut tasks = JoinSet::new();
        for spec in specs {
            tasks.spawn(run_watcher(spec, setup.clone(), stop.subscribe()));
        }
        Watchers { tasks, stop }
    }

    /// Tells every watcher the barrier (the final read's stamp, if it succeeded) and waits
    /// until each has reached it or given up.
    pub async fn finish(mut self, barrier: Option<u64>) -> Result<()> {
        let limit = if barrier.is_some() { CATCH_UP_LIMIT } else { NO_BARRIER_GRACE };
        let _ = self.stop.send(Some(Stop { barrier, deadline: Instant::now() + limit }));
        while let Some(r) = self.tasks.join_next().await {
            r.context("watcher task")??;
        }
        Ok(())
    }
}

/// A chunk of the stream being recorded.
struct Chunk {
    op: Op,
    started: Instant,
    events: Vec<Json>,
    /// Streams opened in this chunk after the first (by the harness or by `Watcher::next`).
    resumes: u64,
    errors: Vec<String>,
    error_count: u64,
}

impl Chunk {
    /// A chunk starting now, not recorded yet.
    fn new(spec: &Spec, after: u64) -> Chunk {
        let op = Op::WatchChunk { watcher: spec.name.clone(), after };
        Chunk { op, started: Instant::now(), events: Vec::new(), resumes: 0, errors: Vec::new(), error_count: 0 }
    }

    /// A chunk starting now, its invocation recorded.
    fn open(rec: &Recorder, spec: &Spec, after: u64) -> Chunk {
        let chunk = Chunk::new(spec, after);
        rec.invoke(spec.process, &chunk.op);
        chunk
    }

    fn error(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < ERRORS_PER_CHUNK {
            self.errors.push(e);
        }
    }

    /// Records the chunk's completion (its events, the progress stamp reached).
    fn close(self, rec: &Recorder, spec: &Spec, progress: u64) {
        let mut value = json!({
            "watcher": spec.name,
            "events": self.events,
            "progress": progress,
            "resumes": self.resumes,
        });
        if self.error_count > 0 {
            value["errors"] = json!(self.errors);
            value["error-count"] = json!(self.error_count);
        }
        rec.complete(spec.process, &self.op, &Outcome::ok(value));
    }

    /// Closes this chunk, then opens the next one (a process has one op at a time).
    fn roll(&mut self, rec: &Recorder, spec: &Spec, progress: u64) {
        let done = std::mem::replace(self, Chunk::new(spec, progress));
        done.close(rec, spec, progress);
        rec.invoke(spec.process, &self.op);
    }
}

/// Why a stream was left.
enum Leave {
    /// Stopped: the barrier was reached or the time is up.
    Stop,
    /// An error: pause, then resume.
    Error,
    /// Silent too long: resume at once.
    Stalled,
    /// The roaming watcher's turn to move.
    Roam,
}

/// The endpoints a watcher's client knows: its node alone, or every node from `node` on.
fn endpoints_for(kind: Kind, endpoints: &[String], node: usize) -> Vec<&String> {
    match kind {
        Kind::Node(i) => vec![&endpoints[i % endpoints.len()]],
        _ => endpoints[node..].iter().chain(&endpoints[..node]).collect(),
    }
}

/// A client for `spec` that tries node `node` first.
fn client_for(spec: &Spec, endpoints: &[String], node: usize, timeout: Duration) -> Result<Client> {
    let options = ClientOptions {
        timeout,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        cluster_id: None,
    };
    Ok(Client::with_options(endpoints_for(spec.kind, endpoints, node), options)?)
}

async fn run_watcher(spec: Spec, setup: Setup, stop: watch::Receiver<Option<Stop>>) -> Result<()> {
    let n = setup.endpoints.len();
    let mut rng = StdRng::seed_from_u64(setup.seed ^ spec.process.wrapping_mul(0x2545_f491_4f6c_dd1d));
    if spec.kind == Kind::Late {
        let start = Instant::now() + setup.late_start;
        while Instant::now() < start && stop.borrow().is_none() {
            tokio::time::sleep(Duration::from_millis(100).min(start - Instant::now())).await;
        }
    }
    let mut position = setup.start_after;
    let mut node = match spec.kind {
        Kind::Node(i) => i,
        _ => rng.gen_range(0..n),
    };
    let mut chunk = Chunk::open(&setup.rec, &spec, position);
    let mut first_stream = true;
    loop {
        if !first_stream {
            chunk.resumes += 1;
        }
        first_stream = false;
        let client = client_for(&spec, &setup.endpoints, node, setup.op_timeout)?;
        let mut watcher = client.watch(WatchTarget::Prefix(WATCH_PREFIX.into()), position);
        let roam_at =
            (spec.kind == Kind::Roaming).then(|| Instant::now() + Duration::from_millis(rng.gen_range(ROAM_MS)));
        let mut last_heard = Instant::now();
        let mut resumes_seen = 0;
        let leave = loop {
            let stop_now = *stop.borrow();
            if let Some(s) = stop_now {
                if s.barrier.is_some_and(|b| position >= b) || Instant::now() >= s.deadline {
                    break Leave::Stop;
                }
            }
            if chunk.started.elapsed() >= CHUNK {
                chunk.roll(&setup.rec, &spec, position);
            }
            let mut until = (chunk.started + CHUNK).min(last_heard + STALL);
            if let Some(r) = roam_at {
                until = until.min(r);
            }
            if let Some(s) = stop_now {
                until = until.min(s.deadline);
            }
            // `Watcher::next` is cancel-safe: a message is consumed only when returned.
            let got = tokio::time::timeout_at(until, watcher.next()).await;
            chunk.resumes += watcher.resumes() - resumes_seen;
            resumes_seen = watcher.resumes();
            match got {
                Ok(Ok(resp)) => {
                    chunk.events.extend(watch_events(&resp));
                    position = watcher.position();
                    last_heard = Instant::now();
                }
                Ok(Err(e)) => {
                    chunk.error(e.to_string());
                    break Leave::Error;
                }
                Err(_) if last_heard.elapsed() >= STALL => {
                    chunk.error(format!("no message for {STALL:?}"));
                    break Leave::Stalled;
                }
                Err(_) if roam_at.is_some_and(|r| Instant::now() >= r) => break Leave::Roam,
                Err(_) => {}
            }
        };
        match leave {
            Leave::Stop => {
                chunk.close(&setup.rec, &spec, position);
                return Ok(());
            }
            Leave::Error => tokio::time::sleep(RETRY_PAUSE).await,
            Leave::Stalled => {}
            Leave::Roam => node = (node + 1) % n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_watcher_per_node_plus_a_roaming_and_a_late_one() {
        let s = specs(3, 6);
        assert_eq!(s.len(), count(3));
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3", "roaming", "late"]);
        assert_eq!(s.iter().map(|s| s.process).collect::<Vec<_>>(), [6, 7, 8, 9, 10]);
        assert_eq!(s[1].kind, Kind::Node(1));
    }

    #[test]
    fn node_watchers_know_only_their_node() {
        let endpoints: Vec<String> = ["a:1", "b:1", "c:1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(endpoints_for(Kind::Node(2), &endpoints, 0), [&endpoints[2]]);
        assert_eq!(endpoints_for(Kind::Roaming, &endpoints, 1), [&endpoints[1], &endpoints[2], &endpoints[0]]);
        assert_eq!(endpoints_for(Kind::Late, &endpoints, 0).len(), 3);
    }
}
