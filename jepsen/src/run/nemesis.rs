//! Fault planning: which fault to start or stop next, and on which nodes. Pure: a seeded
//! RNG, node indices and (for leader-targeted faults) the current leader in, decisions out.
//! [`super::faults`] carries them out.
//!
//! Faults:
//! - `partition`: a [`Grudge`] (pairs of nodes that cannot talk) of one [`Shape`]:
//!   majority/minority halves, the leader of group 1 isolated, a majorities ring (every node
//!   sees a majority, no two see the same one; needs 5 nodes or more), or a bridge (two
//!   halves joined by one node that sees both).
//! - `kill`: kill -9 some [`Targets`], restart them on the same data dir when stopped.
//! - `pause`: SIGSTOP some targets, SIGCONT when stopped.
//! - `clock`: skew one node's clock through Arbor's offset clock (the test-only
//!   `Cluster.SetClockOffset` RPC; never the machine's clock): a [`ClockPlan::Bump`] sets it
//!   ±100 ms..10 s off, a [`ClockPlan::Strobe`] flips it between two offsets every few ms
//!   for a few seconds; stopped = every offset back to 0.
//! - `member`: remove one node from every group (never below [`MIN_VOTERS`] voters, so it
//!   needs 4 nodes or more), wipe it and restart it with `--join`; stopped = add it back.
//! - `leader`: move the leadership of a random group to a random other voter. It is
//!   instantaneous: it never becomes active, so it has no stop.
//! - `amnesia` (not in `all`): the pattern in which a node that loses what it acknowledged
//!   at kill -9 (the server's `--unsafe-volatile-writes`) loses writes: a minority of
//!   non-leaders is cut off, writes go on, the rest (leader included) are killed -9 at once
//!   and restarted, then the network heals. The lagging minority can then win an election
//!   with votes from the forgetful nodes, without the writes the others acknowledged. A
//!   sound server keeps its log through kill -9, so nothing is lost. A whole sequence on
//!   its own, like `leader`: it never stays active.
//!
//! [`Planner::tick`] is called every interval: it picks one of the enabled kinds at random
//! and stops it if it is active, else starts it. A fault active for [`MAX_ACTIVE_TICKS`]
//! ticks is stopped first. With several kinds, faults overlap (a partition during a kill).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// A fault that is active longer than this many ticks is stopped at the next tick.
pub const MAX_ACTIVE_TICKS: u32 = 2;

/// The `member` fault never leaves a group with fewer voters than this.
pub const MIN_VOTERS: usize = 3;

/// A clock bump sets a node's offset to ± this range (milliseconds, log-uniform).
pub const BUMP_MS: (i64, i64) = (100, 10_000);
/// A strobe flips between 0 and ± this range (milliseconds, log-uniform)...
pub const STROBE_MS: (i64, i64) = (100, 2_000);
/// ... every this many milliseconds...
pub const STROBE_PERIOD_MS: (u64, u64) = (2, 20);
/// ... for this long (milliseconds).
pub const STROBE_DURATION_MS: (u64, u64) = (2_000, 5_000);

/// The fault families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Network partitions.
    Partition,
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP / SIGCONT.
    Pause,
    /// Clock offsets (bump, strobe; reset at stop).
    Clock,
    /// Remove a node from every group; add it back at stop.
    Member,
    /// Leadership transfers (instantaneous).
    Leader,
    /// Isolate a minority, kill -9 the rest at once, restart, heal (one sequence).
    Amnesia,
}

/// What `--nemesis all` enables.
pub const ALL: [FaultKind; 6] =
    [FaultKind::Partition, FaultKind::Kill, FaultKind::Pause, FaultKind::Clock, FaultKind::Member, FaultKind::Leader];

impl FaultKind {
    /// Its name in specs and history events.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Clock => "clock",
            FaultKind::Member => "member",
            FaultKind::Leader => "leader",
            FaultKind::Amnesia => "amnesia",
        }
    }

    /// Whether a start leaves something to stop (a leader transfer does not).
    pub fn lasts(self) -> bool {
        !matches!(self, FaultKind::Leader | FaultKind::Amnesia)
    }
}

/// Parses a `--nemesis` spec (`partition,kill`, `all`, `none`).
pub fn parse_spec(spec: &str) -> Result<Vec<FaultKind>, String> {
    let mut kinds = BTreeSet::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "none" => continue,
            "all" => {
                kinds.extend(ALL);
                continue;
            }
            "partition" => FaultKind::Partition,
            "kill" => FaultKind::Kill,
            "pause" => FaultKind::Pause,
            "clock" => FaultKind::Clock,
            "member" => FaultKind::Member,
            "leader" => FaultKind::Leader,
            "amnesia" => FaultKind::Amnesia,
            other => {
                return Err(format!(
                    "unknown nemesis {other:?} (use partition, kill, pause, clock, member, leader, amnesia, all or none)"
                ));
            }
        };
        kinds.insert(kind);
    }
    Ok(kinds.into_iter().collect())
}

/// The kinds that can run on `n` nodes, and a note for each one dropped: `member` needs
/// more than [`MIN_VOTERS`] nodes, since it never removes below that many voters; `amnesia`
/// needs 3 (a lagging minority and a majority to kill).
pub fn feasible(kinds: &[FaultKind], n: usize) -> (Vec<FaultKind>, Vec<String>) {
    let mut notes = Vec::new();
    let kept = kinds
        .iter()
        .copied()
        .filter(|&k| {
            if k == FaultKind::Amnesia && n < 3 {
                notes.push("nemesis amnesia needs --nodes 3 or more; left out".to_string());
                return false;
            }
            let ok = k != FaultKind::Member || n > MIN_VOTERS;
            if !ok {
                notes.push(format!(
                    "nemesis member needs --nodes {} or more (it never removes below {MIN_VOTERS} voters); left out",
                    MIN_VOTERS + 1
                ));
            }
            ok
        })
        .collect();
    (kept, notes)
}

/// Partition shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A random minority cut from the majority.
    Halves,
    /// The leader of group 1 cut from everyone.
    IsolateLeader,
    /// Every node sees a majority (its ring neighbours), but no two the same one.
    MajoritiesRing,
    /// Two halves, and one node that sees both.
    Bridge,
}

impl Shape {
    /// Name in history events.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Halves => "majority-minority",
            Shape::IsolateLeader => "isolate-leader",
            Shape::MajoritiesRing => "majorities-ring",
            Shape::Bridge => "bridge",
        }
    }

    /// The shapes that make sense for `n` nodes (a ring of fewer than 5 is fully connected).
    pub fn available(n: usize) -> Vec<Shape> {
        let mut v = vec![Shape::Halves, Shape::IsolateLeader, Shape::Bridge];
        if n >= 5 {
            v.push(Shape::MajoritiesRing);
        }
        v
    }
}

/// Which nodes a kill or pause hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// One random node.
    One,
    /// The leader of group 1 (a random node if unknown).
    Leader,
    /// A random minority.
    Minority,
    /// A random majority.
    Majority,
    /// Every node.
    All,
}

impl Targets {
    const ALL: [Targets; 5] = [Targets::One, Targets::Leader, Targets::Minority, Targets::Majority, Targets::All];

    /// Name in history events.
    pub fn name(self) -> &'static str {
        match self {
            Targets::One => "one",
            Targets::Leader => "leader",
            Targets::Minority => "minority",
            Targets::Majority => "majority",
            Targets::All => "all",
        }
    }
}

/// A fault to start, before its nodes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Partition the network.
    Partition(Shape),
    /// kill -9 nodes.
    Kill(Targets),
    /// SIGSTOP nodes.
    Pause(Targets),
    /// Skew a node's clock.
    Clock(ClockPlan),
    /// Remove a node from every group (which one is chosen when it starts, among the
    /// nodes that can go: [`Planner::pick`]).
    Member,
    /// Transfer a group's leadership (group and voter chosen when it starts).
    Leader,
    /// Isolate a minority of non-leaders, kill -9 the others at once, restart, heal.
    Amnesia,
}

/// A clock fault on one node (0-based index); offsets are relative to the true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockPlan {
    /// Set the node's offset to `offset_ms`.
    Bump {
        /// The node.
        node: usize,
        /// Its new offset.
        offset_ms: i64,
    },
    /// Flip the node's offset between 0 and `offset_ms` every `period_ms`, for
    /// `duration_ms`, then leave it at 0.
    Strobe {
        /// The node.
        node: usize,
        /// The second offset.
        offset_ms: i64,
        /// Time between flips.
        period_ms: u64,
        /// How long it flips.
        duration_ms: u64,
    },
}

impl ClockPlan {
    /// The node it skews.
    pub fn node(self) -> usize {
        match self {
            ClockPlan::Bump { node, .. } | ClockPlan::Strobe { node, .. } => node,
        }
    }
}

impl Plan {
    /// Its fault family.
    pub fn kind(self) -> FaultKind {
        match self {
            Plan::Partition(_) => FaultKind::Partition,
            Plan::Kill(_) => FaultKind::Kill,
            Plan::Pause(_) => FaultKind::Pause,
            Plan::Clock(_) => FaultKind::Clock,
            Plan::Member => FaultKind::Member,
            Plan::Leader => FaultKind::Leader,
            Plan::Amnesia => FaultKind::Amnesia,
        }
    }

    /// Whether resolving it needs the current leader.
    pub fn needs_leader(self) -> bool {
        matches!(
            self,
            Plan::Partition(Shape::IsolateLeader)
                | Plan::Kill(Targets::Leader)
                | Plan::Pause(Targets::Leader)
                | Plan::Amnesia
        )
    }
}

/// What to do at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a fault.
    Start(Plan),
    /// Stop (heal) the active fault of this kind.
    Stop(FaultKind),
}

/// Decides the sequence of fault starts and stops.
pub struct Planner {
    rng: StdRng,
    n: usize,
    kinds: Vec<FaultKind>,
    /// Active kinds and the ticks they have been active.
    active: BTreeMap<FaultKind, u32>,
}

impl Planner {
    /// A planner for `n` nodes and the enabled `kinds`.
    pub fn new(n: usize, kinds: Vec<FaultKind>, seed: u64) -> Planner {
        Planner { rng: StdRng::seed_from_u64(seed), n, kinds, active: BTreeMap::new() }
    }

    /// The enabled kinds.
    pub fn kinds(&self) -> &[FaultKind] {
        &self.kinds
    }

    /// The next action, or `None` if no fault is enabled.
    pub fn tick(&mut self) -> Option<Action> {
        for t in self.active.values_mut() {
            *t += 1;
        }
        if let Some((&kind, _)) = self.active.iter().find(|(_, &t)| t > MAX_ACTIVE_TICKS) {
            self.active.remove(&kind);
            return Some(Action::Stop(kind));
        }
        let kind = *self.kinds.choose(&mut self.rng)?;
        if self.active.remove(&kind).is_some() {
            return Some(Action::Stop(kind));
        }
        if kind.lasts() {
            self.active.insert(kind, 0);
        }
        let plan = match kind {
            FaultKind::Partition => Plan::Partition(*Shape::available(self.n).choose(&mut self.rng).expect("shapes")),
            FaultKind::Kill => Plan::Kill(*Targets::ALL.choose(&mut self.rng).expect("targets")),
            FaultKind::Pause => Plan::Pause(*Targets::ALL.choose(&mut self.rng).expect("targets")),
            FaultKind::Clock => Plan::Clock(self.clock_plan()),
            FaultKind::Member => Plan::Member,
            FaultKind::Leader => Plan::Leader,
            FaultKind::Amnesia => Plan::Amnesia,
        };
        Some(Action::Start(plan))
    }

    /// Forgets that `kind` is active (its start did not take effect).
    pub fn abandon(&mut self, kind: FaultKind) {
        self.active.remove(&kind);
    }

    fn clock_plan(&mut self) -> ClockPlan {
        let node = self.rng.gen_range(0..self.n);
        if self.rng.gen_bool(0.5) {
            ClockPlan::Bump { node, offset_ms: signed_log_uniform(BUMP_MS, &mut self.rng) }
        } else {
            ClockPlan::Strobe {
                node,
                offset_ms: signed_log_uniform(STROBE_MS, &mut self.rng),
                period_ms: self.rng.gen_range(STROBE_PERIOD_MS.0..=STROBE_PERIOD_MS.1),
                duration_ms: self.rng.gen_range(STROBE_DURATION_MS.0..=STROBE_DURATION_MS.1),
            }
        }
    }

    /// One of `candidates` at random (a node to remove, a group, a voter).
    pub fn pick<T: Copy>(&mut self, candidates: &[T]) -> Option<T> {
        candidates.choose(&mut self.rng).copied()
    }

    /// Stops every active fault (the end of the run).
    pub fn stop_all(&mut self) -> Vec<FaultKind> {
        std::mem::take(&mut self.active).into_keys().collect()
    }

    /// Chooses the nodes of a kill or pause.
    pub fn targets(&mut self, t: Targets, leader: Option<usize>) -> Vec<usize> {
        choose_targets(t, self.n, leader, &mut self.rng)
    }

    /// The lagging side of an amnesia fault: `(n - 1) / 2` nodes, none of them `leader`
    /// (sorted; the rest are killed).
    pub fn laggards(&mut self, leader: Option<usize>) -> Vec<usize> {
        let mut v: Vec<usize> = shuffled(self.n, &mut self.rng).into_iter().filter(|&i| Some(i) != leader).collect();
        v.truncate((self.n - 1) / 2);
        v.sort_unstable();
        v
    }

    /// Draws the grudge of a partition.
    pub fn grudge(&mut self, shape: Shape, leader: Option<usize>) -> Grudge {
        Grudge::of(shape, self.n, leader, &mut self.rng)
    }
}

/// ± a log-uniform magnitude within `(lo, hi)`: small skews as often as large ones.
fn signed_log_uniform((lo, hi): (i64, i64), rng: &mut StdRng) -> i64 {
    let m = (rng.gen_range((lo as f64).ln()..=(hi as f64).ln())).exp().round() as i64;
    let m = m.clamp(lo, hi);
    if rng.gen_bool(0.5) {
        m
    } else {
        -m
    }
}

fn shuffled(n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(rng);
    v
}

/// Nodes (0-based indices) hit by `t` among `n`.
pub fn choose_targets(t: Targets, n: usize, leader: Option<usize>, rng: &mut StdRng) -> Vec<usize> {
    let count = match t {
        Targets::One => 1,
        Targets::Leader => {
            if let Some(l) = leader.filter(|&l| l < n) {
                return vec![l];
            }
            1
        }
        Targets::Minority => ((n - 1) / 2).max(1),
        Targets::Majority => n / 2 + 1,
        Targets::All => n,
    };
    let mut v = shuffled(n, rng);
    v.truncate(count.min(n));
    v.sort_unstable();
    v
}

/// Pairs of nodes that cannot talk to each other (symmetric).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grudge {
    /// Cut links as `(a, b)` with `a < b`.
    pub cuts: BTreeSet<(usize, usize)>,
    /// Name of the shape.
    pub shape: &'static str,
}

impl Grudge {
    fn cut_between(shape: &'static str, groups: &[&[usize]]) -> Grudge {
        let mut cuts = BTreeSet::new();
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for &x in a.iter() {
                    for &y in b.iter() {
                        cuts.insert((x.min(y), x.max(y)));
                    }
                }
            }
        }
        Grudge { cuts, shape }
    }

    /// `side` cut from every other node of `n`.
    pub fn isolate(shape: &'static str, side: &[usize], n: usize) -> Grudge {
        let rest: Vec<usize> = (0..n).filter(|i| !side.contains(i)).collect();
        Grudge::cut_between(shape, &[side, &rest])
    }

    /// A random grudge of `shape` over `n` nodes.
    pub fn of(shape: Shape, n: usize, leader: Option<usize>, rng: &mut StdRng) -> Grudge {
        let order = shuffled(n, rng);
        match shape {
            Shape::Halves => {
                let (minority, majority) = order.split_at(n / 2);
                Grudge::cut_between(shape.name(), &[minority, majority])
            }
            Shape::IsolateLeader => {
                let l = leader.filter(|&l| l < n).unwrap_or(order[0]);
                let rest: Vec<usize> = (0..n).filter(|&x| x != l).collect();
                Grudge::cut_between(shape.name(), &[&[l], &rest])
            }
            Shape::MajoritiesRing => {
                // Around a shuffled ring, each node keeps its k nearest neighbours on each
                // side, with 2k >= n/2: itself and 2k others are a majority.
                let k = (n / 2).div_ceil(2);
                let mut cuts = BTreeSet::new();
                for i in 0..n {
                    for j in i + 1..n {
                        let d = (j - i).min(n - (j - i));
                        if d > k {
                            let (a, b) = (order[i], order[j]);
                            cuts.insert((a.min(b), a.max(b)));
                        }
                    }
                }
                Grudge { cuts, shape: shape.name() }
            }
            Shape::Bridge => {
                let half = (n - 1) / 2;
                let (left, rest) = order.split_at(half);
                let right = &rest[1..];
                Grudge::cut_between(shape.name(), &[left, right])
            }
        }
    }

    /// The nodes `a` cannot talk to.
    pub fn blocked(&self, a: usize) -> Vec<usize> {
        self.cuts
            .iter()
            .filter_map(|&(x, y)| {
                if x == a {
                    Some(y)
                } else if y == a {
                    Some(x)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Whether `a` and `b` can talk.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        a == b || !self.cuts.contains(&(a.min(b), a.max(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(3)
    }

    fn sees(g: &Grudge, n: usize, a: usize) -> usize {
        (0..n).filter(|&b| g.connected(a, b)).count()
    }

    #[test]
    fn halves_cut_exactly_the_cross_links() {
        for n in [3, 5, 7] {
            let g = Grudge::of(Shape::Halves, n, None, &mut rng());
            assert_eq!(g.cuts.len(), (n / 2) * (n - n / 2));
            let small: Vec<usize> = (0..n).filter(|&a| sees(&g, n, a) == n / 2).collect();
            assert_eq!(small.len(), n / 2, "a minority that only sees itself");
            assert!((0..n).filter(|a| !small.contains(a)).all(|a| sees(&g, n, a) == n - n / 2));
        }
    }

    #[test]
    fn the_leader_is_isolated() {
        let g = Grudge::of(Shape::IsolateLeader, 5, Some(3), &mut rng());
        assert_eq!(g.blocked(3), vec![0, 1, 2, 4]);
        assert!(g.connected(0, 4));
        assert_eq!(g.cuts.len(), 4);
    }

    #[test]
    fn in_a_majorities_ring_everyone_sees_a_majority_but_not_all() {
        for n in [5, 7, 9] {
            let g = Grudge::of(Shape::MajoritiesRing, n, None, &mut rng());
            for a in 0..n {
                let s = sees(&g, n, a);
                assert!(s > n / 2 && s < n, "n={n} node {a} sees {s}");
            }
        }
        assert!(!Shape::available(3).contains(&Shape::MajoritiesRing));
        assert!(Shape::available(5).contains(&Shape::MajoritiesRing));
    }

    #[test]
    fn a_bridge_node_sees_both_sides() {
        for n in [3, 5] {
            let g = Grudge::of(Shape::Bridge, n, None, &mut rng());
            let bridges: Vec<usize> = (0..n).filter(|&a| g.blocked(a).is_empty()).collect();
            assert_eq!(bridges.len(), 1, "n={n}: {g:?}");
            assert!(!g.cuts.is_empty());
            // Neither side alone is a majority... but each side plus the bridge may be.
            assert!((0..n).all(|a| sees(&g, n, a) <= n / 2 + 1 || bridges.contains(&a)));
        }
    }

    #[test]
    fn targets_have_the_right_sizes() {
        let mut r = rng();
        assert_eq!(choose_targets(Targets::One, 5, None, &mut r).len(), 1);
        assert_eq!(choose_targets(Targets::Minority, 5, None, &mut r).len(), 2);
        assert_eq!(choose_targets(Targets::Minority, 3, None, &mut r).len(), 1);
        assert_eq!(choose_targets(Targets::Majority, 5, None, &mut r).len(), 3);
        assert_eq!(choose_targets(Targets::All, 3, None, &mut r), vec![0, 1, 2]);
        assert_eq!(choose_targets(Targets::Leader, 5, Some(4), &mut r), vec![4]);
    }

    #[test]
    fn one_kind_alternates_and_several_overlap_but_stay_bounded() {
        let mut p = Planner::new(5, vec![FaultKind::Kill], 1);
        for i in 0..10 {
            match (i % 2, p.tick()) {
                (0, Some(Action::Start(Plan::Kill(_)))) | (1, Some(Action::Stop(FaultKind::Kill))) => {}
                other => panic!("tick {i}: {other:?}"),
            }
        }
        let mut p = Planner::new(5, vec![FaultKind::Partition, FaultKind::Kill, FaultKind::Pause], 2);
        let mut active: BTreeMap<FaultKind, u32> = BTreeMap::new();
        let mut overlapped = false;
        for _ in 0..200 {
            for t in active.values_mut() {
                *t += 1;
            }
            match p.tick().unwrap() {
                Action::Start(plan) => assert!(active.insert(plan.kind(), 0).is_none(), "started twice"),
                Action::Stop(k) => assert!(active.remove(&k).is_some(), "stopped an inactive fault"),
            }
            assert!(active.values().all(|&t| t <= MAX_ACTIVE_TICKS));
            overlapped |= active.len() > 1;
        }
        assert!(overlapped);
        assert_eq!(p.stop_all().len(), active.len());
        assert_eq!(Planner::new(3, vec![], 0).tick(), None);
    }

    #[test]
    fn specs_parse_and_member_needs_four_nodes() {
        assert_eq!(parse_spec("partition,kill").unwrap(), vec![FaultKind::Partition, FaultKind::Kill]);
        assert_eq!(parse_spec("all").unwrap(), ALL.to_vec());
        assert_eq!(parse_spec("none").unwrap(), vec![]);
        assert_eq!(parse_spec("leader, clock").unwrap(), vec![FaultKind::Clock, FaultKind::Leader]);
        assert!(parse_spec("flood").unwrap_err().contains("unknown nemesis"));
        assert_eq!(parse_spec("amnesia").unwrap(), vec![FaultKind::Amnesia]);
        assert!(!ALL.contains(&FaultKind::Amnesia), "amnesia is a sensitivity probe, not part of all");
        assert_eq!(feasible(&[FaultKind::Amnesia], 3).0, vec![FaultKind::Amnesia]);
        assert!(feasible(&[FaultKind::Amnesia], 2).0.is_empty());
        let (kept, notes) = feasible(&ALL, 3);
        assert!(!kept.contains(&FaultKind::Member) && kept.len() == ALL.len() - 1);
        assert!(notes[0].contains("--nodes 4"), "{notes:?}");
        assert_eq!(feasible(&ALL, 4), (ALL.to_vec(), vec![]));
    }

    #[test]
    fn clock_plans_stay_in_their_ranges() {
        let mut p = Planner::new(3, vec![FaultKind::Clock], 7);
        let (mut bumps, mut strobes, mut negative) = (0, 0, 0);
        for _ in 0..400 {
            match p.tick().unwrap() {
                Action::Start(Plan::Clock(plan)) => {
                    assert!(plan.node() < 3);
                    match plan {
                        ClockPlan::Bump { offset_ms, .. } => {
                            bumps += 1;
                            negative += (offset_ms < 0) as u32;
                            assert!((BUMP_MS.0..=BUMP_MS.1).contains(&offset_ms.abs()), "{plan:?}");
                        }
                        ClockPlan::Strobe { offset_ms, period_ms, duration_ms, .. } => {
                            strobes += 1;
                            assert!((STROBE_MS.0..=STROBE_MS.1).contains(&offset_ms.abs()), "{plan:?}");
                            assert!((STROBE_PERIOD_MS.0..=STROBE_PERIOD_MS.1).contains(&period_ms));
                            assert!((STROBE_DURATION_MS.0..=STROBE_DURATION_MS.1).contains(&duration_ms));
                        }
                    }
                }
                Action::Stop(FaultKind::Clock) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(bumps > 50 && strobes > 50 && negative > 10 && negative < bumps - 10, "{bumps} {strobes} {negative}");
    }

    #[test]
    fn leader_transfers_never_stay_active_and_member_alternates() {
        let mut p = Planner::new(5, vec![FaultKind::Leader], 1);
        for _ in 0..5 {
            assert_eq!(p.tick(), Some(Action::Start(Plan::Leader)));
        }
        assert!(p.stop_all().is_empty(), "a transfer has nothing to heal");
        let mut p = Planner::new(5, vec![FaultKind::Member], 1);
        assert_eq!(p.tick(), Some(Action::Start(Plan::Member)));
        assert_eq!(p.tick(), Some(Action::Stop(FaultKind::Member)));
        assert_eq!(p.tick(), Some(Action::Start(Plan::Member)));
        p.abandon(FaultKind::Member);
        assert_eq!(p.tick(), Some(Action::Start(Plan::Member)), "an abandoned start is not stopped");
        assert_eq!(p.stop_all(), vec![FaultKind::Member]);
        assert_eq!(p.pick::<usize>(&[]), None);
        assert_eq!(p.pick(&[4]), Some(4));
    }

    #[test]
    fn amnesia_never_stays_active_and_lags_a_minority_of_non_leaders() {
        let mut p = Planner::new(3, vec![FaultKind::Amnesia], 1);
        for _ in 0..3 {
            assert_eq!(p.tick(), Some(Action::Start(Plan::Amnesia)));
        }
        assert!(p.stop_all().is_empty());
        for leader in [Some(0), Some(2), None] {
            let lag = p.laggards(leader);
            assert_eq!(lag.len(), 1);
            assert!(leader.is_none_or(|l| !lag.contains(&l)), "{lag:?} {leader:?}");
        }
        let mut p = Planner::new(5, vec![FaultKind::Amnesia], 2);
        let lag = p.laggards(Some(3));
        assert_eq!(lag.len(), 2);
        assert!(!lag.contains(&3));
        let g = Grudge::isolate("amnesia", &lag, 5);
        assert_eq!(g.cuts.len(), 6);
        assert!(g.connected(lag[0], lag[1]) && !g.connected(lag[0], 3));
    }
}
