//! The dependency graph between transactions, and strongly connected components.
//!
//! Nodes are transactions (their position in [`TxnHistory::txns`]). Edges carry a set of
//! relations: `ww` (b appended right after a's append in some key's version order), `wr` (b
//! read a version ending with a's append), `rw` (a read the version b's append overwrote),
//! `process` (a and b are consecutive ok txns of one process) and `realtime` (a completed
//! before b was invoked; only a transitive reduction is kept, as Elle does). Data edges
//! connect `ok` and `info` transactions; failed ones only appear as realtime targets.
//! Each edge is *explained* by one relation, the first of ww, wr, rw, process/realtime it
//! has, the way Elle's explainer names a cycle's steps.
//! Limits: only one of process / realtime is built (realtime subsumes process).

use super::txn::{Elem, Key, Mop, TxnHistory};
use super::versions::{sorted_values, AppendIndex, Prev};
use crate::hash::{FxHashMap, FxHashSet};
use crate::history::OpType;
use serde_json::{json, Value as Json};

/// Write-write dependency.
pub const WW: u8 = 1;
/// Write-read dependency.
pub const WR: u8 = 2;
/// Read-write anti-dependency.
pub const RW: u8 = 4;
/// Session (process) order.
pub const PROCESS: u8 = 8;
/// Real-time order.
pub const REALTIME: u8 = 16;
/// The data relations.
pub const DATA: u8 = WW | WR | RW;

/// The relation an edge is explained by.
pub fn explain(rels: u8) -> u8 {
    for r in [WW, WR, RW, PROCESS, REALTIME] {
        if rels & r != 0 {
            return r;
        }
    }
    0
}

/// Short name of a single relation.
pub fn rel_name(r: u8) -> &'static str {
    match r {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        PROCESS => "process",
        REALTIME => "realtime",
        _ => "?",
    }
}

/// Which extra order to add to the data dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Data dependencies only.
    None,
    /// Plus session order.
    Process,
    /// Plus real-time order.
    Realtime,
}

/// The indexes data edges were derived from (kept to explain edges).
#[derive(Debug, Default)]
pub struct Indexes {
    /// Version order per key.
    pub append: AppendIndex,
    /// (key, element) -> possible txn that appended it.
    pub writer: FxHashMap<(Key, Elem), u32>,
    /// (key, version) -> possible txns that read exactly that version.
    pub readers: FxHashMap<(Key, Prev), Vec<u32>>,
}

/// Transaction dependency graph.
#[derive(Debug)]
pub struct Graph {
    /// Number of nodes (= transactions).
    pub n: usize,
    /// Out-edges `(target, relations)`, sorted by target.
    pub out: Vec<Vec<(u32, u8)>>,
    /// Relations present anywhere in the graph.
    pub rels: u8,
    /// The indexes used.
    pub idx: Indexes,
}

impl Graph {
    /// Relations on the edge a -> b (0 if none).
    pub fn rels(&self, a: u32, b: u32) -> u8 {
        let out = &self.out[a as usize];
        out.binary_search_by_key(&b, |(t, _)| *t).map_or(0, |i| out[i].1)
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.out.iter().map(Vec::len).sum()
    }
}

/// Builds the graph.
pub fn build(h: &TxnHistory, extra: Extra) -> Graph {
    let n = h.txns.len();
    let possible = |i: usize| h.txns[i].possible();
    let sorted = sorted_values(h.txns.iter().filter(|t| t.possible()));
    let append = AppendIndex::new(&sorted);
    let mut writer: FxHashMap<(Key, Elem), u32> = FxHashMap::default();
    let mut readers: FxHashMap<(Key, Prev), Vec<u32>> = FxHashMap::default();
    for (i, t) in h.txns.iter().enumerate().filter(|(i, _)| possible(*i)) {
        for m in &t.mops {
            match m {
                Mop::Append(k, e) => {
                    writer.insert((*k, *e), i as u32);
                }
                Mop::Read(_, None) if t.kind == OpType::Info => {}
                Mop::Read(k, v) => {
                    let version = v.as_ref().and_then(|v| v.last()).map_or(Prev::Init, |e| Prev::Elem(*e));
                    let rs = readers.entry((*k, version)).or_default();
                    if rs.last() != Some(&(i as u32)) {
                        rs.push(i as u32);
                    }
                }
            }
        }
    }
    let mut edges: FxHashMap<(u32, u32), u8> = FxHashMap::default();
    let mut link = |a: u32, b: u32, r: u8| {
        if a != b {
            *edges.entry((a, b)).or_insert(0) |= r;
        }
    };
    for (i, t) in h.txns.iter().enumerate().filter(|(i, _)| possible(*i)) {
        let i = i as u32;
        for m in &t.mops {
            match m {
                Mop::Read(k, Some(v)) => {
                    if let Some(&w) = v.last().and_then(|e| writer.get(&(*k, *e))) {
                        link(w, i, WR);
                    }
                }
                Mop::Read(_, None) => {}
                Mop::Append(k, e) => {
                    let prev = append.previous(*k, *e);
                    if let Prev::Elem(p) = prev {
                        if let Some(&w) = writer.get(&(*k, p)) {
                            link(w, i, WW);
                        }
                    }
                    for &r in readers.get(&(*k, prev)).map_or(&[][..], Vec::as_slice) {
                        link(r, i, RW);
                    }
                }
            }
        }
    }
    match extra {
        Extra::None => {}
        Extra::Process => {
            let mut order: Vec<usize> = (0..n).filter(|&i| h.txns[i].kind == OpType::Ok).collect();
            order.sort_by_key(|&i| h.txns[i].completion);
            let mut last: FxHashMap<&crate::history::Process, u32> = FxHashMap::default();
            for i in order {
                if let Some(prev) = last.insert(&h.txns[i].process, i as u32) {
                    link(prev, i as u32, PROCESS);
                }
            }
        }
        Extra::Realtime => {
            for (a, b) in realtime_edges(h) {
                link(a, b, REALTIME);
            }
        }
    }
    let mut out: Vec<Vec<(u32, u8)>> = vec![Vec::new(); n];
    let mut rels = 0u8;
    for ((a, b), r) in edges {
        out[a as usize].push((b, r));
        rels |= r;
    }
    for o in &mut out {
        o.sort_unstable();
    }
    Graph { n, out, rels, idx: Indexes { append, writer, readers } }
}

/// Elle's transitive reduction of real-time order: walking the history, every invocation
/// gets an edge from each "frontier" ok completion; an ok completion removes from the
/// frontier the completions that already precede it.
fn realtime_edges(h: &TxnHistory) -> Vec<(u32, u32)> {
    // (position, is_completion, txn)
    let mut events: Vec<(usize, bool, u32)> = Vec::new();
    for (i, t) in h.txns.iter().enumerate() {
        if let Some(p) = t.invoke {
            events.push((p, false, i as u32));
        }
        if let (Some(p), OpType::Ok) = (t.completion, t.kind) {
            events.push((p, true, i as u32));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<u32> = Vec::new();
    let mut preds: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
    let mut out = Vec::new();
    for (_, completion, t) in events {
        if completion {
            if let Some(p) = preds.get(&t) {
                let p: FxHashSet<u32> = p.iter().copied().collect();
                frontier.retain(|x| !p.contains(x));
            }
            frontier.push(t);
        } else if !frontier.is_empty() {
            for &a in &frontier {
                out.push((a, t));
            }
            preds.insert(t, frontier.clone());
        }
    }
    out
}

/// Explains why `b` depends on `a` through relation `r` (a JSON step of a cycle).
pub fn explain_step(h: &TxnHistory, g: &Graph, a: u32, b: u32, r: u8) -> Json {
    let (ta, tb) = (&h.txns[a as usize], &h.txns[b as usize]);
    let version_json = |p: Prev| match p {
        Prev::Init => json!("init"),
        Prev::Elem(e) => h.elem_json(e),
    };
    let mut step = json!({"type": rel_name(r), "from": ta.index, "to": tb.index});
    match r {
        WW | RW => {
            for m in &tb.mops {
                let Mop::Append(k, e) = m else { continue };
                let prev = g.idx.append.previous(*k, *e);
                let hit = match (r, prev) {
                    (WW, Prev::Elem(p)) => g.idx.writer.get(&(*k, p)) == Some(&a),
                    (RW, _) => g.idx.readers.get(&(*k, prev)).is_some_and(|rs| rs.contains(&a)),
                    _ => false,
                };
                if hit {
                    step["key"] = h.key_json(*k);
                    step["value"] = version_json(prev);
                    step["value'"] = h.elem_json(*e);
                    break;
                }
            }
        }
        WR => {
            for m in &tb.mops {
                let Mop::Read(k, Some(v)) = m else { continue };
                if let Some(e) = v.last() {
                    if g.idx.writer.get(&(*k, *e)) == Some(&a) {
                        step["key"] = h.key_json(*k);
                        step["value"] = h.elem_json(*e);
                        break;
                    }
                }
            }
        }
        PROCESS => step["process"] = ta.process.to_json(),
        _ => {
            step["completed-index"] = json!(ta.index);
            step["invoked-index"] = json!(tb.invoke_index);
        }
    }
    step
}

/// Strongly connected components (of size >= 2) of the graph induced by `nodes`, over
/// the edges whose relations satisfy `keep`. Also returns, for every node of `nodes`, the
/// id of its component in Tarjan's emission order (an edge a -> b implies
/// `comp[a] >= comp[b]`), indexed like `nodes`.
pub fn sccs(g: &Graph, nodes: &[u32], keep: impl Fn(u8) -> bool) -> (Vec<Vec<u32>>, Vec<u32>) {
    let mut local: FxHashMap<u32, u32> = FxHashMap::default();
    for (i, &v) in nodes.iter().enumerate() {
        local.insert(v, i as u32);
    }
    let succ = |i: u32, buf: &mut Vec<u32>| {
        for &(t, r) in &g.out[nodes[i as usize] as usize] {
            if keep(r) {
                if let Some(&j) = local.get(&t) {
                    buf.push(j);
                }
            }
        }
    };
    let (comps, comp_of) = tarjan(nodes.len(), succ);
    let big =
        comps.into_iter().filter(|c| c.len() > 1).map(|c| c.into_iter().map(|i| nodes[i as usize]).collect()).collect();
    (big, comp_of)
}

/// Iterative Tarjan over nodes `0..n`; returns all components (in emission order) and
/// each node's component index.
pub fn tarjan(n: usize, succ: impl Fn(u32, &mut Vec<u32>)) -> (Vec<Vec<u32>>, Vec<u32>) {
    const UNSEEN: u32 = u32::MAX;
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut comp_of = vec![UNSEEN; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut comps: Vec<Vec<u32>> = Vec::new();
    let mut counter = 0u32;
    // Call stack frames: (node, successors, next successor position).
    let mut frames: Vec<(u32, Vec<u32>, usize)> = Vec::new();
    for root in 0..n as u32 {
        if index[root as usize] != UNSEEN {
            continue;
        }
        let mut buf = Vec::new();
        succ(root, &mut buf);
        index[root as usize] = counter;
        low[root as usize] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        frames.push((root, buf, 0));
        while let Some(frame) = frames.last_mut() {
            let v = frame.0;
            if frame.2 < frame.1.len() {
                let w = frame.1[frame.2];
                frame.2 += 1;
                if index[w as usize] == UNSEEN {
                    let mut buf = Vec::new();
                    succ(w, &mut buf);
                    index[w as usize] = counter;
                    low[w as usize] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w as usize] = true;
                    frames.push((w, buf, 0));
                } else if on_stack[w as usize] {
                    low[v as usize] = low[v as usize].min(index[w as usize]);
                }
                continue;
            }
            frames.pop();
            if let Some(parent) = frames.last() {
                let p = parent.0 as usize;
                low[p] = low[p].min(low[v as usize]);
            }
            if low[v as usize] == index[v as usize] {
                let id = comps.len() as u32;
                let mut comp = Vec::new();
                loop {
                    let w = stack.pop().expect("tarjan stack");
                    on_stack[w as usize] = false;
                    comp_of[w as usize] = id;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comps.push(comp);
            }
        }
    }
    (comps, comp_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarjan_finds_components_in_reverse_topological_order() {
        // 0 -> 1 -> 2 -> 0, 2 -> 3, 3 -> 4 -> 3
        let adj: Vec<Vec<u32>> = vec![vec![1], vec![2], vec![0, 3], vec![4], vec![3]];
        let (comps, comp_of) = tarjan(5, |v, buf| buf.extend(&adj[v as usize]));
        assert_eq!(comps.len(), 2);
        assert!(comp_of[3] < comp_of[0], "sink component first");
        assert_eq!(comp_of[0], comp_of[2]);
        assert_eq!(comp_of[3], comp_of[4]);
    }

    #[test]
    fn explained_relation_priority() {
        assert_eq!(explain(RW | REALTIME), RW);
        assert_eq!(explain(WR | RW), WR);
        assert_eq!(explain(REALTIME), REALTIME);
        assert_eq!(explain(WW | WR | RW), WW);
    }
}
