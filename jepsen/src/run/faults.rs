//! Carrying out the nemesis' decisions on the testbed, and recording each as a nemesis
//! `info` event: `start-partition` / `stop-partition` (value: shape, cut links, what each
//! side sees), `start-kill` / `stop-kill`, `start-pause` / `stop-pause` (value: targets and
//! nodes), `crash` (a server that exited on its own). The decisions come from
//! [`super::nemesis::Planner`]; the final heal stops everything and restarts every server
//! that is down, whatever the reason.

use super::cluster::leader_of_group_1;
use super::nemesis::{Action, FaultKind, Grudge, Plan, Planner};
use super::recorder::Recorder;
use super::Testbed;
use anyhow::Result;
use serde_json::{json, Value as Json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Nodes hit by the active kill and pause faults.
#[derive(Default)]
struct Active {
    killed: Vec<usize>,
    paused: Vec<usize>,
    partition: Option<String>,
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
        parts.join(", ")
    }
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn names(nodes: &[usize]) -> Json {
    json!(nodes.iter().map(|&i| name(i)).collect::<Vec<_>>())
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

/// Runs the nemesis until `deadline`, then heals everything.
pub async fn nemesis_loop(
    tb: Arc<Testbed>,
    rec: Arc<Recorder>,
    mut planner: Planner,
    interval: Duration,
    deadline: tokio::time::Instant,
    status: Arc<Mutex<String>>,
) -> Result<()> {
    let mut active = Active::default();
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
    for kind in planner.stop_all() {
        apply(&tb, &rec, &mut planner, &mut active, Action::Stop(kind)).await?;
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
    *status.lock().unwrap_or_else(|e| e.into_inner()) = String::new();
    Ok(())
}

fn note_crashes(tb: &Testbed, rec: &Recorder) {
    for crash in tb.cluster().reap_crashes() {
        eprintln!("\narbor-jepsen: server exited on its own: {crash}");
        rec.nemesis("crash", json!(crash));
    }
}

async fn apply(tb: &Testbed, rec: &Recorder, planner: &mut Planner, active: &mut Active, action: Action) -> Result<()> {
    let n = tb.endpoints.len();
    match action {
        Action::Start(plan) => {
            let leader = if plan.needs_leader() { leader_of_group_1(&tb.endpoints).await } else { None };
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
                    let nodes: Vec<usize> = {
                        let mut c = tb.cluster();
                        let nodes: Vec<usize> =
                            planner.targets(t, leader).into_iter().filter(|&i| c.is_running(i)).collect();
                        for &i in &nodes {
                            c.kill(i);
                        }
                        nodes
                    };
                    rec.nemesis("start-kill", json!({"targets": t.name(), "nodes": names(&nodes)}));
                    let all: BTreeSet<usize> = active.killed.iter().chain(&nodes).copied().collect();
                    active.killed = all.into_iter().collect();
                    active.paused.retain(|i| !nodes.contains(i));
                }
                Plan::Pause(t) => {
                    // Only running nodes can be paused (a killed one stays down).
                    let nodes: Vec<usize> = {
                        let mut c = tb.cluster();
                        let nodes: Vec<usize> =
                            planner.targets(t, leader).into_iter().filter(|&i| c.is_running(i)).collect();
                        for &i in &nodes {
                            c.pause(i);
                        }
                        nodes
                    };
                    rec.nemesis("start-pause", json!({"targets": t.name(), "nodes": names(&nodes)}));
                    active.paused = nodes;
                }
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
}
