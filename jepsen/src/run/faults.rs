//! Carrying out the nemesis' decisions on the testbed, and recording each as a nemesis
//! `info` event: `start-partition` / `stop-partition` (value: shape, cut links, what each
//! side sees), `start-kill` / `stop-kill`, `start-pause` / `stop-pause` (value: targets and
//! nodes), `start-clock` / `stop-clock` (bump or strobe: node and offsets; stop: the nodes
//! reset to offset 0), `start-member` / `stop-member` (the node removed from / added back to
//! every group, with the groups and any error), `transfer-leader` (group, from, to, and the
//! outcome), `member-skipped` (no node could be removed), `amnesia-checkpoint`,
//! `start-amnesia`, `amnesia-kill`, `amnesia-restart`, `stop-amnesia` (see [`amnesia`]),
//! `amnesia-skipped`, `crash` (a server that exited on its own). A failed call is recorded in its event's `error` field, never hidden. The
//! decisions come from [`super::nemesis::Planner`].
//!
//! The final heal works in the order that lets each step succeed: network, kills and
//! pauses first (every server running and reachable), then clock offsets back to 0 on every
//! node, then the removed node back in every group; with `member`, it finally checks that
//! every original node is a voter of every group again, and reports it as a problem if not.

use super::admin::{self, ClockAdmin, GroupView, MEMBERSHIP_CALL};
use super::cluster::{leader_of_group_1, wait_ready, Cluster};
use super::nemesis::{Action, ClockPlan, FaultKind, Grudge, Plan, Planner, MIN_VOTERS};
use super::recorder::Recorder;
use super::Testbed;
use anyhow::Result;
use futures::future::join_all;
use serde_json::{json, Value as Json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long putting a removed node back may take during the main phase...
const MEMBER_RESTORE: Duration = Duration::from_secs(10);
/// ... and at the final heal.
const FINAL_MEMBER_RESTORE: Duration = Duration::from_secs(60);
/// SIGTERM grace of a removed node.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the amnesia fault lets writes go on while its minority lags...
const AMNESIA_WRITES: Duration = Duration::from_secs(2);
/// ... and how long it waits for a leader after each checkpoint restart.
const CHECKPOINT_READY: Duration = Duration::from_secs(15);

/// A running clock fault.
struct ClockFault {
    desc: String,
    /// The strobe task, aborted when the fault stops.
    strobe: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ClockFault {
    fn drop(&mut self) {
        if let Some(t) = &self.strobe {
            t.abort();
        }
    }
}

/// A node taken out of the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberFault {
    node: usize,
    /// Removed from every group, wiped and restarted with `--join`.
    wiped: bool,
}

/// The active faults.
#[derive(Default)]
struct Active {
    killed: Vec<usize>,
    paused: Vec<usize>,
    partition: Option<String>,
    clock: Option<ClockFault>,
    member: Option<MemberFault>,
    /// Every node was restarted gracefully once (the amnesia fault's checkpoint).
    checkpointed: bool,
}

impl Active {
    fn describe(&self, name: impl Fn(usize) -> String) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.partition {
            parts.push(format!("partition {p}"));
        }
        if !self.killed.is_empty() {
            parts.push(format!("killed {}", self.killed.iter().map(|&i| name(i)).collect::<Vec<_>>().join(" ")));
        }
        if !self.paused.is_empty() {
            parts.push(format!("paused {}", self.paused.iter().map(|&i| name(i)).collect::<Vec<_>>().join(" ")));
        }
        if let Some(c) = &self.clock {
            parts.push(format!("clock {}", c.desc));
        }
        if let Some(m) = &self.member {
            parts.push(format!("removed {}", name(m.node)));
        }
        parts.join(", ")
    }

    /// The node the member fault owns: kills and pauses leave it alone.
    fn member_node(&self) -> Option<usize> {
        self.member.map(|m| m.node)
    }
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn names(nodes: &[usize]) -> Json {
    json!(nodes.iter().map(|&i| name(i)).collect::<Vec<_>>())
}

/// The node index of Arbor node id `id` (ids are 1-based indices).
fn index_of(id: u64, n: usize) -> Option<usize> {
    (id as usize).checked_sub(1).filter(|&i| i < n)
}

/// What each node sees, grouped: `n1 n2 | n3 n4 n5`.
pub fn components(g: &Grudge, n: usize) -> String {
    let mut views: Vec<Vec<usize>> = Vec::new();
    for a in 0..n {
        let v: Vec<usize> = (0..n).filter(|&b| g.connected(a, b)).collect();
        if !views.contains(&v) {
            views.push(v);
        }
    }
    views.iter().map(|v| v.iter().map(|&i| name(i)).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join(" | ")
}

/// Nodes that the member fault may remove: running, not paused or killed, a voter of every
/// group, and every group keeps more than [`MIN_VOTERS`] voters before the removal (pure).
pub fn removable(view: &[GroupView], ids: &[(usize, u64)], busy: &[usize]) -> Vec<usize> {
    if view.is_empty() || view.iter().any(|g| g.voters.len() <= MIN_VOTERS) {
        return Vec::new();
    }
    ids.iter()
        .filter(|(i, id)| !busy.contains(i) && view.iter().all(|g| g.voters.contains(id)))
        .map(|&(i, _)| i)
        .collect()
}

/// Runs the nemesis until `deadline`, then heals everything; returns what the heal could
/// not restore (run problems).
pub async fn nemesis_loop(
    tb: Arc<Testbed>,
    rec: Arc<Recorder>,
    mut planner: Planner,
    interval: Duration,
    deadline: tokio::time::Instant,
    status: Arc<Mutex<String>>,
) -> Result<Vec<String>> {
    let mut active = Active::default();
    let kinds = planner.kinds().to_vec();
    let n = tb.endpoints.len();
    loop {
        let next = tokio::time::Instant::now() + interval;
        tokio::time::sleep_until(next.min(deadline)).await;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        note_crashes(&tb, &rec);
        let Some(action) = planner.tick() else { continue };
        apply(&tb, &rec, &mut planner, &mut active, action).await?;
        *status.lock().unwrap_or_else(|e| e.into_inner()) = active.describe(name);
    }
    *status.lock().unwrap_or_else(|e| e.into_inner()) = format!("healing: {}", active.describe(name));
    for kind in planner.stop_all() {
        if matches!(kind, FaultKind::Partition | FaultKind::Kill | FaultKind::Pause) {
            apply(&tb, &rec, &mut planner, &mut active, Action::Stop(kind)).await?;
        }
    }
    // Whatever happened (a crash, a failed step), leave every node running and connected.
    note_crashes(&tb, &rec);
    tb.network.heal().await?;
    let restarted: Vec<usize> = {
        let mut c = tb.cluster();
        let down: Vec<usize> = (0..n).filter(|&i| !c.is_running(i)).collect();
        for &i in &down {
            c.restart(i)?;
        }
        for i in 0..n {
            c.resume(i);
        }
        down
    };
    if !restarted.is_empty() {
        rec.nemesis("restart", json!({"nodes": names(&restarted)}));
    }
    if kinds.contains(&FaultKind::Clock) {
        // Every node, skewed or not (a bump may have outlived its fault's bookkeeping).
        stop_clock(&tb, &rec, &mut active, true).await;
    }
    let mut problems = Vec::new();
    if let Some(m) = active.member {
        if let Err(e) = restore_member(&tb, &rec, &mut active, m, FINAL_MEMBER_RESTORE).await {
            problems.push(format!("{} could not be added back to every group: {e}", name(m.node)));
        }
    }
    if kinds.contains(&FaultKind::Member) {
        let ids: Vec<u64> = (1..=n as u64).collect();
        let view = admin::groups(&tb.endpoints).await;
        let missing: Vec<String> = view
            .iter()
            .flat_map(|g| {
                ids.iter().filter(|id| !g.voters.contains(id)).map(move |id| format!("n{id} in group {}", g.id))
            })
            .collect();
        if view.is_empty() {
            problems.push("after healing, no node reported its groups".into());
        } else if !missing.is_empty() {
            problems.push(format!("after healing, not a voter: {}", missing.join(", ")));
        }
    }
    *status.lock().unwrap_or_else(|e| e.into_inner()) = String::new();
    Ok(problems)
}

fn note_crashes(tb: &Testbed, rec: &Recorder) {
    for crash in tb.cluster().reap_crashes() {
        eprintln!("\narbor-jepsen: server exited on its own: {crash}");
        rec.nemesis("crash", json!(crash));
    }
}

/// The clock admin of node `i` (its advertised address).
fn clock_admin(tb: &Testbed, i: usize) -> Result<ClockAdmin, String> {
    let addr = tb.cluster().advertise(i).to_string();
    ClockAdmin::new(&addr)
}

async fn start_clock(tb: &Testbed, rec: &Recorder, active: &mut Active, plan: ClockPlan) {
    let node = plan.node();
    let admin = match clock_admin(tb, node) {
        Ok(a) => a,
        Err(e) => {
            rec.nemesis("start-clock", json!({"node": name(node), "error": e}));
            active.clock = Some(ClockFault { desc: format!("{} (failed)", name(node)), strobe: None });
            return;
        }
    };
    match plan {
        ClockPlan::Bump { offset_ms, .. } => {
            let mut v = json!({"mode": "bump", "node": name(node), "offset-ms": offset_ms});
            match admin.set(offset_ms).await {
                Ok(prev) => v["previous-offset-ms"] = json!(prev),
                Err(e) => v["error"] = json!(e),
            }
            rec.nemesis("start-clock", v);
            active.clock = Some(ClockFault { desc: format!("{} {offset_ms:+} ms", name(node)), strobe: None });
        }
        ClockPlan::Strobe { offset_ms, period_ms, duration_ms, .. } => {
            // The strobe flips on its own task; the first flip's outcome is recorded.
            let first = admin.set(offset_ms).await;
            let task = tokio::spawn(async move {
                let end = Instant::now() + Duration::from_millis(duration_ms);
                let mut on = true;
                while Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(period_ms)).await;
                    on = !on;
                    let _ = admin.set(if on { offset_ms } else { 0 }).await;
                }
                let _ = admin.set(0).await;
            });
            let mut v = json!({
                "mode": "strobe", "node": name(node), "offset-ms": offset_ms,
                "period-ms": period_ms, "duration-ms": duration_ms,
            });
            if let Err(e) = first {
                v["error"] = json!(e);
            }
            rec.nemesis("start-clock", v);
            active.clock = Some(ClockFault {
                desc: format!("{} strobe 0/{offset_ms:+} ms every {period_ms} ms", name(node)),
                strobe: Some(task),
            });
        }
    }
}

/// Stops the strobe and sets every running, unpaused node's offset to 0 (`all`: every node).
async fn stop_clock(tb: &Testbed, rec: &Recorder, active: &mut Active, all: bool) {
    active.clock = None;
    let targets: Vec<(usize, String)> = {
        let c = tb.cluster();
        (0..c.len())
            .filter(|&i| all || (c.is_running(i) && !c.is_paused(i)))
            .map(|i| (i, c.advertise(i).to_string()))
            .collect()
    };
    let results = join_all(targets.iter().map(|(_, addr)| async move {
        match ClockAdmin::new(addr) {
            Ok(a) => a.set(0).await,
            Err(e) => Err(e),
        }
    }))
    .await;
    let mut reset = Vec::new();
    let mut errors = serde_json::Map::new();
    for ((i, _), r) in targets.iter().zip(results) {
        match r {
            Ok(_) => reset.push(*i),
            Err(e) => {
                errors.insert(name(*i), json!(e));
            }
        }
    }
    let mut v = json!({"reset": names(&reset)});
    if !errors.is_empty() {
        v["errors"] = Json::Object(errors);
    }
    rec.nemesis("stop-clock", v);
}

async fn transfer_leader(tb: &Testbed, rec: &Recorder, planner: &mut Planner) {
    let n = tb.endpoints.len();
    let view = admin::groups(&tb.endpoints).await;
    let led: Vec<usize> = (0..view.len()).filter(|&k| index_of(view[k].leader, n).is_some()).collect();
    let Some(k) = planner.pick(&led) else {
        rec.nemesis("transfer-leader", json!({"error": "no group has a known leader"}));
        return;
    };
    let g = &view[k];
    let others: Vec<u64> = g.voters.iter().copied().filter(|&v| v != g.leader).collect();
    let Some(to) = planner.pick(&others) else {
        rec.nemesis("transfer-leader", json!({"group": g.id, "error": "no other voter"}));
        return;
    };
    let from = index_of(g.leader, n).expect("filtered above");
    let addr = tb.cluster().advertise(from).to_string();
    let mut v = json!({"group": g.id, "from": format!("n{}", g.leader), "to": format!("n{to}"), "term": g.term});
    match admin::transfer_leader(&addr, g.id, to).await {
        Ok((leader, term)) => {
            v["result"] = json!({"leader": format!("n{leader}"), "term": term});
        }
        Err(e) => v["error"] = json!(e),
    }
    rec.nemesis("transfer-leader", v);
}

/// Removes a node from every group, wipes it and restarts it with `--join`.
async fn start_member(tb: &Testbed, rec: &Recorder, planner: &mut Planner, active: &mut Active) {
    if let Some(m) = active.member {
        planner.abandon(FaultKind::Member);
        rec.nemesis("member-skipped", json!({"reason": format!("{} is still out", name(m.node))}));
        return;
    }
    let view = admin::groups(&tb.endpoints).await;
    let (ids, busy): (Vec<(usize, u64)>, Vec<usize>) = {
        let c = tb.cluster();
        let ids = (0..c.len()).map(|i| (i, c.id(i))).collect();
        let busy = (0..c.len())
            .filter(|&i| !c.is_running(i) || c.is_paused(i) || active.killed.contains(&i) || active.paused.contains(&i))
            .collect();
        (ids, busy)
    };
    let candidates = removable(&view, &ids, &busy);
    let Some(node) = planner.pick(&candidates) else {
        planner.abandon(FaultKind::Member);
        let voters: Vec<String> = view.iter().map(|g| format!("group {}: {:?}", g.id, g.voters)).collect();
        rec.nemesis(
            "member-skipped",
            json!({"reason": format!("no node can go without leaving fewer than {MIN_VOTERS} voters, or none is idle"),
                   "voters": voters}),
        );
        return;
    };
    let id = ids[node].1;
    let groups: Vec<u64> = view.iter().map(|g| g.id).collect();
    let (removed, failure) = match admin::membership_client(&tb.endpoints, MEMBERSHIP_CALL) {
        Ok(client) => admin::remove_everywhere(&client, id, &groups).await,
        Err(text) => (Vec::new(), Some(admin::Failure { text, definite: true })),
    };
    let mut v = json!({"node": name(node), "removed-from": removed, "groups": groups});
    if let Some(f) = failure.as_ref().filter(|f| f.definite && removed.is_empty()) {
        // Refused before anything changed: there is nothing to heal.
        planner.abandon(FaultKind::Member);
        v["error"] = json!(f.text);
        rec.nemesis("member-skipped", v);
        return;
    }
    let mut fault = MemberFault { node, wiped: false };
    if let Some(f) = failure {
        // Out of some groups only, or maybe out (no answer): the stop finishes the
        // removal, then wipes the node and adds it back.
        v["error"] = json!(f.text);
    } else {
        match wipe_and_rejoin(tb, node) {
            Ok(()) => fault.wiped = true,
            Err(e) => v["error"] = json!(format!("{e:#}")),
        }
    }
    v["rejoined-empty"] = json!(fault.wiped);
    rec.nemesis("start-member", v);
    active.member = Some(fault);
}

fn wipe_and_rejoin(tb: &Testbed, node: usize) -> Result<()> {
    // The graceful stop waits (up to STOP_GRACE) on this thread; let the runtime move its
    // other tasks (the clients) elsewhere meanwhile.
    tokio::task::block_in_place(|| {
        let mut c = tb.cluster();
        c.stop(node, STOP_GRACE);
        c.rejoin(node)
    })
}

/// Puts the member fault's node back in every group: finishes its removal if it was
/// partial, wipes and restarts it with `--join` if not done yet, then adds it to every
/// group it is not a voter of, retrying until `limit`.
async fn restore_member(
    tb: &Testbed,
    rec: &Recorder,
    active: &mut Active,
    mut m: MemberFault,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let (id, addr) = {
        let c = tb.cluster();
        (c.id(m.node), c.advertise(m.node).to_string())
    };
    let client = admin::membership_client(&tb.endpoints, MEMBERSHIP_CALL)?;
    let added = Mutex::new(BTreeSet::new());
    let outcome = async {
        if !m.wiped {
            admin::retry_until(deadline, || async {
                let view = admin::groups(&tb.endpoints).await;
                let left: Vec<u64> = view.iter().filter(|g| g.has_member(id)).map(|g| g.id).collect();
                match admin::remove_everywhere(&client, id, &left).await {
                    (_, None) if !view.is_empty() => Ok(()),
                    (_, None) => Err("no node reported its groups".to_string()),
                    (_, Some(f)) => Err(f.text),
                }
            })
            .await?;
            wipe_and_rejoin(tb, m.node).map_err(|e| format!("{e:#}"))?;
            m.wiped = true;
        }
        admin::retry_until(deadline, || async {
            {
                // A joiner that crashed or was stopped comes back (still with --join).
                let mut c = tb.cluster();
                c.restart(m.node).map_err(|e| format!("{e:#}"))?;
                c.resume(m.node);
            }
            let view = admin::groups(&tb.endpoints).await;
            if view.is_empty() {
                return Err("no node reported its groups".to_string());
            }
            let missing: Vec<u64> = view.iter().filter(|g| !g.voters.contains(&id)).map(|g| g.id).collect();
            let (done, error) = admin::add_everywhere(&client, id, &addr, &missing).await;
            added.lock().unwrap_or_else(|e| e.into_inner()).extend(done);
            match error {
                None => Ok(()),
                Some(e) => Err(e),
            }
        })
        .await
    }
    .await;
    let added: Vec<u64> = added.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().collect();
    let mut v = json!({"node": name(m.node), "added-to": added});
    match &outcome {
        Ok(()) => active.member = None,
        Err(e) => {
            v["error"] = json!(e);
            active.member = Some(m);
        }
    }
    rec.nemesis("stop-member", v);
    outcome
}

/// The amnesia fault, one sequence:
///
/// 1. **checkpoint** (first time only): every node is stopped gracefully (SIGTERM) and
///    restarted, one at a time, each time waiting for a leader. A stopping server flushes
///    its storage, so even under `--unsafe-volatile-writes` its Raft membership and log so
///    far are on disk. Without it, a node killed under that switch comes back with no
///    membership at all, refuses every vote and nothing is ever elected again (the run
///    ends `unknown`, not `invalid`).
/// 2. `start-amnesia`: a minority of non-leaders of group 1 ([`Planner::laggards`]) is cut
///    from the rest; writes go on for [`AMNESIA_WRITES`], committed by the rest alone.
/// 3. `amnesia-kill`: the rest (the leader among them) are killed -9 together, then
///    `amnesia-restart`ed on their data dirs; 4. `stop-amnesia`: the network heals.
///
/// With durable writes the killed nodes come back with every entry they acknowledged and
/// a laggard can only win an election once it has them: nothing is lost. A server that
/// loses unsynced writes at kill -9 comes back with its checkpoint, votes for a laggard
/// (or elects one of its own kind) and the writes of step 2 are gone.
async fn amnesia(
    tb: &Testbed,
    rec: &Recorder,
    planner: &mut Planner,
    active: &mut Active,
    mut leader: Option<usize>,
) -> Result<()> {
    let n = tb.endpoints.len();
    {
        let c = tb.cluster();
        let down: Vec<usize> = (0..n).filter(|&i| !c.is_running(i) || c.is_paused(i)).collect();
        if !down.is_empty() || active.member.is_some() {
            rec.nemesis(
                "amnesia-skipped",
                json!({"reason": "a node is down, paused or removed", "nodes": names(&down)}),
            );
            return Ok(());
        }
    }
    if !active.checkpointed {
        let mut errors = serde_json::Map::new();
        for i in 0..n {
            let restarted = tokio::task::block_in_place(|| {
                let mut c = tb.cluster();
                c.stop(i, STOP_GRACE);
                c.restart(i)
            });
            if let Err(e) = restarted {
                errors.insert(name(i), json!(format!("{e:#}")));
                continue;
            }
            if let Err(e) = wait_ready(&tb.endpoints, CHECKPOINT_READY).await {
                errors.insert(name(i), json!(format!("no leader after its restart: {e:#}")));
            }
        }
        let mut v = json!({"restarted": names(&(0..n).collect::<Vec<_>>())});
        if !errors.is_empty() {
            v["errors"] = Json::Object(errors);
        }
        rec.nemesis("amnesia-checkpoint", v);
        active.checkpointed = true;
        leader = leader_of_group_1(&tb.endpoints).await;
    }
    let lag = planner.laggards(leader);
    let rest: Vec<usize> = (0..n).filter(|i| !lag.contains(i)).collect();
    let g = Grudge::isolate("amnesia", &lag, n);
    tb.network.partition(&g).await?;
    let desc = components(&g, n);
    rec.nemesis(
        "start-amnesia",
        json!({"lagging": names(&lag), "leader": leader.map(name), "to-kill": names(&rest), "components": desc}),
    );
    active.partition = Some(format!("amnesia [{desc}]"));
    tokio::time::sleep(AMNESIA_WRITES).await;
    {
        tb.cluster().kill_together(&rest);
    }
    rec.nemesis("amnesia-kill", json!({"nodes": names(&rest)}));
    let restarted: Result<()> = {
        let mut c = tb.cluster();
        rest.iter().try_for_each(|&i| c.restart(i))
    };
    let mut v = json!({"nodes": names(&rest)});
    if let Err(e) = &restarted {
        v["error"] = json!(format!("{e:#}"));
    }
    rec.nemesis("amnesia-restart", v);
    tb.network.heal().await?;
    rec.nemesis("stop-amnesia", Json::Null);
    active.partition = None;
    restarted
}

/// Applies `act` to those of `targets` that are running, never to
/// `spared` (the member nemesis's node), under one lock; returns them.
fn strike(tb: &Testbed, targets: Vec<usize>, spared: Option<usize>, act: fn(&mut Cluster, usize)) -> Vec<usize> {
    let mut c = tb.cluster();
    let nodes: Vec<usize> = targets.into_iter().filter(|&i| c.is_running(i) && Some(i) != spared).collect();
    for &i in &nodes {
        act(&mut c, i);
    }
    nodes
}

async fn apply(tb: &Testbed, rec: &Recorder, planner: &mut Planner, active: &mut Active, action: Action) -> Result<()> {
    let n = tb.endpoints.len();
    match action {
        Action::Start(plan) => {
            let leader = if plan.needs_leader() { leader_of_group_1(&tb.endpoints).await } else { None };
            let spared = active.member_node();
            match plan {
                Plan::Partition(shape) => {
                    let g = planner.grudge(shape, leader);
                    tb.network.partition(&g).await?;
                    let desc = components(&g, n);
                    let cuts: Vec<Json> = g.cuts.iter().map(|&(a, b)| json!([name(a), name(b)])).collect();
                    rec.nemesis("start-partition", json!({"shape": g.shape, "cuts": cuts, "components": desc}));
                    active.partition = Some(format!("{} [{desc}]", g.shape));
                }
                Plan::Kill(t) => {
                    let nodes = strike(tb, planner.targets(t, leader), spared, Cluster::kill);
                    rec.nemesis("start-kill", json!({"targets": t.name(), "nodes": names(&nodes)}));
                    let all: BTreeSet<usize> = active.killed.iter().chain(&nodes).copied().collect();
                    active.killed = all.into_iter().collect();
                    active.paused.retain(|i| !nodes.contains(i));
                }
                Plan::Pause(t) => {
                    // Only running nodes can be paused (a killed one stays down).
                    let nodes = strike(tb, planner.targets(t, leader), spared, Cluster::pause);
                    rec.nemesis("start-pause", json!({"targets": t.name(), "nodes": names(&nodes)}));
                    active.paused = nodes;
                }
                Plan::Clock(plan) => start_clock(tb, rec, active, plan).await,
                Plan::Member => start_member(tb, rec, planner, active).await,
                Plan::Leader => transfer_leader(tb, rec, planner).await,
                Plan::Amnesia => amnesia(tb, rec, planner, active, leader).await?,
            }
        }
        Action::Stop(FaultKind::Partition) => {
            tb.network.heal().await?;
            rec.nemesis("stop-partition", Json::Null);
            active.partition = None;
        }
        Action::Stop(FaultKind::Kill) => {
            let nodes = std::mem::take(&mut active.killed);
            {
                let mut c = tb.cluster();
                for &i in &nodes {
                    c.restart(i)?;
                }
            }
            rec.nemesis("stop-kill", json!({"nodes": names(&nodes)}));
        }
        Action::Stop(FaultKind::Pause) => {
            let nodes = std::mem::take(&mut active.paused);
            {
                let mut c = tb.cluster();
                for &i in &nodes {
                    c.resume(i);
                }
            }
            rec.nemesis("stop-pause", json!({"nodes": names(&nodes)}));
        }
        Action::Stop(FaultKind::Clock) => stop_clock(tb, rec, active, false).await,
        Action::Stop(FaultKind::Member) => {
            if let Some(m) = active.member {
                // A node that could not be restored yet stays out; the final heal retries.
                let _ = restore_member(tb, rec, active, m, MEMBER_RESTORE).await;
            }
        }
        Action::Stop(FaultKind::Leader | FaultKind::Amnesia) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::nemesis::Shape;
    use rand::SeedableRng;

    #[test]
    fn components_show_who_sees_whom() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let g = Grudge::of(Shape::IsolateLeader, 3, Some(0), &mut rng);
        assert_eq!(components(&g, 3), "n1 | n2 n3");
        assert_eq!(components(&Grudge::default(), 2), "n1 n2");
    }

    fn view(voters: &[&[u64]]) -> Vec<GroupView> {
        voters
            .iter()
            .enumerate()
            .map(|(g, v)| GroupView { id: g as u64 + 1, leader: v[0], voters: v.to_vec(), ..Default::default() })
            .collect()
    }

    #[test]
    fn a_node_is_removed_only_if_every_group_keeps_three_voters() {
        let ids: Vec<(usize, u64)> = (0..4).map(|i| (i, i as u64 + 1)).collect();
        assert_eq!(removable(&view(&[&[1, 2, 3, 4]]), &ids, &[]), vec![0, 1, 2, 3]);
        assert_eq!(removable(&view(&[&[1, 2, 3, 4]]), &ids, &[1, 3]), vec![0, 2], "busy nodes stay");
        assert!(removable(&view(&[&[1, 2, 3]]), &ids[..3], &[]).is_empty(), "3 voters: never below");
        assert!(removable(&view(&[&[1, 2, 3, 4], &[1, 2, 3]]), &ids, &[]).is_empty(), "any group at 3 blocks");
        assert_eq!(removable(&view(&[&[1, 2, 3, 4], &[1, 2, 4, 3]]), &ids, &[]), vec![0, 1, 2, 3]);
        assert_eq!(removable(&view(&[&[1, 2, 3, 4], &[2, 3, 4, 5]]), &ids, &[]), vec![1, 2, 3], "voter of all");
        assert!(removable(&[], &ids, &[]).is_empty(), "no view, no removal");
    }
}
