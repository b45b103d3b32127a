//! `arbor-bench report DIR`: collects the run records of one
//! `scripts/bench-vs-etcd.sh` invocation (`DIR/runs/*.json`, plus the
//! machine description `DIR/machine.json`) into
//!
//! - `DIR/results.json`: `{ "machine": {...}, "runs": [...] }`;
//! - `DIR/results.md`: the side-by-side table (etcd, Arbor, Arbor/etcd),
//!   issue #6's targets checked against it, the CPU per operation, the
//!   storage reference, the peak RSS, every run in full and the script's
//!   notes (`DIR/notes.md`, if any);
//! - `DIR/plot.svg`: throughput and p99 latency against client count, one
//!   row of two panels per workload, drawn here (no plotting dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::bench::{BenchError, RunRecord, Workload};

/// Reads every `*.json` record under `dir/runs`, in file-name order.
pub fn load_runs(dir: &Path) -> Result<Vec<RunRecord>, BenchError> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("runs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.iter().map(|f| Ok(serde_json::from_slice(&std::fs::read(f)?)?)).collect()
}

/// Writes `results.json`, `results.md` and `plot.svg` into `dir` and
/// returns the markdown.
pub fn write_report(dir: &Path) -> Result<String, BenchError> {
    let runs = load_runs(dir)?;
    let machine: Value = match std::fs::read(dir.join("machine.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(_) => Value::Object(Default::default()),
    };
    let all = serde_json::json!({ "machine": machine, "runs": runs });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&all)?)?;
    let mut md = markdown(&runs, &machine);
    // What the script noticed along the way (a stopped replica, ...).
    if let Ok(notes) = std::fs::read_to_string(dir.join("notes.md")) {
        md += "\n### Notes from the run\n\n";
        md += &notes;
    }
    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(dir.join("plot.svg"), svg(&runs))?;
    Ok(md)
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(arbor: f64, etcd: f64) -> String {
    if etcd > 0.0 && arbor > 0.0 {
        format!("{:.2}×", arbor / etcd)
    } else {
        "–".into()
    }
}

/// Every run of one point, in file order (a point has several when the
/// script ran with `BENCH_ROUNDS` above 1).
fn runs_of<'a>(runs: &'a [RunRecord], system: &str, workload: &str, clients: usize) -> Vec<&'a RunRecord> {
    runs.iter().filter(|r| r.system == system && r.workload == workload && r.clients == clients).collect()
}

/// The run that stands for a point: its median by throughput (the lower
/// middle one of an even count), so one lucky or unlucky round does not
/// decide a ratio.
fn find<'a>(runs: &'a [RunRecord], system: &str, workload: &str, clients: usize) -> Option<&'a RunRecord> {
    let mut all = runs_of(runs, system, workload, clients);
    all.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    all.get(all.len().saturating_sub(1) / 2).copied()
}

/// The median run of every point, in first-appearance order.
fn medians(runs: &[RunRecord]) -> Vec<RunRecord> {
    let mut seen = BTreeSet::new();
    runs.iter()
        .filter(|r| seen.insert((r.system.as_str(), r.workload.as_str(), r.clients)))
        .filter_map(|r| find(runs, &r.system, &r.workload, r.clients).cloned())
        .collect()
}

/// Arbor/etcd throughput of each round of a point, the i-th run of one
/// system against the i-th of the other, ascending.
fn round_ratios(runs: &[RunRecord], workload: &str, clients: usize) -> Vec<f64> {
    let (e, a) = (runs_of(runs, "etcd", workload, clients), runs_of(runs, "arbor", workload, clients));
    let mut ratios: Vec<f64> = e
        .iter()
        .zip(&a)
        .filter(|(e, a)| e.ops_per_sec > 0.0 && a.ops_per_sec > 0.0)
        .map(|(e, a)| a.ops_per_sec / e.ops_per_sec)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// The workloads present in `runs`, in [`Workload::ALL`] order.
fn workloads(runs: &[RunRecord]) -> Vec<&'static str> {
    Workload::ALL.iter().map(|w| w.name()).filter(|w| runs.iter().any(|r| r.workload == *w)).collect()
}

fn client_counts(runs: &[RunRecord], workload: &str) -> Vec<usize> {
    runs.iter().filter(|r| r.workload == workload).map(|r| r.clients).collect::<BTreeSet<_>>().into_iter().collect()
}

fn describe_machine(machine: &Value) -> String {
    match machine.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("- {k}: {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => "- (no machine description)".into(),
    }
}

/// The markdown report.
pub fn markdown(runs: &[RunRecord], machine: &Value) -> String {
    let mut md = String::new();
    md += "## Arbor vs etcd\n\n";
    md += &describe_machine(machine);
    md += "\n\n";
    if let Some(r) = runs.iter().find(|r| r.system != "rocksdb") {
        let connections = runs.iter().filter(|r| r.system != "rocksdb").map(|r| r.connections).max().unwrap_or(1);
        let _ = writeln!(
            md,
            "Each point: {} s measured after {} s of warm-up, up to {connections} connections (one per client \
             below that), {}-byte keys, {}-byte values, key space {}. Latencies in ms. Ratios are Arbor / etcd: \
             for throughput higher is better, for latency lower is better.\n",
            r.duration_s, r.warmup_s, r.key_size, r.value_size, r.key_space
        );
    }
    let rounds = runs.iter().map(|r| runs_of(runs, &r.system, &r.workload, r.clients).len()).max().unwrap_or(1);
    if rounds > 1 {
        let _ = writeln!(
            md,
            "Each point ran up to {rounds} times (rounds alternating which system goes first); the columns \
             show each system's median run by throughput, and the last column every round's throughput ratio.\n"
        );
    }
    md += "| workload | clients | etcd ops/s | Arbor ops/s | Arbor/etcd | etcd p50 | Arbor p50 | Arbor/etcd p50 \
           | etcd p99 | Arbor p99 | Arbor/etcd p99 | errors etcd/Arbor |";
    md += if rounds > 1 { " Arbor/etcd by round |\n" } else { "\n" };
    md += "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";
    md += if rounds > 1 { "--:|\n" } else { "\n" };
    for w in workloads(runs) {
        for c in client_counts(runs, w) {
            let (e, a) = (find(runs, "etcd", w, c), find(runs, "arbor", w, c));
            let ops = |r: Option<&RunRecord>| r.map_or("–".into(), |r| format!("{:.0}", r.ops_per_sec));
            let lat = |r: Option<&RunRecord>, f: fn(&RunRecord) -> u64| r.map_or("–".into(), |r| ms(f(r)));
            let num = |r: Option<&RunRecord>, f: fn(&RunRecord) -> f64| r.map_or(0.0, f);
            let errs = |r: Option<&RunRecord>| r.map_or("–".into(), |r| r.errors.to_string());
            let by_round = match rounds {
                1 => String::new(),
                _ => {
                    let all = round_ratios(runs, w, c).iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>();
                    format!(" {} |", all.join(" / "))
                }
            };
            let _ = writeln!(
                md,
                "| {w} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |{by_round}",
                ops(e),
                ops(a),
                ratio(num(a, |r| r.ops_per_sec), num(e, |r| r.ops_per_sec)),
                lat(e, |r| r.latency.p50_us),
                lat(a, |r| r.latency.p50_us),
                ratio(num(a, |r| r.latency.p50_us as f64), num(e, |r| r.latency.p50_us as f64)),
                lat(e, |r| r.latency.p99_us),
                lat(a, |r| r.latency.p99_us),
                ratio(num(a, |r| r.latency.p99_us as f64), num(e, |r| r.latency.p99_us as f64)),
                errs(e),
                errs(a),
            );
        }
    }

    md += &goals_table(runs);
    md += &cpu_table(runs);

    let storage: Vec<&RunRecord> = runs.iter().filter(|r| r.system == "rocksdb").collect();
    if !storage.is_empty() {
        md += "\n### Storage reference: synced RocksDB write batches on the same disk\n\n";
        md += "| writers | keys/batch | synced batches/s | keys/s | p50 | p99 | max |\n|--:|--:|--:|--:|--:|--:|--:|\n";
        for r in storage {
            let batch = r.batch.unwrap_or(1);
            let _ = writeln!(
                md,
                "| {} | {batch} | {:.0} | {:.0} | {} | {} | {} |",
                r.clients,
                r.ops_per_sec,
                r.ops_per_sec * batch as f64,
                ms(r.latency.p50_us),
                ms(r.latency.p99_us),
                ms(r.latency.max_us)
            );
        }
    }

    // The largest peak per (system, pid) over every run.
    let mut peaks: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new();
    for r in runs {
        for p in &r.rss {
            let e = peaks.entry((r.system.clone(), p.pid)).or_default();
            e.0 = e.0.max(p.sampled_peak_kib);
            e.1 = e.1.max(p.hwm_kib);
        }
    }
    if !peaks.is_empty() {
        md += "\n### Peak RSS per server process over the whole run\n\n";
        md += "| system | pid | peak RSS sampled (MiB) | VmHWM (MiB) |\n|---|--:|--:|--:|\n";
        for ((system, pid), (sampled, hwm)) in &peaks {
            let _ =
                writeln!(md, "| {system} | {pid} | {:.1} | {:.1} |", *sampled as f64 / 1024.0, *hwm as f64 / 1024.0);
        }
    }

    // Every run, by workload, client count and system.
    let order = |r: &RunRecord| {
        let w = Workload::ALL.iter().position(|w| w.name() == r.workload).unwrap_or(Workload::ALL.len());
        (w, r.clients, r.system.clone())
    };
    let mut sorted: Vec<&RunRecord> = runs.iter().collect();
    sorted.sort_by_key(|r| order(r));
    md += "\n### Every run\n\n";
    md += "| system | workload | clients | ops/s | p50 | p90 | p99 | p99.9 | max | errors | notes |\n";
    md += "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n";
    for r in sorted {
        let l = &r.latency;
        let mut notes = Vec::new();
        if let Some(b) = r.batch {
            notes.push(if b == 1 { "1 key/batch".to_string() } else { format!("{b} keys/batch") });
        }
        if let Some(rr) = r.read_ratio {
            notes.push(format!("{:.0}% reads", rr * 100.0));
        }
        if let Some(ms) = r.max_staleness_ms {
            // Only Arbor's reads carry the bound; etcd's serializable ones
            // have none.
            notes.push(if r.system == "arbor" { format!("at most {ms} ms stale") } else { "serializable".to_string() });
        }
        if r.misses > 0 {
            notes.push(format!("{} get misses", r.misses));
        }
        if r.retries > 0 {
            notes.push(format!("{} CAS retries", r.retries));
        }
        if let Some(p) = &r.preload {
            notes.push(format!("preload {} keys in {:.1} s", p.keys, p.seconds));
        }
        if let Some(e) = r.error_samples.first() {
            notes.push(format!("first error: {}", e.replace('|', "/")));
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.workload,
            r.clients,
            r.ops_per_sec,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            r.errors,
            notes.join("; ")
        );
    }
    md
}

/// One of issue #6's performance targets, checked against a run.
struct Goal {
    target: &'static str,
    /// The run's figure and whether it meets the target; `None` when the
    /// run lacks the points the target needs.
    result: Option<(String, bool)>,
}

/// Arbor/etcd throughput of the median runs of a point, at least
/// `at_least`; with several rounds, how many of them cleared it too.
fn throughput_goal(runs: &[RunRecord], target: &'static str, workload: &str, clients: usize, at_least: f64) -> Goal {
    let result = match (find(runs, "etcd", workload, clients), find(runs, "arbor", workload, clients)) {
        (Some(e), Some(a)) if e.ops_per_sec > 0.0 => {
            let r = a.ops_per_sec / e.ops_per_sec;
            let rounds = round_ratios(runs, workload, clients);
            let cleared = rounds.iter().filter(|&&x| x >= at_least).count();
            let detail = match rounds.len() {
                0 | 1 => String::new(),
                n => format!(" ({cleared} of {n} rounds)"),
            };
            Some((format!("{r:.2}×{detail}"), r >= at_least))
        }
        _ => None,
    };
    Goal { target, result }
}

/// Issue #6's targets: ratios of the median runs (see [`find`]).
fn goals(runs: &[RunRecord]) -> Vec<Goal> {
    let both = |w: &str, c: usize| find(runs, "etcd", w, c).zip(find(runs, "arbor", w, c));
    let p50 = both("put", 1).filter(|(e, _)| e.latency.p50_us > 0).map(|(e, a)| {
        let r = a.latency.p50_us as f64 / e.latency.p50_us as f64;
        (format!("{r:.2}× ({} against {} ms)", ms(a.latency.p50_us), ms(e.latency.p50_us)), r <= 1.2)
    });
    // The worst workload decides.
    let worst_p99 = workloads(runs)
        .into_iter()
        .filter_map(|w| {
            let (e, a) = both(w, 64).filter(|(e, _)| e.latency.p99_us > 0)?;
            Some((w, a.latency.p99_us as f64 / e.latency.p99_us as f64))
        })
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(w, r)| (format!("{r:.2}× at worst ({w})"), r <= 1.0));
    let rss_kib = runs
        .iter()
        .filter(|r| r.system == "arbor")
        .flat_map(|r| &r.rss)
        .map(|p| p.hwm_kib.max(p.sampled_peak_kib))
        .max();
    let rss = rss_kib.map(|kib| (format!("{:.0} MiB", kib as f64 / 1024.0), kib <= 1 << 20));
    vec![
        throughput_goal(runs, "put, 64 clients: Arbor ≥ 2× etcd", "put", 64, 2.0),
        throughput_goal(runs, "put, 256 clients: Arbor ≥ 3× etcd", "put", 256, 3.0),
        throughput_goal(runs, "txn, 64 clients: Arbor ≥ 5× etcd", "txn", 64, 5.0),
        throughput_goal(runs, "linearizable get, 64 clients: Arbor ≥ 1.5× etcd", "get", 64, 1.5),
        Goal { target: "put, 1 client: Arbor's p50 ≤ 1.2× etcd's", result: p50 },
        Goal { target: "p99 at 64 clients ≤ etcd's, every workload", result: worst_p99 },
        Goal { target: "peak RSS of an Arbor node ≤ 1 GiB", result: rss },
    ]
}

/// The targets as a markdown section.
fn goals_table(runs: &[RunRecord]) -> String {
    let mut md = String::from(
        "\n### Issue #6's targets\n\nRatios of the median runs above; a throughput ratio also counts the \
         rounds that cleared it.\n\n| target | this run | met |\n|---|---|---|\n",
    );
    for g in goals(runs) {
        let (figure, met) = match g.result {
            Some((figure, met)) => (figure, if met { "yes" } else { "**no**" }),
            None => ("not measured".to_string(), "–"),
        };
        let _ = writeln!(md, "| {} | {figure} | {met} |", g.target);
    }
    md
}

/// CPU per operation of each system's servers (and the load generator's),
/// side by side, for the points that measured it.
fn cpu_table(runs: &[RunRecord]) -> String {
    let measured = |r: &&RunRecord| r.server_cpu_us_per_op().is_some();
    if !runs.iter().any(|r| measured(&r)) {
        return String::new();
    }
    let mut md = String::from(
        "\n### CPU per operation\n\nCPU time of all three servers in the measured window divided by the \
         operations completed in it, in µs (lower is better), and the load generator's own CPU per operation. \
         On a machine whose cores the servers share, this is what sets throughput.\n\n\
         | workload | clients | etcd servers | Arbor servers | Arbor/etcd | etcd load gen. | Arbor load gen. |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
    );
    let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
    let bench_us = |r: Option<&RunRecord>| r.and_then(|r| Some(r.bench_cpu_s? * 1e6 / r.ops.max(1) as f64));
    for w in workloads(runs) {
        for c in client_counts(runs, w) {
            let (e, a) = (find(runs, "etcd", w, c), find(runs, "arbor", w, c));
            let (eu, au) = (e.and_then(RunRecord::server_cpu_us_per_op), a.and_then(RunRecord::server_cpu_us_per_op));
            if eu.is_none() && au.is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {w} | {c} | {} | {} | {} | {} | {} |",
                us(eu),
                us(au),
                ratio(au.unwrap_or(0.0), eu.unwrap_or(0.0)),
                us(bench_us(e)),
                us(bench_us(a)),
            );
        }
    }
    md
}

// ---- SVG ----------------------------------------------------------------

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 230.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 28.0;
const MARGIN_B: f64 = 38.0;
const HEADER_H: f64 = 44.0;

/// (system, label, colour, dashed)
const SERIES: [(&str, &str, &str, bool); 3] = [
    ("etcd", "etcd", "#d9730d", false),
    ("arbor", "Arbor", "#2463c7", false),
    ("rocksdb", "RocksDB synced writes, 1 key/batch (put latency only)", "#888888", true),
];

/// The smallest 1, 2, 2.5 or 5 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * base).find(|&c| c >= v * (1.0 - 1e-9)).unwrap_or(10.0 * base)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A point: (clients, y, whether the run had errors).
type Point = (usize, f64, bool);
/// A curve: an index into [`SERIES`] and its points.
type Series = (usize, Vec<Point>);

/// One panel: a curve per series; `log_y` for latencies.
struct Panel<'a> {
    title: String,
    y_label: &'a str,
    log_y: bool,
    x_values: Vec<usize>,
    series: Vec<Series>,
}

impl Panel<'_> {
    fn draw(&self, out: &mut String, ox: f64, oy: f64) {
        let (x0, x1) = (ox + MARGIN_L, ox + PANEL_W - MARGIN_R);
        let (y0, y1) = (oy + PANEL_H - MARGIN_B, oy + MARGIN_T);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            x0,
            oy + 18.0,
            escape(&self.title)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#bbbbbb"/>"##,
            x1 - x0,
            y0 - y1
        );
        // x: log2 of the client count, ticks at the measured counts.
        let lx: Vec<f64> = self.x_values.iter().map(|&c| (c.max(1) as f64).log2()).collect();
        let (xmin, xmax) = (lx.iter().cloned().fold(f64::MAX, f64::min), lx.iter().cloned().fold(f64::MIN, f64::max));
        let xpos = |c: usize| {
            let v = (c.max(1) as f64).log2();
            if xmax > xmin {
                x0 + 12.0 + (v - xmin) / (xmax - xmin) * (x1 - x0 - 24.0)
            } else {
                (x0 + x1) / 2.0
            }
        };
        for &c in &self.x_values {
            let x = xpos(c);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{c}</text>"##,
                y0 + 4.0,
                y0 + 16.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">clients</text>"#,
            (x0 + x1) / 2.0,
            y0 + 31.0
        );
        // y: linear from 0, or log10 over whole decades.
        let ys: Vec<f64> =
            self.series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y, _)| y)).filter(|y| *y > 0.0).collect();
        let (ticks, ypos): (Vec<f64>, Box<dyn Fn(f64) -> f64>) = if self.log_y {
            let lo = ys.iter().cloned().fold(f64::MAX, f64::min).max(1e-3).log10().floor();
            let hi = ys.iter().cloned().fold(0.001, f64::max).log10().ceil().max(lo + 1.0);
            let ticks = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
            (ticks, Box::new(move |v: f64| y0 - (v.max(1e-9).log10() - lo) / (hi - lo) * (y0 - y1)))
        } else {
            let top = nice_ceiling(ys.iter().cloned().fold(0.0, f64::max));
            let ticks = (0..=5).map(|i| top * i as f64 / 5.0).collect();
            (ticks, Box::new(move |v: f64| y0 - v / top * (y0 - y1)))
        };
        for t in ticks {
            let y = ypos(t);
            let _ = writeln!(
                out,
                r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                x0 - 4.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            out,
            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="11" text-anchor="middle">{}</text>"#,
            ox + 14.0,
            (y0 + y1) / 2.0,
            escape(self.y_label)
        );
        for (s, points) in &self.series {
            let (_, _, colour, dashed) = SERIES[*s];
            let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
            let path: Vec<String> = points.iter().map(|&(c, v, _)| format!("{:.1},{:.1}", xpos(c), ypos(v))).collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for &(c, v, errors) in points {
                // A run with errors is drawn hollow: its figures are suspect.
                let (r, fill) = if errors { (5, "white") } else { (3, colour) };
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{fill}" stroke="{colour}" stroke-width="2"/>"#,
                    xpos(c),
                    ypos(v)
                );
            }
        }
    }
}

/// The plot: per workload, throughput (left) and p99 latency (right)
/// against client count for etcd and Arbor; the put row's latency panel
/// also shows the storage reference.
pub fn svg(runs: &[RunRecord]) -> String {
    // One point per system and client count: the median run.
    let medians = medians(runs);
    let runs = &medians[..];
    let rows: Vec<&str> = workloads(runs);
    let width = 2.0 * PANEL_W;
    let height = HEADER_H + rows.len().max(1) as f64 * PANEL_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut lx = 16.0;
    for (system, label, colour, dashed) in SERIES {
        if !runs.iter().any(|r| r.system == system) {
            continue;
        }
        let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="22" x2="{:.1}" y2="22" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="26" font-size="13">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            escape(label)
        );
        lx += 40.0 + 7.5 * label.len() as f64;
    }
    if runs.iter().any(|r| r.errors > 0) {
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="22" r="5" fill="white" stroke="#444444" stroke-width="2"/><text x="{:.1}" y="26" font-size="13">a run with errors</text>"##,
            lx + 6.0,
            lx + 16.0
        );
    }
    for (row, workload) in rows.iter().enumerate() {
        let oy = HEADER_H + row as f64 * PANEL_H;
        let systems: Vec<usize> = (0..SERIES.len())
            .filter(|&s| SERIES[s].0 != "rocksdb" || *workload == "put")
            .filter(|&s| SERIES[s].0 != "rocksdb" || runs.iter().any(|r| r.system == "rocksdb"))
            .collect();
        // The storage reference is drawn with the latencies only: its
        // throughput (tens of thousands of synced writes/s) would flatten
        // the clusters' curves; the table has it.
        let series_of = |f: fn(&RunRecord) -> f64, with_storage: bool| -> Vec<Series> {
            systems
                .iter()
                .filter(|&&s| with_storage || SERIES[s].0 != "rocksdb")
                .map(|&s| {
                    let wl = if SERIES[s].0 == "rocksdb" { "storage" } else { workload };
                    let mut pts: Vec<Point> = runs
                        .iter()
                        .filter(|r| r.system == SERIES[s].0 && r.workload == wl && r.batch.unwrap_or(1) == 1)
                        .map(|r| (r.clients, f(r), r.errors > 0))
                        .collect();
                    pts.sort_by_key(|p| p.0);
                    pts.dedup_by_key(|p| p.0);
                    (s, pts)
                })
                .filter(|(_, p)| !p.is_empty())
                .collect()
        };
        let x_values = client_counts(runs, workload);
        Panel {
            title: format!("{workload}: throughput"),
            y_label: "ops/s",
            log_y: false,
            x_values: x_values.clone(),
            series: series_of(|r| r.ops_per_sec, false),
        }
        .draw(&mut out, 0.0, oy);
        Panel {
            title: format!("{workload}: p99 latency"),
            y_label: "p99 (ms, log scale)",
            log_y: true,
            x_values,
            series: series_of(|r| r.latency.p99_us as f64 / 1000.0, true),
        }
        .draw(&mut out, PANEL_W, oy);
    }
    out += "</svg>\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cpu::CpuUse;
    use crate::bench::{rss, Latency};

    fn record(system: &str, workload: &str, clients: usize, ops_per_sec: f64, p99_us: u64) -> RunRecord {
        RunRecord {
            system: system.into(),
            workload: workload.into(),
            clients,
            connections: 4,
            endpoints: vec![],
            duration_s: 10.0,
            warmup_s: 2.0,
            key_space: 10_000,
            key_size: 16,
            value_size: 256,
            read_ratio: None,
            max_staleness_ms: None,
            batch: (system == "rocksdb").then_some(1),
            ops: (ops_per_sec * 10.0) as u64,
            errors: 0,
            misses: 0,
            retries: 0,
            ops_per_sec,
            latency: Latency {
                p50_us: p99_us / 2,
                p90_us: p99_us * 3 / 4,
                p99_us,
                p999_us: p99_us * 2,
                max_us: p99_us * 3,
                mean_us: 0.0,
            },
            preload: None,
            rss: vec![],
            cpu: vec![],
            bench_cpu_s: None,
            error_samples: vec![],
            started_at: 0,
            timeline: None,
        }
    }

    #[test]
    fn the_table_puts_both_systems_side_by_side_with_ratios() {
        let runs = vec![
            record("etcd", "put", 1, 1000.0, 2000),
            record("arbor", "put", 1, 2500.0, 1000),
            record("etcd", "put", 16, 4000.0, 8000),
            record("rocksdb", "storage", 1, 900.0, 1100),
        ];
        let md = markdown(&runs, &serde_json::json!({"cpu": "test cpu", "cores": 2}));
        assert!(
            md.contains("| put | 1 | 1000 | 2500 | 2.50× | 1.00 | 0.50 | 0.50× | 2.00 | 1.00 | 0.50× | 0/0 |"),
            "{md}"
        );
        assert!(md.contains("| put | 16 | 4000 | – | – |"), "a missing Arbor point is a dash:\n{md}");
        assert!(md.contains("- cpu: test cpu"), "{md}");
        assert!(md.contains("Storage reference"), "{md}");
        assert!(!md.contains("CPU per operation"), "no CPU figures, no CPU table:\n{md}");
    }

    #[test]
    fn cpu_per_operation_sums_the_servers() {
        let mut etcd = record("etcd", "put", 64, 7000.0, 20000);
        etcd.cpu = vec![CpuUse { pid: 1, cpu_s: 7.0 }, CpuUse { pid: 2, cpu_s: 7.0 }];
        etcd.bench_cpu_s = Some(2.1);
        let mut arbor = record("arbor", "put", 64, 7000.0, 15000);
        arbor.cpu = vec![CpuUse { pid: 3, cpu_s: 3.5 }, CpuUse { pid: 4, cpu_s: 3.5 }];
        // 70,000 ops: 14 CPU-s is 200 µs per op, 7 CPU-s 100 µs.
        assert_eq!(etcd.server_cpu_us_per_op(), Some(200.0));
        let md = markdown(&[etcd, arbor], &serde_json::json!({}));
        assert!(md.contains("| put | 64 | 200 | 100 | 0.50× | 30 | – |"), "{md}");
    }

    #[test]
    fn the_plot_is_an_svg_with_a_row_per_workload() {
        let runs = vec![
            record("etcd", "put", 1, 1000.0, 2000),
            record("arbor", "put", 1, 2500.0, 1000),
            record("etcd", "put", 64, 7000.0, 20000),
            record("arbor", "put", 64, 9000.0, 15000),
            record("etcd", "get", 1, 3000.0, 900),
            record("rocksdb", "storage", 1, 900.0, 1100),
        ];
        let svg = svg(&runs);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("put: throughput") && svg.contains("get: p99 latency"));
        // put: etcd and Arbor in both panels, the storage reference with
        // the latencies; get: etcd in both.
        assert_eq!(svg.matches("<polyline").count(), 2 + 3 + 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn rounds_are_summed_up_by_their_median_and_listed_by_ratio() {
        // Three rounds of put at 64 clients: (system, ops/s, p99 µs).
        let rounds = [
            ("etcd", 4000.0, 20000),
            ("arbor", 9000.0, 9000),
            ("etcd", 5000.0, 16000),
            ("arbor", 8000.0, 10000),
            ("etcd", 4500.0, 18000),
            ("arbor", 12000.0, 7000),
        ];
        let runs: Vec<RunRecord> =
            rounds.iter().map(|&(system, ops, p99)| record(system, "put", 64, ops, p99)).collect();
        let md = markdown(&runs, &serde_json::json!({}));
        // Medians: etcd 4500 (p99 18 ms), Arbor 9000 (9 ms); the rounds'
        // ratios 9000/4000, 8000/5000 and 12000/4500, ascending.
        assert!(md.contains("ran up to 3 times"), "{md}");
        assert!(
            md.contains("| put | 64 | 4500 | 9000 | 2.00× | 9.00 | 4.50 | 0.50× | 18.0 | 9.00 | 0.50× | 0/0 | 1.60 / 2.25 / 2.67 |"),
            "{md}"
        );
        // Every run is still listed, and the plot draws one point per
        // system and client count.
        assert_eq!(md.matches("| put | 64 | ").count(), 1 + 6, "{md}");
        assert_eq!(svg(&runs).matches("<circle").count(), svg(&runs[..2]).matches("<circle").count());
        // Two rounds: the lower of the two middle runs.
        assert_eq!(find(&runs[..4], "arbor", "put", 64).unwrap().ops_per_sec, 8000.0);
    }

    #[test]
    fn the_targets_are_checked_against_the_medians() {
        // (system, workload, clients, ops/s, p99 µs): put at 64 clients in
        // two rounds, 2.1× and 1.9×; p99 at 64 clients 0.5× for put, 1.5×
        // for txn (the worst).
        let points = [
            ("etcd", "put", 64, 10_000.0, 20_000),
            ("arbor", "put", 64, 21_000.0, 10_000),
            ("etcd", "put", 64, 10_000.0, 20_000),
            ("arbor", "put", 64, 19_000.0, 10_000),
            ("etcd", "put", 1, 1_000.0, 1_000),
            ("arbor", "put", 1, 1_000.0, 1_100),
            ("etcd", "txn", 64, 1_000.0, 10_000),
            ("arbor", "txn", 64, 6_000.0, 15_000),
        ];
        let mut runs: Vec<RunRecord> = points.iter().map(|&(s, w, c, ops, p99)| record(s, w, c, ops, p99)).collect();
        runs[1].rss = vec![rss::RssPeak { pid: 7, sampled_peak_kib: 600 << 10, hwm_kib: 640 << 10, samples: 1 }];
        runs[3].rss = vec![rss::RssPeak { pid: 8, sampled_peak_kib: 1200 << 10, hwm_kib: 100, samples: 1 }];
        let md = markdown(&runs, &serde_json::json!({}));
        // The median of two rounds is the lower one: 19,000 / 10,000.
        assert!(md.contains("| put, 64 clients: Arbor ≥ 2× etcd | 1.90× (1 of 2 rounds) | **no** |"), "{md}");
        assert!(md.contains("| put, 256 clients: Arbor ≥ 3× etcd | not measured | – |"), "{md}");
        assert!(md.contains("| txn, 64 clients: Arbor ≥ 5× etcd | 6.00× | yes |"), "{md}");
        assert!(md.contains("| linearizable get, 64 clients: Arbor ≥ 1.5× etcd | not measured | – |"), "{md}");
        assert!(
            md.contains("| put, 1 client: Arbor's p50 ≤ 1.2× etcd's | 1.10× (0.55 against 0.50 ms) | yes |"),
            "{md}"
        );
        assert!(md.contains("| p99 at 64 clients ≤ etcd's, every workload | 1.50× at worst (txn) | **no** |"), "{md}");
        assert!(md.contains("| peak RSS of an Arbor node ≤ 1 GiB | 1200 MiB | **no** |"), "{md}");
        // Without etcd every ratio is unmeasured; the RSS still counts.
        let arbor_only: Vec<RunRecord> = runs.iter().filter(|r| r.system == "arbor").cloned().collect();
        let md = markdown(&arbor_only, &serde_json::json!({}));
        assert_eq!(md.matches("| not measured | – |").count(), 6, "{md}");
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(7400.0), 10_000.0);
        assert_eq!(nice_ceiling(2100.0), 2500.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(fmt_tick(2500.0), "2.5k");
    }
}
